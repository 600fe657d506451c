-- Reads as of an instant (`GET /accounts/{id}?as_of=`) look up an account's last
-- version at or before the instant: one seek in this index, however long the history.
CREATE INDEX account_versions_as_of ON account_versions (account_id, occurred_at, version);
