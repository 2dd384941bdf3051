-- jogg-relay schema. Times are INTEGER milliseconds since the Unix epoch (UTC).

-- One row per tracked video. `id` is the rowid: the stable, ever-increasing
-- order used by list pagination and the key other tables point at.
CREATE TABLE videos (
    id              INTEGER PRIMARY KEY,
    video_id        TEXT    NOT NULL UNIQUE,
    state           TEXT    NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'completed', 'failed', 'abandoned', 'cancelled')),
    -- Last status string JoggAI answered, as-is (NULL before the first answer).
    upstream_status TEXT,
    video_url       TEXT,
    cover_url       TEXT,
    -- Upstream's created_at, unix seconds.
    created_at      INTEGER,
    duration        REAL,
    error_code      TEXT,
    error_message   TEXT,
    callback_url    TEXT,
    -- JSON object given at enqueue, echoed in the callback.
    metadata        TEXT,
    enqueued_at     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    -- When the video is next due for a poll; NULL once terminal.
    next_poll_at    INTEGER,
    -- A poller owns the video until then (crash-safe claim).
    lease_until     INTEGER,
    polls           INTEGER NOT NULL DEFAULT 0,
    -- Consecutive answers without a status change: drives interval growth.
    unchanged_polls INTEGER NOT NULL DEFAULT 0,
    -- Consecutive failed polls (transport or server errors): drives error backoff.
    error_streak    INTEGER NOT NULL DEFAULT 0,
    -- Why the relay stopped tracking (deadline, not_found, invalid_id), if it did.
    reason          TEXT,
    -- The terminal event, created with the terminal transition and never changed.
    event_id        TEXT UNIQUE,
    terminal_at     INTEGER
) STRICT;

-- "What is due next": a range scan over active videos only, so terminal rows
-- (the vast majority over time) cost nothing.
CREATE INDEX videos_due ON videos (next_poll_at) WHERE state = 'active';
-- List by state in pagination order.
CREATE INDEX videos_state_order ON videos (state, id);

-- Every change of upstream status or of state, in order.
CREATE TABLE transitions (
    id          INTEGER PRIMARY KEY,
    video_rowid INTEGER NOT NULL REFERENCES videos (id),
    -- 'status' (upstream status) or 'state' (relay state).
    kind        TEXT    NOT NULL CHECK (kind IN ('status', 'state')),
    from_value  TEXT,
    to_value    TEXT    NOT NULL,
    at          INTEGER NOT NULL
) STRICT;

CREATE INDEX transitions_by_video ON transitions (video_rowid, id);

-- The outbox: one row per (terminal event, callback target).
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    video_rowid     INTEGER NOT NULL REFERENCES videos (id),
    event_id        TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    lease_until     INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    -- Why a delivery is dead (gone, exhausted, forbidden_target).
    reason          TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (video_rowid, url)
) STRICT;

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
