-- JoggAI's pushes (README, "JoggAI's pushes"): a verified push is a hint
-- that makes its video due for a confirming poll at once, within the
-- per-video min_interval; the poll's answer decides.

-- When the last poll of the video was recorded (NULL before one): a hint
-- never brings the next poll closer than min_interval after it.
ALTER TABLE videos ADD COLUMN polled_at INTEGER;
-- While active: when the latest push not yet answered by a poll arrived
-- (a hint pending). Once terminal: the push whose confirming poll ended
-- the video (the completion was learned by push), else NULL.
ALTER TABLE videos ADD COLUMN hinted_at INTEGER;

-- The pending hints, due first: claims take these ahead of other due videos.
CREATE INDEX videos_hinted ON videos (next_poll_at)
    WHERE state = 'active' AND hinted_at IS NOT NULL;
