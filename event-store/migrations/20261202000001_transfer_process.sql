-- The transfer process drives every requested transfer to its end. It resumes after a
-- restart from its checkpoint: every transfer requested at or before that position has
-- ended, so only the requests after it are looked at again.
CREATE TABLE transfer_process_checkpoint (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    position   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO transfer_process_checkpoint (position) VALUES (0);

-- Finds the transfer requests after a position without reading the account events
-- between them.
CREATE INDEX events_transfer_requests ON events (position)
    WHERE event_type = 'TransferRequested';
