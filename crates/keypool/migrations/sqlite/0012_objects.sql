-- Which key created each object an upstream keeps per account (files,
-- uploads, batches, stored responses, …): later requests naming the
-- object go to that key (routing::affinity). Written with the request's
-- record; gone with the key.
CREATE TABLE objects (
    id          TEXT    PRIMARY KEY,
    key_id      INTEGER NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL          -- Unix milliseconds
);
-- Deleting a key deletes its objects' rows: found by key.
CREATE INDEX objects_key ON objects (key_id);
