-- What the adaptive schedule learns from (README, "Poll strategies"): each
-- finished video finished after its last unfinished poll and before its
-- terminal one, measured from its start or from the first poll that saw it
-- rendering.

-- The last poll that answered an unfinished status (NULL before one).
ALTER TABLE videos ADD COLUMN unfinished_seen_at INTEGER;
-- The first poll that answered an unfinished status other than `pending`.
ALTER TABLE videos ADD COLUMN rendering_seen_at INTEGER;

-- The finished renders, newest last: replayed into the learned
-- distribution at start and read by `export-renders`.
CREATE INDEX videos_finished ON videos (terminal_at) WHERE state IN ('completed', 'failed');
