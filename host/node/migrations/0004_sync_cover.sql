-- The responder's reads (rows of a range, meta by meta, with each packet's hash and size) come
-- from this index alone, without visiting the table: a sync request costs the same with a
-- thousand stored messages as with a million. It replaces sync_meta, which it extends.
CREATE INDEX sync_cover ON sync (community, meta, undone, global_time, hash, length(packet));
DROP INDEX sync_meta;
