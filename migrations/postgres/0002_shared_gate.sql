-- What several relays on one database share beyond the queue: the upstream
-- budget, the global pauses, and wake-up calls for new work.

-- The budget (a GCRA limiter) and the pauses, in one row that every
-- upstream request's reservation updates: the row lock serialises the
-- reservations of all relays, which is what makes the budget global.
CREATE TABLE upstream_gate (
    id              SMALLINT PRIMARY KEY CHECK (id = 1),
    -- Theoretical arrival time of the next request, on the database's
    -- clock (microseconds since the Unix epoch): relays' clocks may differ,
    -- the database's is one. Waits are handed back as durations.
    tat_us          BIGINT NOT NULL,
    -- JoggAI answered 429: nothing is sent before this (a relay's clock,
    -- milliseconds, as every other time the relay stores).
    throttled_until BIGINT,
    -- JoggAI refuses the key or the account: nothing is sent but probes.
    refused_reason  TEXT
                    CHECK (refused_reason IN ('invalid_api_key', 'no_permission',
                                              'insufficient_credit')),
    -- While refused: when the next probe may go out (one relay takes it).
    next_probe_at   BIGINT
);

INSERT INTO upstream_gate (id, tat_us) VALUES (1, 0);

-- Wake-up calls. A relay that stores new work tells every relay listening
-- (itself included), so that another instance picks it up at once rather
-- than at the end of its idle wait. The payload of `jogg_relay_videos` is
-- the earliest due time among the new rows (a relay waits until then);
-- `jogg_relay_deliveries` carries none (PostgreSQL delivers identical
-- notifications of one transaction once).

CREATE FUNCTION jogg_relay_videos_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    earliest BIGINT;
BEGIN
    SELECT MIN(next_poll_at) INTO earliest FROM inserted WHERE state = 'active';
    IF earliest IS NOT NULL THEN
        PERFORM pg_notify('jogg_relay_videos', earliest::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER videos_inserted AFTER INSERT ON videos
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION jogg_relay_videos_inserted();

-- A push's hint brings a video's poll forward.
CREATE FUNCTION jogg_relay_video_hinted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.next_poll_at IS NOT NULL THEN
        PERFORM pg_notify('jogg_relay_videos', NEW.next_poll_at::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER video_hinted AFTER UPDATE OF hinted_at ON videos
    FOR EACH ROW WHEN (NEW.hinted_at IS DISTINCT FROM OLD.hinted_at)
    EXECUTE FUNCTION jogg_relay_video_hinted();

-- Callbacks were queued: by a terminal status, or again by a redelivery.
CREATE FUNCTION jogg_relay_deliveries_queued() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jogg_relay_deliveries', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_inserted AFTER INSERT ON deliveries
    FOR EACH ROW EXECUTE FUNCTION jogg_relay_deliveries_queued();

CREATE TRIGGER deliveries_requeued AFTER UPDATE OF state ON deliveries
    FOR EACH ROW WHEN (NEW.state = 'pending' AND OLD.state <> 'pending')
    EXECUTE FUNCTION jogg_relay_deliveries_queued();
