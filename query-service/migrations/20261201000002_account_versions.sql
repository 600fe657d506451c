-- One row per projected version of every account: which event made it (so that
-- de-duplication compares event ids, not only versions: another event at a version
-- already projected is a conflict, not a duplicate) and the account's status and
-- balance after it (for reads as of an instant, issue #12).
--
-- Versions projected before this migration have no row; for them a redelivery is
-- taken as a duplicate, as before. `query-service rebuild` fills every row.
CREATE TABLE account_versions (
    account_id  CHAR(36)      NOT NULL,
    version     BIGINT        NOT NULL,
    event_id    CHAR(36)      NOT NULL,
    type        VARCHAR(32)   NOT NULL,
    status      VARCHAR(16)   NOT NULL,
    balance     DECIMAL(22,4) NOT NULL,
    occurred_at DATETIME(6)   NOT NULL,
    PRIMARY KEY (account_id, version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
