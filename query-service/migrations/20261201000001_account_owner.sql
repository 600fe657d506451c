-- The owner of each account (issue #9): the `sub` that opened it, from a version-2
-- `AccountCreated`. NULL for an account opened by a version-1 event (before owners
-- existed): only admins see it. Accounts projected before this migration stay NULL
-- until `query-service rebuild` replays their `AccountCreated`.
--
-- A non-admin's listing filters by owner in SQL; each filter combination has an index
-- that leads with `owner` and ends with `id` (the listing's order and cursor).
-- 512 characters of utf8mb4 keep every key under InnoDB's 3072-byte limit.
ALTER TABLE accounts
    ADD COLUMN owner VARCHAR(512) NULL AFTER id,
    ADD KEY accounts_owner_id (owner, id),
    ADD KEY accounts_owner_status_id (owner, status, id),
    ADD KEY accounts_owner_currency_id (owner, currency, id);
