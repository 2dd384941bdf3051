-- Every delivery attempt, for the record: when, what came back, how long.
CREATE TABLE delivery_attempts (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    at          INTEGER NOT NULL,
    -- HTTP status, when the receiver answered.
    status      INTEGER,
    -- Transport error or refusal, when it did not.
    error       TEXT,
    duration_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX delivery_attempts_by_delivery ON delivery_attempts (delivery_id, id);
