-- jogg-relay schema for PostgreSQL: what the SQLite migrations 0001 to 0006
-- build, in one step (a PostgreSQL database starts at this version). Same
-- tables, columns, checks, keys and indexes; the comments say where and
-- why the dialect differs.
--
-- Times are BIGINT milliseconds since the Unix epoch (UTC). Every integer
-- column is BIGINT: the relay reads them all as i64, which sqlx decodes
-- from INT8 only.

-- One row per tracked video. `id` is the stable, ever-increasing order
-- used by list pagination and the key other tables point at: an identity
-- column, ALWAYS generated so that no insert can step past the sequence
-- (an explicit id would make a later generated one collide).
CREATE TABLE videos (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    video_id        TEXT    NOT NULL UNIQUE,
    state           TEXT    NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'completed', 'failed', 'abandoned', 'cancelled')),
    -- Last status string JoggAI answered, as-is (NULL before the first answer).
    upstream_status TEXT,
    video_url       TEXT,
    cover_url       TEXT,
    -- Upstream's created_at, unix seconds.
    created_at      BIGINT,
    duration        DOUBLE PRECISION,
    error_code      TEXT,
    error_message   TEXT,
    callback_url    TEXT,
    -- JSON object given at enqueue, echoed in the callback byte for byte:
    -- TEXT, not JSONB, which would reorder keys and drop spacing. Where it
    -- is compared, it is compared as a JSON value.
    metadata        TEXT,
    enqueued_at     BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    -- When the video is next due for a poll; NULL once terminal.
    next_poll_at    BIGINT,
    -- A poller owns the video until then (crash-safe claim).
    lease_until     BIGINT,
    polls           BIGINT  NOT NULL DEFAULT 0,
    -- Consecutive answers without a status change: drives interval growth.
    unchanged_polls BIGINT  NOT NULL DEFAULT 0,
    -- Consecutive failed polls (transport or server errors): drives error backoff.
    error_streak    BIGINT  NOT NULL DEFAULT 0,
    -- Why the relay stopped tracking (deadline, not_found, invalid_id), if it did.
    reason          TEXT,
    -- The terminal event, created with the terminal transition and never changed.
    event_id        TEXT    UNIQUE,
    terminal_at     BIGINT,
    -- What the adaptive schedule learns from (README, "Poll strategies"):
    -- each finished video finished after its last unfinished poll and
    -- before its terminal one, measured from its start or from the first
    -- poll that saw it rendering.
    -- The last poll that answered an unfinished status (NULL before one).
    unfinished_seen_at BIGINT,
    -- The first poll that answered an unfinished status other than `pending`.
    rendering_seen_at  BIGINT,
    -- JoggAI's pushes (README, "JoggAI's pushes"): a verified push is a
    -- hint that makes its video due for a confirming poll at once, within
    -- the per-video min_interval; the poll's answer decides.
    -- When the last poll of the video was recorded (NULL before one): a
    -- hint never brings the next poll closer than min_interval after it.
    polled_at       BIGINT,
    -- While active: when the latest push not yet answered by a poll arrived
    -- (a hint pending). Once terminal: the push whose confirming poll ended
    -- the video (the completion was learned by push), else NULL.
    hinted_at       BIGINT
);

-- "What is due next": a range scan over active videos only, so terminal rows
-- (the vast majority over time) cost nothing. Claims walk it with FOR
-- UPDATE SKIP LOCKED, so concurrent claimers pass over each other's rows.
-- SQLite's indexes carry the rowid as a hidden last column, which orders
-- videos due at the same millisecond by age; here `id` is named for the
-- same order (each claim sorts by both) without a sort step.
CREATE INDEX videos_due ON videos (next_poll_at, id) WHERE state = 'active';
-- List by state in pagination order.
CREATE INDEX videos_state_order ON videos (state, id);
-- The finished renders, newest last: replayed into the learned
-- distribution at start and read by `export-renders`, which pages by
-- (terminal_at, id): with `id` named (SQLite's hidden rowid column), the
-- row comparison of the cursor is a bound of the index scan.
CREATE INDEX videos_finished ON videos (terminal_at, id) WHERE state IN ('completed', 'failed');
-- The pending hints, due first: claims take these ahead of other due videos.
CREATE INDEX videos_hinted ON videos (next_poll_at, id)
    WHERE state = 'active' AND hinted_at IS NOT NULL;

-- Every change of upstream status or of state, in order.
CREATE TABLE transitions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    video_rowid BIGINT NOT NULL REFERENCES videos (id),
    -- 'status' (upstream status) or 'state' (relay state).
    kind        TEXT   NOT NULL CHECK (kind IN ('status', 'state')),
    from_value  TEXT,
    to_value    TEXT   NOT NULL,
    at          BIGINT NOT NULL
);

CREATE INDEX transitions_by_video ON transitions (video_rowid, id);

-- The outbox: one row per (terminal event, callback target).
CREATE TABLE deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    video_rowid     BIGINT NOT NULL REFERENCES videos (id),
    event_id        TEXT   NOT NULL,
    url             TEXT   NOT NULL,
    state           TEXT   NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    lease_until     BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    -- Why a delivery is dead (gone, exhausted, forbidden_target).
    reason          TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (video_rowid, url)
);

-- Due deliveries, most overdue first (ties by age, as for videos_due).
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE state = 'pending';

-- Every delivery attempt, for the record: when, what came back, how long.
CREATE TABLE delivery_attempts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id BIGINT NOT NULL REFERENCES deliveries (id),
    at          BIGINT NOT NULL,
    -- HTTP status, when the receiver answered.
    status      BIGINT,
    -- Transport error or refusal, when it did not.
    error       TEXT,
    duration_ms BIGINT NOT NULL
);

CREATE INDEX delivery_attempts_by_delivery ON delivery_attempts (delivery_id, id);

-- The readiness probe's row: `/readyz` upserts it and commits, so a ready
-- answer means the database really took a write. One row, rewritten in
-- place, so the probe costs one small commit and no growth. `writes`
-- counts the probes: each one changes the row, so no probe is a no-op
-- whatever the clock says.
CREATE TABLE readiness_probe (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    written_at BIGINT NOT NULL,
    writes     BIGINT NOT NULL DEFAULT 0
);
