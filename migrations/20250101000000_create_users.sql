-- Users of user.v1.UserService.
--
-- email_key is the case-insensitive uniqueness key. The application
-- computes it (Rust's Unicode lower-casing, the same function the in-memory
-- store uses) instead of a generated lower(email) column: PostgreSQL's
-- lower() depends on the database's collation (with the C locale it only
-- folds ASCII), so "ÉLODIE@x.org" and "élodie@x.org" would be distinct in
-- one store and duplicates in the other. The database still enforces
-- uniqueness on it atomically, across every replica.
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    email         text        NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254),
    email_key     text        NOT NULL,
    name          text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    status        text        NOT NULL CHECK (status IN ('active', 'inactive')),
    roles         text[]      NOT NULL DEFAULT '{}',
    -- An argon2id PHC string; plaintext passwords never reach the store.
    password_hash text        NOT NULL CHECK (password_hash LIKE '$argon2%'),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- The unique violation on this index is what CreateUser reports as
-- ALREADY_EXISTS; the store matches it by name.
CREATE UNIQUE INDEX users_email_key_unique ON users (email_key);

-- Keyset paging (ListUsers: WHERE id > $after ORDER BY id LIMIT $n) walks
-- the primary key's b-tree: ids are UUIDv7, so this is creation order, and
-- each page costs O(page) however large the table is. No extra index needed.
COMMENT ON TABLE users IS 'user.v1.UserService users; ListUsers pages by the primary key (id).';
