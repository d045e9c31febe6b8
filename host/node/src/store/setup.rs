//! Setting up the rows a store needs before messages arrive: members, a community and its
//! meta-messages, and packet hashes missing from rows written by older versions.

use dispersy_core::bloom::PacketHash;
use dispersy_core::community::Definition;
use dispersy_core::identity::{CommunityId, PublicKey};
use dispersy_core::meta::{Distribution, SyncOrder};
use sqlx::Row as _;

use super::{Store, StoreError, hash_bytes};

impl Store {
    /// Records the member's public key (idempotent).
    pub async fn remember_member(&self, key: &PublicKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO member (mid, public_key) VALUES (?1, ?2)
             ON CONFLICT (mid) DO UPDATE SET public_key = excluded.public_key",
        )
        .bind(key.member_id().0.to_vec())
        .bind(key.as_bytes().to_vec())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Creates or refreshes the community row and its meta-message rows (the plugin's and the
    /// built-in permission messages', [`Definition::all_metas`]); returns the row id.
    pub async fn ensure_community(&self, definition: &Definition) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO community (cid, name, master_key, plugin_version) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (cid) DO UPDATE SET name = excluded.name,
                 plugin_version = excluded.plugin_version
             RETURNING id",
        )
        .bind(definition.id().0.to_vec())
        .bind(&definition.name)
        .bind(definition.master.as_bytes().to_vec())
        .bind(&definition.version)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get(0)?;
        for meta in definition.all_metas() {
            let direction = match &meta.distribution {
                Distribution::FullSync { order, .. } | Distribution::LastSync { order, .. } => {
                    match order {
                        SyncOrder::Ascending => 0,
                        SyncOrder::Descending => 1,
                        SyncOrder::Random => 2,
                    }
                }
                _ => 0,
            };
            sqlx::query(
                "INSERT INTO meta_message (community, type, name, priority, direction)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (community, type) DO UPDATE SET name = excluded.name,
                     priority = excluded.priority, direction = excluded.direction",
            )
            .bind(id)
            .bind(i64::from(meta.id))
            .bind(&meta.name)
            .bind(i64::from(meta.priority))
            .bind(direction)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Records community row `row` as an instance of the community type whose own community is
    /// `kind` (joined with a master key of its own): joined again at start after its type.
    pub async fn set_instance_of(&self, row: i64, kind: CommunityId) -> Result<(), StoreError> {
        sqlx::query("UPDATE community SET instance_of = ?2 WHERE id = ?1")
            .bind(row)
            .bind(kind.0.to_vec())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The master keys of the stored instances of the community type whose own community is
    /// `kind`, in the order they were joined (left ones too: joining tells them apart). A row
    /// whose master key does not parse is skipped with a warning.
    pub async fn instances(&self, kind: CommunityId) -> Result<Vec<PublicKey>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT master_key FROM community WHERE instance_of = ?1 ORDER BY id",
        )
        .bind(kind.0.to_vec())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for master in rows {
            match PublicKey::from_bytes(&master) {
                Ok(master) => out.push(master),
                Err(error) => {
                    tracing::warn!(type_community = %kind, %error, "a stored community instance has an unreadable master key; skipped");
                }
            }
        }
        Ok(out)
    }

    /// Whether community row `row` is joined at start when its plugin is present (`false`
    /// once the operator left it). An unknown row is joined.
    pub async fn auto_load(&self, row: i64) -> Result<bool, StoreError> {
        let value: Option<i64> =
            sqlx::query_scalar("SELECT auto_load FROM community WHERE id = ?1")
                .bind(row)
                .fetch_optional(&self.pool)
                .await?;
        Ok(value.is_none_or(|v| v != 0))
    }

    /// Records whether community row `row` is joined at start (the operator left it: `false`;
    /// joined it again: `true`). Its messages are untouched.
    pub async fn set_auto_load(&self, row: i64, auto_load: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE community SET auto_load = ?2 WHERE id = ?1")
            .bind(row)
            .bind(i64::from(auto_load))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Computes the packet hash of rows stored before hashes were kept.
    pub async fn backfill_hashes(&self) -> Result<u64, StoreError> {
        let rows =
            sqlx::query("SELECT id, packet FROM sync INDEXED BY sync_unhashed WHERE hash IS NULL")
                .fetch_all(&self.pool)
                .await?;
        let mut tx = self.pool.begin().await?;
        for row in &rows {
            let id: i64 = row.try_get(0)?;
            let packet: Vec<u8> = row.try_get(1)?;
            sqlx::query("UPDATE sync SET hash = ?1 WHERE id = ?2")
                .bind(hash_bytes(&PacketHash::of(&packet)))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }
}
