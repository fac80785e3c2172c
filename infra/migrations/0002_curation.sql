-- 0002: what curation, review and the right to be forgotten need beyond 0001.

-- An adapter trained (directly or through its parents) on a forgotten user's data is never promoted
-- again; the next retrain replaces it.
ALTER TABLE adapters ADD COLUMN tainted BOOLEAN NOT NULL DEFAULT false;

-- A snapshot that held a forgotten user's samples: its Parquet files are deleted, its manifest is kept.
ALTER TABLE snapshots ADD COLUMN purged_at TIMESTAMPTZ;

-- Users whose data was erased, as a keyed hash (never the id): events of theirs that arrive late (from
-- the outbox, or Kafka) are kept out of samples.
CREATE TABLE forgotten_users (
    user_hash    VARCHAR PRIMARY KEY,
    forgotten_at TIMESTAMPTZ NOT NULL
);
