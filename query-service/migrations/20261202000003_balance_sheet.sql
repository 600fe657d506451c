-- The balance sheet as a projection of its own (issue #11), kept by the transaction
-- that applies an account's events: per currency, a few rows of counters ("slots";
-- an account adds to the slot of the low bits of its id, so that concurrent writers
-- rarely wait on one row). `GET /balance-sheet` sums the slots of each currency: its
-- cost does not grow with the number of accounts.
--
-- `balance` sums the balances of every account, closed or not (a closed account holds
-- zero, unless a transfer's refund reached it after it closed); `accounts` counts the
-- accounts that are not closed; `in_transit` is money debited by transfers and not yet
-- credited or refunded. Per currency, `balance + in_transit` only changes by plain
-- credits, debits and openings.
CREATE TABLE balance_sheet (
    currency   CHAR(3)          NOT NULL,
    slot       TINYINT UNSIGNED NOT NULL,
    balance    DECIMAL(38,4)    NOT NULL,
    accounts   BIGINT           NOT NULL,
    in_transit DECIMAL(38,4)    NOT NULL,
    PRIMARY KEY (currency, slot)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- An existing read model starts from its accounts (no transfer existed before this
-- release). The slot is the projection's: the last byte of the id modulo 8.
INSERT INTO balance_sheet (currency, slot, balance, accounts, in_transit)
SELECT currency, CONV(RIGHT(id, 2), 16, 10) % 8 AS slot, SUM(balance),
       SUM(CASE WHEN status = 'CLOSED' THEN 0 ELSE 1 END), 0
  FROM accounts
 GROUP BY currency, CONV(RIGHT(id, 2), 16, 10) % 8;
