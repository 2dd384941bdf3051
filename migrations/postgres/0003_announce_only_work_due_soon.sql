-- Enqueues announce only work due within a second of their enqueue.
--
-- An idle relay looks at the database at least once a second (the lease
-- loop's longest idle wait), so it finds work due later than that before
-- it is due, without being told. A notification costs every listening
-- relay's server process a wake-up and a read of the queue, and with
-- several relays enqueueing it was sent on every commit: with three relays
-- on two cores, single enqueues ran at two thirds of one relay's rate.
-- Work due at once (`polling.first_after = "0s"`, pushes) is still
-- announced, so another relay takes it without waiting out its idle look.
--
-- `enqueued_at` is the enqueuing relay's clock, the same clock as
-- `next_poll_at`: the server's clock plays no part.

CREATE OR REPLACE FUNCTION jogg_relay_videos_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    earliest BIGINT;
    newest BIGINT;
BEGIN
    SELECT MIN(next_poll_at), MAX(enqueued_at) INTO earliest, newest
        FROM inserted WHERE state = 'active';
    IF earliest IS NOT NULL AND earliest <= newest + 1000 THEN
        PERFORM pg_notify('jogg_relay_videos', earliest::text);
    END IF;
    RETURN NULL;
END
$$;
