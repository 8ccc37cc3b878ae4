-- When each change outcome was stored (microseconds since the Unix epoch, the applying
-- process's clock), so that idempotency keys older than the retention window can be pruned,
-- oldest first, through the index. Outcomes stored before this migration count as stored now:
-- they are kept for a whole window from the upgrade. (ADD COLUMN needs a constant default;
-- every later insert sets the column.)
ALTER TABLE applied_changes ADD COLUMN applied_at INTEGER NOT NULL DEFAULT 0;
UPDATE applied_changes SET applied_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000000;
CREATE INDEX applied_changes_by_time ON applied_changes (applied_at);
