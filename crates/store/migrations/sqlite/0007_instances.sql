-- The registry of instances sharing this store. Every running instance writes its name and the
-- time it was last seen (milliseconds since the Unix epoch, by its own clock) about once a
-- second, and removes its row when it shuts down cleanly; a row not renewed for a few seconds
-- belongs to an instance that is gone. Write quotas are shared out among the live instances.
CREATE TABLE instances (
    name         TEXT    NOT NULL PRIMARY KEY,
    last_seen_ms INTEGER NOT NULL
) WITHOUT ROWID;
