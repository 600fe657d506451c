-- Transfers (issue #11): one row per transfer stream, projected like an account's
-- row: `version` is the number of its events projected so far and guards every write
-- (`UPDATE ... WHERE version = ?`). `created_at` / `updated_at` are the `occurred_at`
-- of its first and latest events, so that a rebuild reproduces them.
--
-- An account's transfers are listed oldest first (creation time, then id) from both
-- sides: one index per side, each ending with the listing's order and cursor.
-- 512 characters of utf8mb4 keep `requested_by` (a `sub`) like `accounts.owner`.
CREATE TABLE transfers (
    id           CHAR(36)      NOT NULL,
    from_account CHAR(36)      NOT NULL,
    to_account   CHAR(36)      NOT NULL,
    amount       DECIMAL(22,4) NOT NULL,
    currency     CHAR(3)       NOT NULL,
    reference    VARCHAR(140)  NULL,
    status       VARCHAR(16)   NOT NULL,
    reason       VARCHAR(255)  NULL,
    requested_by VARCHAR(512)  NOT NULL,
    version      BIGINT        NOT NULL,
    created_at   DATETIME(6)   NOT NULL,
    updated_at   DATETIME(6)   NOT NULL,
    PRIMARY KEY (id),
    KEY transfers_from_account (from_account, created_at, id),
    KEY transfers_to_account (to_account, created_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per projected version of every transfer: which event made it, so that
-- de-duplication compares event ids (as `account_versions` does for accounts).
CREATE TABLE transfer_versions (
    transfer_id CHAR(36)    NOT NULL,
    version     BIGINT      NOT NULL,
    event_id    CHAR(36)    NOT NULL,
    type        VARCHAR(32) NOT NULL,
    occurred_at DATETIME(6) NOT NULL,
    PRIMARY KEY (transfer_id, version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
