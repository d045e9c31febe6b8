//! The node's side of the missing-identity exchange (the key table and the datagrams waiting
//! for a key are in [`crate::member`]): answering a missing-identity, and handling the datagrams
//! that waited for a key once its identity arrives.

use std::net::SocketAddr;

use super::Node;
use crate::time::Instant;
use crate::wire::{self, Identity, MissingIdentity, Packet};

impl Node {
    /// Answers a missing-identity from an address that proved itself (a session) or that we
    /// walk to: never a key to an unproven address.
    pub(super) fn on_missing_identity(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: MissingIdentity,
    ) -> Result<(), &'static str> {
        if !self.proven(now, from, request.session) {
            return Err("unproven-identity-request");
        }
        let key = wire::Keys::key(&self.members, &request.member).ok_or("unknown-identity")?;
        let identity = Identity {
            community: request.community,
            session: self.sessions.id(&from).unwrap_or(0),
            random: request.random,
            member: key,
        };
        self.send(from, Packet::Identity(identity));
        Ok(())
    }

    /// Learns a key we asked for, then handles the datagrams that waited for it.
    pub(super) fn on_identity(
        &mut self,
        now: Instant,
        from: SocketAddr,
        identity: Identity,
    ) -> Result<(), &'static str> {
        let ready = self
            .members
            .identity(from, identity.random, identity.member)
            .ok_or("unexpected-identity")?;
        for waiting in ready {
            self.process(now, waiting.from, &waiting.bytes);
        }
        Ok(())
    }
}
