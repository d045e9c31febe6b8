//! The store's side of undo (`dispersy_core::undo`, the node's `Event::UndoTargets` and
//! `Event::Undone`): the metas of the messages undos point to, and marking rows undone by an
//! undo (reason bit 1 of `sync.undone`, `undone_by` the undo's row; migration 0007) or no
//! longer undone.

use dispersy_core::identity::MemberId;
use dispersy_core::node::UndoFlip;
use sqlx::Row as _;

use super::{Store, StoreError, to_i64};

/// A row whose hidden state changed when it was marked ([`Store::mark_undone_by_undo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoMarked {
    /// The row's signed packet.
    pub packet: Vec<u8>,
    /// Whether it is hidden now (`undone != 0`).
    pub hidden: bool,
    /// The undo's packet: the one it is undone by now, or (redone) the one it was undone by.
    pub undo: Option<Vec<u8>>,
}

impl Store {
    /// The meta of the stored message of each `(member, global time)` of `community`, in
    /// order; `None` where none is stored. Hidden messages count: an undo's target stays
    /// stored.
    pub async fn undo_targets(
        &self,
        community: i64,
        targets: &[(MemberId, u64)],
    ) -> Result<Vec<Option<u32>>, StoreError> {
        let mut metas = Vec::with_capacity(targets.len());
        for (member, global_time) in targets {
            let meta: Option<i64> = sqlx::query_scalar(
                "SELECT meta FROM sync WHERE community = ?1 AND member = ?2 AND global_time = ?3",
            )
            .bind(community)
            .bind(member.0.as_slice())
            .bind(to_i64(*global_time))
            .fetch_optional(&self.pool)
            .await?;
            metas.push(meta.and_then(|m| u32::try_from(m).ok()));
        }
        Ok(metas)
    }

    /// Marks the rows of `flips` in one transaction: a flip naming an undo sets reason bit 1
    /// and `undone_by` to the undo's row; one naming none clears both. Returns the rows whose
    /// hidden state (`undone != 0`) changed, in flip order: the ones the plugin is told of.
    /// A row or undo not stored is skipped. Marking twice changes nothing the second time.
    pub async fn mark_undone_by_undo(
        &self,
        community: i64,
        flips: &[UndoFlip],
    ) -> Result<Vec<UndoMarked>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut changed = Vec::new();
        for flip in flips {
            let row = sqlx::query(
                "SELECT id, undone, undone_by, packet FROM sync
                 WHERE community = ?1 AND member = ?2 AND global_time = ?3",
            )
            .bind(community)
            .bind(flip.target.member.0.as_slice())
            .bind(to_i64(flip.target.global_time))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                continue;
            };
            let id: i64 = row.try_get(0)?;
            let undone: i64 = row.try_get(1)?;
            let before_by: Option<i64> = row.try_get(2)?;
            let packet: Vec<u8> = row.try_get(3)?;
            let undo = match flip.undone_by {
                Some(by) => {
                    sqlx::query(
                        "SELECT id, packet FROM sync
                         WHERE community = ?1 AND member = ?2 AND global_time = ?3",
                    )
                    .bind(community)
                    .bind(by.member.0.as_slice())
                    .bind(to_i64(by.global_time))
                    .fetch_optional(&mut *tx)
                    .await?
                }
                None => None,
            };
            let (now_undone, now_by, undo_packet) = match (&flip.undone_by, undo) {
                (Some(_), Some(undo)) => {
                    let undo_id: i64 = undo.try_get(0)?;
                    (undone | 1, Some(undo_id), Some(undo.try_get(1)?))
                }
                // The undo is not stored (it always is before its flip): nothing to mark.
                (Some(_), None) => continue,
                (None, _) => {
                    let previous: Option<Vec<u8>> = match before_by {
                        Some(by) => {
                            sqlx::query_scalar("SELECT packet FROM sync WHERE id = ?1")
                                .bind(by)
                                .fetch_optional(&mut *tx)
                                .await?
                        }
                        None => None,
                    };
                    (undone & !1, None, previous)
                }
            };
            if (now_undone, now_by) == (undone, before_by) {
                continue;
            }
            sqlx::query("UPDATE sync SET undone = ?2, undone_by = ?3 WHERE id = ?1")
                .bind(id)
                .bind(now_undone)
                .bind(now_by)
                .execute(&mut *tx)
                .await?;
            if (now_undone != 0) != (undone != 0) {
                changed.push(UndoMarked {
                    packet,
                    hidden: now_undone != 0,
                    undo: undo_packet,
                });
            }
        }
        tx.commit().await?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::testing::{definition, post};
    use super::*;
    use dispersy_core::undo::Target;

    #[tokio::test]
    async fn rows_are_marked_undone_by_an_undo_and_redone_once() {
        let store = Store::open_in_memory().await.unwrap();
        let id = store.ensure_community(&definition()).await.unwrap();
        let batch = vec![post(id, 1, vec![1; 80]), post(id, 2, vec![2; 80])];
        store.insert(&batch).await.unwrap();
        let (member, undoer) = (batch[0].member, batch[1].member);
        let target = Target {
            member,
            global_time: 1,
        };
        let by = Target {
            member: undoer,
            global_time: 2,
        };
        assert_eq!(
            store
                .undo_targets(id, &[(member, 1), (member, 9)])
                .await
                .unwrap(),
            vec![Some(batch[0].meta), None]
        );
        let undo = [UndoFlip {
            target,
            undone_by: Some(by),
        }];
        let marked = store.mark_undone_by_undo(id, &undo).await.unwrap();
        assert_eq!(marked.len(), 1);
        assert!(marked[0].hidden);
        assert_eq!(marked[0].undo.as_deref(), Some(&[2u8; 80][..]));
        // Again: nothing changes, nothing to tell.
        assert!(
            store
                .mark_undone_by_undo(id, &undo)
                .await
                .unwrap()
                .is_empty()
        );
        let listed = store.messages(id, 0, 10).await.unwrap();
        assert_eq!(listed[0].undone_by, Some((undoer, 2)));
        assert_eq!(listed[1].undone_by, None);
        let redo = [UndoFlip {
            target,
            undone_by: None,
        }];
        let marked = store.mark_undone_by_undo(id, &redo).await.unwrap();
        assert_eq!(marked.len(), 1);
        assert!(!marked[0].hidden);
        assert_eq!(store.messages(id, 0, 10).await.unwrap()[0].undone_by, None);
    }
}
