//! The store's side of undo (`dispersy_core::undo`, the node's `Event::UndoTargets` and
//! `Event::Undone`): the metas of the messages undos point to, and marking rows undone by an
//! undo (reason bit 1 of `sync.undone`, `undone_by` the undo's row; migration 0007) or no
//! longer undone, through `hidden`'s [`Store::mark`].

use dispersy_core::identity::MemberId;
use dispersy_core::node::UndoFlip;
use dispersy_core::wire::SignedMessage;
use sqlx::Row as _;

use super::{Mark, Store, StoreError, to_i64};
use crate::plugin::undone::{Notice, Why};

/// The rows whose visibility one batch of undo flips changed, as notices for the plugin
/// ([`Store::mark_undone_by_undo`]).
pub type UndoMarked = Vec<crate::plugin::undone::Notice>;

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

    /// The author and global time of each stored row of `ids` (the undos rows are undone by,
    /// as listings name them); ids not stored are left out.
    pub async fn undo_refs(
        &self,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, (MemberId, u64)>, StoreError> {
        let mut refs = std::collections::HashMap::new();
        for id in ids {
            let row = sqlx::query("SELECT member, global_time FROM sync WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else {
                continue;
            };
            let member: Vec<u8> = row.try_get(0)?;
            let global_time: i64 = row.try_get(1)?;
            if let Ok(member) = MemberId::from_slice(&member) {
                refs.insert(*id, (member, u64::try_from(global_time).unwrap_or(0)));
            }
        }
        Ok(refs)
    }

    /// Marks the rows of `flips` with [`Store::mark`]: a flip naming an undo sets reason bit 1
    /// with `undone_by` the undo's row ([`Mark::Undo`]); one naming none clears it
    /// ([`Mark::Redo`]). Returns the rows whose visibility changed as notices for the plugin,
    /// one per (direction, undo), in flip order: hidden by an undo-own (the undo's author is
    /// the row's) or an undo-other, or shown again after the undo it was undone by. A row not
    /// stored, or an undo not stored, is skipped; marking twice flips nothing the second time.
    pub async fn mark_undone_by_undo(
        &self,
        community: i64,
        flips: &[UndoFlip],
    ) -> Result<UndoMarked, StoreError> {
        let mut notices: UndoMarked = Vec::new();
        for flip in flips {
            let target = flip.target;
            // The undo: the one it is undone by now, or (redo) the one it was undone by.
            let undo =
                match flip.undone_by {
                    Some(by) => {
                        sqlx::query(
                            "SELECT id, packet FROM sync
                         WHERE community = ?1 AND member = ?2 AND global_time = ?3",
                        )
                        .bind(community)
                        .bind(by.member.0.as_slice())
                        .bind(to_i64(by.global_time))
                        .fetch_optional(&self.pool)
                        .await?
                    }
                    None => sqlx::query(
                        "SELECT u.id, u.packet FROM sync AS s JOIN sync AS u ON u.id = s.undone_by
                         WHERE s.community = ?1 AND s.member = ?2 AND s.global_time = ?3",
                    )
                    .bind(community)
                    .bind(target.member.0.as_slice())
                    .bind(to_i64(target.global_time))
                    .fetch_optional(&self.pool)
                    .await?,
                };
            let undo = match undo {
                Some(row) => Some((row.try_get::<i64, _>(0)?, row.try_get::<Vec<u8>, _>(1)?)),
                None => None,
            };
            let mark = match (flip.undone_by, &undo) {
                (Some(_), Some((by, _))) => Mark::Undo { by: *by },
                // The undo is not stored (it always is before its flip): nothing to mark.
                (Some(_), None) => continue,
                (None, _) => Mark::Redo,
            };
            let Some(id) = self
                .mark(community, target.member, target.global_time, mark)
                .await?
            else {
                continue;
            };
            let Some(why) = undo.and_then(|(_, packet)| why(&packet, target.member)) else {
                continue;
            };
            let undone = flip.undone_by.is_some();
            match notices
                .iter_mut()
                .find(|n| n.undone == undone && n.why == why)
            {
                Some(notice) => notice.ids.push(id),
                None => notices.push(Notice {
                    ids: vec![id],
                    undone,
                    why,
                }),
            }
        }
        Ok(notices)
    }
}

/// Why an undo's `packet` hides a message of `author`: undo-own when its signer is `author`,
/// else undo-other; `None` when the packet does not decode.
fn why(packet: &[u8], author: MemberId) -> Option<Why> {
    let undo = SignedMessage::decode(packet).ok()?;
    let key = undo.message.authors.first()?;
    let by = key.as_bytes().to_vec();
    let global_time = undo.message.global_time;
    Some(if key.member_id() == author {
        Why::ByAuthor { by, global_time }
    } else {
        Why::ByOther { by, global_time }
    })
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
        // A real undo-other packet (the plugin is told who undid), by a member of its own.
        let key = dispersy_core::identity::KeyPair::from_secret(&[5; 32]).unwrap();
        let body = dispersy_core::authority::Body::UndoOther {
            target: dispersy_core::authority::MemberRef::from_id(MemberId([1; 20])),
            target_global_time: 1,
        };
        let message = dispersy_core::authority::message(
            dispersy_core::identity::CommunityId([3; 20]),
            key.public().clone(),
            2,
            Some(1),
            body,
        );
        let undo_packet = SignedMessage::sign(message, &[&key]).unwrap().packet;
        let mut undo_row = post(id, 2, undo_packet);
        undo_row.member = key.member_id();
        let batch = vec![post(id, 1, vec![1; 80]), undo_row];
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
        assert!(marked[0].undone);
        assert_eq!(marked[0].ids.len(), 1);
        assert!(matches!(marked[0].why, Why::ByOther { global_time: 2, .. }));
        // Again: nothing changes, nothing to tell.
        assert!(
            store
                .mark_undone_by_undo(id, &undo)
                .await
                .unwrap()
                .is_empty()
        );
        let listed = store.messages(id, 0, 10).await.unwrap();
        assert_eq!(
            (listed[0].undone, listed[0].undone_by),
            (1, Some(listed[1].id))
        );
        assert_eq!(listed[1].undone, 0);
        let redo = [UndoFlip {
            target,
            undone_by: None,
        }];
        let marked = store.mark_undone_by_undo(id, &redo).await.unwrap();
        assert_eq!(marked.len(), 1);
        assert!(!marked[0].undone);
        assert_eq!(store.messages(id, 0, 10).await.unwrap()[0].undone, 0);
    }
}
