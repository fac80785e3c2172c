-- 0006: a chat's messages and a sample's prompt as typed lists of (role, content) instead of JSON text.
-- Ingest writes the list it validated, curation and the review queue read it as it is, and a snapshot's
-- prompt column is a projection of samples.prompt: nothing is encoded to JSON and decoded again between the
-- event and the snapshot. Rows written before are converted in place.
ALTER TABLE chats ALTER messages TYPE STRUCT(role VARCHAR, content VARCHAR)[]
    USING from_json(messages, '[{"role": "VARCHAR", "content": "VARCHAR"}]');
ALTER TABLE samples ALTER prompt TYPE STRUCT(role VARCHAR, content VARCHAR)[]
    USING from_json(prompt, '[{"role": "VARCHAR", "content": "VARCHAR"}]');
