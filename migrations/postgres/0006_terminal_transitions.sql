-- The console's plot of completions and failures per hour (README,
-- "Console") counts terminal transitions since a time: this partial index
-- holds only those (one or none per video), so the count reads the last
-- day's and never the whole table. (SQLite's 0008.)
CREATE INDEX transitions_terminal ON transitions (at)
    WHERE kind = 'state' AND to_value IN ('completed', 'failed');
