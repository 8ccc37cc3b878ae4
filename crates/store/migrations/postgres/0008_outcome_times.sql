-- When each change outcome was stored (the applying process's clock), so that idempotency keys
-- older than the retention window can be pruned, oldest first, through the index. Outcomes
-- stored before this migration count as stored now (the migration's transaction time): they
-- are kept for a whole window from the upgrade. The default fills existing rows without
-- rewriting the table, and is then dropped: every insert sets the column.
ALTER TABLE applied_changes ADD COLUMN applied_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE applied_changes ALTER COLUMN applied_at DROP DEFAULT;
CREATE INDEX applied_changes_by_time ON applied_changes (applied_at);
