-- Schema version 1 (DESIGN.md §8). Messages are identified by (community, member, global_time)
-- and stored verbatim as their signed packet bytes.

-- Members whose public key this node knows (its own, masters, authors of stored messages).
CREATE TABLE member (
    id          INTEGER PRIMARY KEY,
    mid         BLOB NOT NULL UNIQUE,      -- 20-byte member id
    public_key  BLOB                       -- 33-byte compressed key, NULL while only the id is known
);

-- Communities this node joined (auto_load: joined again at start when its plugin is present).
CREATE TABLE community (
    id              INTEGER PRIMARY KEY,
    cid             BLOB NOT NULL UNIQUE,  -- 20-byte community id
    name            TEXT NOT NULL,         -- community type name of the plugin
    master_key      BLOB NOT NULL,
    plugin_version  TEXT NOT NULL,
    auto_load       INTEGER NOT NULL DEFAULT 1
);

-- One row per meta-message per community, refreshed at every load.
CREATE TABLE meta_message (
    community   INTEGER NOT NULL REFERENCES community(id),
    type        INTEGER NOT NULL,          -- CommunityMessage.message_type
    name        TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    direction   INTEGER NOT NULL,          -- 0 ascending, 1 descending, 2 random
    PRIMARY KEY (community, type)
) WITHOUT ROWID;

-- Persistent messages.
CREATE TABLE sync (
    id           INTEGER PRIMARY KEY,
    community    INTEGER NOT NULL REFERENCES community(id),
    member       BLOB NOT NULL,            -- 20-byte id of the (first) author
    global_time  INTEGER NOT NULL,
    meta         INTEGER NOT NULL,         -- CommunityMessage.message_type
    sequence     INTEGER,                  -- NULL unless full-sync with sequence numbers
    priority     INTEGER NOT NULL,
    undone       INTEGER NOT NULL DEFAULT 0, -- 0, or the sync.id of the undoing message
    packet       BLOB NOT NULL,            -- the signed Message, verbatim
    UNIQUE (community, member, global_time)
);

-- Sync ranges over global time (bloom filter ranges and the responder; modulo/offset selection
-- scans this index with `global_time % m = o`).
CREATE INDEX sync_range ON sync (community, global_time);
-- Per-meta queries in responder order, skipping undone messages.
CREATE INDEX sync_meta ON sync (community, meta, undone, global_time);
-- Last-sync history and sequence numbers per member.
CREATE INDEX sync_member ON sync (community, meta, member, global_time);

-- Second signer of double-signed messages.
CREATE TABLE double_signed_sync (
    sync     INTEGER NOT NULL REFERENCES sync(id) ON DELETE CASCADE,
    member1  BLOB NOT NULL,
    member2  BLOB NOT NULL
);
CREATE INDEX double_signed_members ON double_signed_sync (member1, member2);
