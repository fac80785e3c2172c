-- 0005: the one rule for a forgotten user's data. A row of user U made at time T is erased data when U was
-- forgotten at or after T (a late copy: an outbox re-sent to a new broker, a slow producer, a rating sent
-- afterwards on an answer from before). forgotten_users.user_hash = sha256('flywheel-forget:' || U), the
-- prefix being ingest.contracts.FORGET_PREFIX (tests/infra/test_db.py checks that they agree).
CREATE MACRO forgotten_after(who, made_at) AS EXISTS (
    SELECT 1 FROM forgotten_users f
    WHERE f.user_hash = sha256('flywheel-forget:' || who) AND made_at <= f.forgotten_at
);

-- The chats that curation and snapshots may read: those of users not forgotten since.
CREATE VIEW remembered_chats AS
SELECT * FROM chats c WHERE NOT forgotten_after(c.user_id, c.created_at);
