-- Read model of the query service. Portable between MySQL 8 and MariaDB 10.11:
-- exact DECIMAL money, DATETIME(6) UTC timestamps, ids as canonical UUID text.

-- One row per account; `version` is the number of its events projected so far and is
-- the guard of every projection write (`UPDATE ... WHERE version = ?`).
CREATE TABLE accounts (
    id         CHAR(36)      NOT NULL,
    status     VARCHAR(16)   NOT NULL,
    currency   CHAR(3)       NOT NULL,
    balance    DECIMAL(22,4) NOT NULL,
    version    BIGINT        NOT NULL,
    created_at DATETIME(6)   NOT NULL,
    updated_at DATETIME(6)   NOT NULL,
    PRIMARY KEY (id),
    KEY accounts_status_id (status, id),
    KEY accounts_currency_id (currency, id),
    KEY accounts_status_currency_id (status, currency, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Credits and debits, one row per event.
CREATE TABLE operations (
    event_id      CHAR(36)      NOT NULL,
    account_id    CHAR(36)      NOT NULL,
    version       BIGINT        NOT NULL,
    type          VARCHAR(8)    NOT NULL,
    amount        DECIMAL(22,4) NOT NULL,
    currency      CHAR(3)       NOT NULL,
    balance_after DECIMAL(22,4) NOT NULL,
    occurred_at   DATETIME(6)   NOT NULL,
    PRIMARY KEY (event_id),
    UNIQUE KEY operations_account_version (account_id, version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- How far the feed follower has verified the global feed. `generation` changes when
-- a rebuild swaps in new tables, so that a follower holding an older reading cannot
-- move the new checkpoint.
CREATE TABLE projection_checkpoint (
    name       VARCHAR(32) NOT NULL,
    generation CHAR(36)    NOT NULL,
    position   BIGINT      NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT INTO projection_checkpoint (name, generation, position, updated_at)
VALUES ('feed', UUID(), 0, UTC_TIMESTAMP(6));
