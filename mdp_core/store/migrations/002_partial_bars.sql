-- mdp schema, version 2: bars flagged partial.
--
-- A bar resampled from finer bars and flushed when its stream stopped covers only part of
-- its window; it is stored with partial = true, and the complete bar for the same key,
-- when it arrives later (a restarted stream backfills it), replaces it. Every other row
-- keeps the first write of its key.

ALTER TABLE mdp.bars ADD COLUMN partial boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN mdp.bars.partial IS
    'true: built from part of its window (a stream stopped mid-window); replaced by the '
    'complete bar when one is written.';
