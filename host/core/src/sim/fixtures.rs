//! What the simulation's scenario tests share: a member-authenticated full-sync meta, and a
//! network of a tracker and peers that joined one community and found each other.

use std::time::Duration;

use super::*;
use crate::community::{Definition, Resume};
use crate::meta::{Authentication, Destination, Distribution, MetaMessage, Resolution, SyncOrder};

/// A member-authenticated, full-sync (not numbered, ascending) meta of `resolution`, priority
/// 128, sent to 10 candidates.
pub(super) fn synced(id: u32, name: &str, resolution: Resolution) -> MetaMessage {
    MetaMessage {
        id,
        name: name.into(),
        authentication: Authentication::Member,
        resolution,
        distribution: Distribution::FullSync {
            sequence_numbers: false,
            order: SyncOrder::Ascending,
            pruning: None,
        },
        destination: Destination::Community { node_count: 10 },
        priority: 128,
        batch_window: Duration::ZERO,
    }
}

/// A tracker (node 0) and `peers` nodes configured by `peer` (given the trackers), each joined
/// to `definition`, after 5 s in which they found each other. The simulation's seed is `seed`.
pub(super) fn network(
    seed: u64,
    peers: usize,
    definition: &Definition,
    peer: impl Fn(Vec<SocketAddr>) -> Config,
) -> Sim {
    let mut sim = Sim::new(seed);
    let tracker = sim.add_node(
        None,
        Config {
            tracker: true,
            ..Config::default()
        },
    );
    let trackers = vec![sim.address(tracker)];
    for _ in 0..peers {
        let i = sim.add_node(None, peer(trackers.clone()));
        let now = sim.now;
        sim.nodes[i]
            .join(now, definition.clone(), Resume::default())
            .expect("join");
    }
    sim.run_for(Duration::from_secs(5));
    sim
}

/// A peer's configuration: the default, with `trackers`.
pub(super) fn peer(trackers: Vec<SocketAddr>) -> Config {
    Config {
        trackers,
        ..Config::default()
    }
}
