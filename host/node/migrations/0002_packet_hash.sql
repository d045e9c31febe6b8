-- Each stored packet's hash (the first 16 bytes of its SHA-256, two little-endian u64), computed
-- once when it is stored: bloom filters are built and probed from it, never from the packet.
-- Rows stored before this migration get theirs at the next start (Store::backfill_hashes).
ALTER TABLE sync ADD COLUMN hash BLOB;
