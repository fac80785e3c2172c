-- 0004: the latest rating of each (response, user): a user may change their mind, and curation, review
-- and A/B statistics must all count the same one.
CREATE VIEW latest_feedback AS
SELECT * EXCLUDE (n) FROM (
    SELECT *, row_number() OVER (PARTITION BY response_id, user_id ORDER BY created_at DESC, event_id DESC) AS n
    FROM feedback
) WHERE n = 1;
