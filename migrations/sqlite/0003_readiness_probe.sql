-- The readiness probe's row: `/readyz` upserts it and commits, so a ready
-- answer means the database really took a write (a full disk or damaged
-- pages pass a bare `BEGIN IMMEDIATE`; a real commit does not). One row,
-- rewritten in place, so the probe costs one small commit and no growth.
CREATE TABLE readiness_probe (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    written_at INTEGER NOT NULL
) STRICT;
