-- The change feed behind WatchUsers: one row per committed change, written
-- in the same transaction as the change itself (an outbox), so a change is
-- recorded if and only if it happened.
--
-- revision orders the feed. Identity values are drawn at insert time, not at
-- commit, so on their own two concurrent writers could commit them out of
-- order; the service takes a transaction-level advisory lock right before
-- the insert and holds it to the commit, so revisions become visible in
-- increasing order (gaps from failed transactions are possible, reordering
-- is not). See record_change in src/store/postgres.rs and docs/postgres.md.
--
-- payload is the event as the service's listeners decode it: the kind, the
-- time and the user as the API shows it (never the password hash).
--
-- Rows older than store.change_retention revisions are deleted by the
-- writers themselves, every so many revisions; the primary key makes both
-- that delete and "revision > $last ORDER BY revision LIMIT n" index range
-- scans.
CREATE TABLE user_changes (
    revision bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id  uuid   NOT NULL,
    payload  jsonb  NOT NULL
);

COMMENT ON TABLE user_changes IS 'user.v1.UserService change feed (WatchUsers revisions); pruned to store.change_retention rows by the service.';
