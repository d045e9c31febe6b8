-- Denied rows apart (issue 11's performance goal: a revoke over 1,000,000 stored messages
-- re-evaluated in <= 1 s). Reason bit 2 of `sync.undone` (0007) moves to a narrow table: a
-- revoke that denies hundreds of thousands of rows inserts their ids there (a few MB, appended
-- in id order) instead of rewriting every page of `sync` and of `sync_cover`. A row is hidden
-- iff `undone` is not 0 (undone by an undo, bit 1, still per row: undos are few) or its id is in
-- `denied`. See host/node/src/store/hidden.rs for the measurements behind the choice.
CREATE TABLE denied (
    id  INTEGER PRIMARY KEY                -- sync.id of a row the timeline denies
);
-- How many rows of each community are denied: the store loads the communities with some at
-- open, and only their reads probe `denied`.
CREATE TABLE denied_count (
    community  INTEGER PRIMARY KEY,        -- community.id
    rows       INTEGER NOT NULL
);
-- The rows one re-evaluation flipped (visible <-> hidden), kept from its transaction until the
-- plugin has been told of them in pages (Store::flipped); emptied at every open.
CREATE TABLE flip (
    batch  INTEGER NOT NULL,
    id     INTEGER NOT NULL,               -- sync.id
    PRIMARY KEY (batch, id)
) WITHOUT ROWID;
INSERT INTO denied (id) SELECT id FROM sync WHERE undone & 2 != 0;
INSERT INTO denied_count (community, rows)
    SELECT community, COUNT(*) FROM sync WHERE undone & 2 != 0 GROUP BY community;
UPDATE sync SET undone = undone & 1 WHERE undone & 2 != 0;
-- A deleted row (pruning, destroy) takes its denial along: a later row reusing its id starts
-- allowed.
CREATE TRIGGER sync_denied_gone AFTER DELETE ON sync
WHEN old.id IN (SELECT id FROM denied)
BEGIN
    DELETE FROM denied WHERE id = old.id;
    UPDATE denied_count SET rows = rows - 1 WHERE community = old.community;
END;
