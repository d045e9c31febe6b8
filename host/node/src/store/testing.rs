//! Shared test fixtures of the store's tests.

use std::time::Duration;

use dispersy_core::bloom::PacketHash;
use dispersy_core::community::Definition;
use dispersy_core::identity::{KeyPair, MemberId};
use dispersy_core::meta::{Distribution, SyncOrder};

use super::NewMessage;
use dispersy_core::meta::{Authentication, Destination, MetaMessage, Resolution};
use dispersy_core::wire::Conversion;

pub(super) fn definition() -> Definition {
    let master = KeyPair::from_secret(&[3u8; 32]).unwrap();
    Definition {
        undoable: Vec::new(),
        name: "test".into(),
        version: "1".into(),
        master: master.public().clone(),
        conversions: vec![Conversion::version(1).unwrap()],
        metas: vec![MetaMessage {
            id: 7,
            name: "post".into(),
            authentication: Authentication::Member,
            resolution: Resolution::Public,
            distribution: Distribution::FullSync {
                sequence_numbers: true,
                order: SyncOrder::Descending,
                pruning: None,
            },
            destination: Destination::Community { node_count: 5 },
            priority: 128,
            batch_window: Duration::ZERO,
        }],
    }
}

/// A plain message of meta 7 at `global_time`, by a member of its own.
pub(super) fn post(community: i64, global_time: u64, packet: Vec<u8>) -> NewMessage {
    NewMessage {
        community,
        member: MemberId([global_time as u8; 20]),
        global_time,
        meta: 7,
        sequence: None,
        priority: 128,
        history: None,
        co_signer: None,
        hash: PacketHash::of(&packet),
        packet,
    }
}
