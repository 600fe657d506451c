-- The legs of transfers are operations too: `TRANSFER_OUT` (the source's debit),
-- `TRANSFER_IN` (the destination's credit), `TRANSFER_REFUND` (the source's refund),
-- each naming its transfer. Plain credits and debits have no `transfer_id`.
ALTER TABLE operations
    MODIFY COLUMN type VARCHAR(16) NOT NULL,
    ADD COLUMN transfer_id CHAR(36) NULL;
