-- How many probes the readiness row has taken. Each probe increments it, so
-- every probe really changes its page: SQLite skips writing a page whose row
-- an UPDATE leaves byte-for-byte the same (two probes within one
-- millisecond), and such a commit would prove nothing about the disk.
ALTER TABLE readiness_probe ADD COLUMN writes INTEGER NOT NULL DEFAULT 0;
