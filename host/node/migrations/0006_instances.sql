-- Communities joined as instances of a plugin's community type with a master key of their own
-- (POST /v1/communities): `instance_of` is the id of the type's own community (the one whose
-- master key the plugin carries). NULL for a type's own community. A plugin loaded at start
-- joins its type's own community, then every instance of it whose auto_load is set.
ALTER TABLE community ADD COLUMN instance_of BLOB;
CREATE INDEX community_instance_of ON community (instance_of) WHERE instance_of IS NOT NULL;
