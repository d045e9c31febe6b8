-- Sequence numbers per member and meta (full-sync with sequence numbers): the highest one, the
-- one at a given number, and ranges of them for missing-sequence answers.
CREATE INDEX sync_sequence ON sync (community, meta, member, sequence) WHERE sequence IS NOT NULL;
