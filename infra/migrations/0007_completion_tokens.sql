-- 0007: the tokens of each answer, so that the A/B latency guardrail compares time per answer token (a
-- challenger whose answers are longer is not slower for it). Rows written before have none (NULL).
ALTER TABLE chats ADD COLUMN completion_tokens INTEGER;
