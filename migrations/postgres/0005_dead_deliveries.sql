-- The console's dead deliveries page (README, "Console") walks the dead
-- rows newest death first (`updated_at` is when a dead row died: nothing
-- writes it afterwards but a redelivery, which makes it pending again).
-- Partial, so it holds only the dead rows, which are few, and costs the
-- delivery path nothing until a delivery dies; `id` is named for the
-- page's tie-break (SQLite's indexes carry the rowid implicitly).
CREATE INDEX deliveries_dead ON deliveries (updated_at, id) WHERE state = 'dead';
