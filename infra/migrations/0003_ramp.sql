-- 0003: experiments ramp up in stages (for example 10% of traffic, then 50%).
ALTER TABLE experiments ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;
ALTER TABLE experiments ADD COLUMN stage_started_at TIMESTAMPTZ;
