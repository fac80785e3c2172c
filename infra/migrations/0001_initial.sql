-- 0001: the tables that the contracts in ARCHITECTURE.md need. Free text in every table is already
-- scrubbed of PII when it is written; raw values are never stored.

CREATE TABLE chats (
    event_id        UUID PRIMARY KEY,          -- client-generated; inserts are idempotent on it
    schema_version  INTEGER NOT NULL,
    response_id     VARCHAR NOT NULL,
    app_id          VARCHAR NOT NULL,
    user_id         VARCHAR NOT NULL,          -- pseudonymous
    conversation_id VARCHAR,
    messages        JSON NOT NULL,             -- scrubbed [{role, content}]
    response        VARCHAR NOT NULL,          -- scrubbed
    variant         VARCHAR NOT NULL,          -- adapter version or 'base'
    experiment_id   VARCHAR,
    latency_ms      DOUBLE,
    created_at      TIMESTAMPTZ NOT NULL,
    ingested_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    kafka_topic     VARCHAR,
    kafka_partition INTEGER,
    kafka_offset    BIGINT
);

CREATE TABLE feedback (
    event_id        UUID PRIMARY KEY,
    schema_version  INTEGER NOT NULL,
    response_id     VARCHAR NOT NULL,
    app_id          VARCHAR NOT NULL,
    user_id         VARCHAR NOT NULL,
    rating          TINYINT NOT NULL CHECK (rating IN (-1, 1)),
    comment         VARCHAR,                   -- scrubbed
    correction      VARCHAR,                   -- scrubbed
    created_at      TIMESTAMPTZ NOT NULL,
    ingested_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    kafka_topic     VARCHAR,
    kafka_partition INTEGER,
    kafka_offset    BIGINT
);

-- What the scrubber found: where and what kind, never the value.
CREATE TABLE pii_findings (
    event_id         UUID NOT NULL,
    field            VARCHAR NOT NULL,         -- e.g. messages[2].content, response, comment
    entity_type      VARCHAR NOT NULL,
    start_pos        INTEGER NOT NULL,
    end_pos          INTEGER NOT NULL,
    score            DOUBLE NOT NULL,
    scrubber_version VARCHAR NOT NULL,
    found_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events that could not be parsed or validated: position, reason and fingerprint; text only scrubbed.
CREATE TABLE dead_letters (
    topic       VARCHAR NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    BIGINT NOT NULL,
    reason      VARCHAR NOT NULL,
    length      INTEGER NOT NULL,
    sha256      VARCHAR NOT NULL,
    excerpt     VARCHAR,                       -- scrubbed, truncated
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);

-- Events whose scrubbing failed: hashes and metadata only, never the text.
CREATE TABLE quarantine (
    topic          VARCHAR NOT NULL,
    partition      INTEGER NOT NULL,
    "offset"       BIGINT NOT NULL,
    event_id       VARCHAR,
    reason         VARCHAR NOT NULL,
    length         INTEGER NOT NULL,
    sha256         VARCHAR NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);

-- The next offset to read per partition, written in the same transaction as the rows it covers.
-- cluster_id tells offsets of a restarted in-memory broker (a new, empty log) from those of a live one.
CREATE TABLE kafka_offsets (
    consumer_group VARCHAR NOT NULL,
    topic          VARCHAR NOT NULL,
    partition      INTEGER NOT NULL,
    next_offset    BIGINT NOT NULL,
    cluster_id     VARCHAR,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE samples (
    sample_id     VARCHAR PRIMARY KEY,
    chat_event_id UUID NOT NULL,
    response_id   VARCHAR NOT NULL,
    user_id       VARCHAR NOT NULL,
    label         VARCHAR NOT NULL CHECK (label IN ('desirable', 'undesirable')),
    prompt        JSON NOT NULL,
    answer        VARCHAR NOT NULL,
    source        VARCHAR NOT NULL,            -- rating | correction
    scores        JSON,                        -- every filter's score
    keep          BOOLEAN NOT NULL,
    reason        VARCHAR,                     -- why a filter dropped it
    status        VARCHAR NOT NULL DEFAULT 'pending',  -- pending | approved | rejected
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE reviews (
    sample_id   VARCHAR NOT NULL,
    decision    VARCHAR NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason      VARCHAR,
    reviewer    VARCHAR NOT NULL,
    policy      VARCHAR NOT NULL,
    reviewed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Append-only; every entry hashes the one before it.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    logged_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor     VARCHAR NOT NULL,
    action    VARCHAR NOT NULL,
    subject   VARCHAR,
    details   JSON,
    prev_hash VARCHAR NOT NULL,
    hash      VARCHAR NOT NULL
);

CREATE TABLE snapshots (
    snapshot_id  VARCHAR PRIMARY KEY,
    content_hash VARCHAR NOT NULL,
    path         VARCHAR NOT NULL,
    manifest     JSON NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE adapters (
    version      VARCHAR PRIMARY KEY,          -- v0001, v0002, ... never reused
    parent       VARCHAR,
    status       VARCHAR NOT NULL,             -- candidate|rejected|canary|live|retired|rolled_back|tainted|failed
    base_model   VARCHAR NOT NULL,
    base_hash    VARCHAR,
    snapshot_id  VARCHAR,
    path         VARCHAR,
    metrics      JSON,
    reason       VARCHAR,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every status change of every adapter: answers "which version served at time T".
CREATE TABLE adapter_events (
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version VARCHAR NOT NULL,
    status  VARCHAR NOT NULL,
    reason  VARCHAR
);

CREATE TABLE experiments (
    experiment_id    VARCHAR PRIMARY KEY,
    incumbent        VARCHAR NOT NULL,
    challenger       VARCHAR NOT NULL,
    salt             VARCHAR NOT NULL,
    challenger_share DOUBLE NOT NULL,
    status           VARCHAR NOT NULL,         -- running | promoted | rolled_back | stopped
    started_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at         TIMESTAMPTZ
);

CREATE TABLE decisions (
    experiment_id VARCHAR NOT NULL,
    decided_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    decision      VARCHAR NOT NULL,            -- promote | rollback | continue
    reason        VARCHAR NOT NULL,
    numbers       JSON NOT NULL
);
