-- Enqueues are no longer announced by a trigger: the relay's writer
-- announces only work due within an idle look (a second) of its enqueue
-- (`store::postgres::mutations::announce_if_due_soon`).
--
-- An idle relay looks at the database at least once a second (the lease
-- loop's longest idle wait), so it finds work due later than that before
-- it is due, without being told. The trigger notified every listening
-- relay on every enqueue commit, and each notification costs each
-- listener's server process a wake-up and a read of the queue: with three
-- relays on two cores, single enqueues ran at two thirds of one relay's
-- rate. The statement-level trigger also ran, with its transition table,
-- on every enqueue commit even when it had nothing to say.
--
-- Pushes (`video_hinted`) and queued callbacks (`deliveries_inserted`) are
-- still announced by their triggers.

DROP TRIGGER videos_inserted ON videos;
DROP FUNCTION jogg_relay_videos_inserted();
