-- Rows without a packet hash (stored before 0002) are found through this index, which is empty
-- once they have theirs: the start no longer reads the whole table to find none.
CREATE INDEX sync_unhashed ON sync (id) WHERE hash IS NULL;
