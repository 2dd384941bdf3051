-- `GET /v1/videos` pages in row id order and visits every row once, also
-- while rows are added (README, "HTTP API"). A row's id is drawn when its
-- INSERT runs, and the row appears when its transaction commits: with
-- several relays inserting at once, a lower id can appear after a higher
-- one, behind a cursor a client already holds.
--
-- So every INSERT into videos takes this transaction-level advisory lock,
-- shared, before it draws an id (a statement-level BEFORE trigger runs
-- before the statement's first row is formed), and holds it until its
-- transaction ends. A page's reader takes the same lock exclusively for a
-- moment: once granted, every id drawn so far is settled (committed, or
-- gone with its transaction), and every id drawn later is higher. The
-- reader then lists only rows up to the highest id it saw at that moment
-- (store::postgres::reads::settled_horizon). Shared holders never wait
-- for each other, so inserts of several relays still run side by side.
--
-- The key is the relay's own (the bytes of "joggvids"); advisory locks are
-- per database.
CREATE FUNCTION videos_insert_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(7669462384501154931);
    RETURN NULL;
END
$$;

CREATE TRIGGER videos_insert_order BEFORE INSERT ON videos
    FOR EACH STATEMENT EXECUTE FUNCTION videos_insert_order();
