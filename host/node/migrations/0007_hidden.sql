-- Undo and retroactive denial (issue 11). A stored message is hidden (not offered by sync, not
-- read by plugins, not restored, not shown as live) while `undone` is not 0. From this version
-- `undone` is a set of bits, each one reason, so that the reasons stay independent (a revoke
-- never redoes a message its author undid):
--   1  undone by a valid undo-own or undo-other; `undone_by` is that undo's sync.id
--   2  denied: the permission timeline no longer allows its author to have created it
-- Rows stored before this version hold 0: nothing was ever undone or denied.
ALTER TABLE sync ADD COLUMN undone_by INTEGER;
