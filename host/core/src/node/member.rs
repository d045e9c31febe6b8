//! The node's side of the missing-identity exchange (the key table and the datagrams waiting
//! for a key are in [`crate::member`]): answering a missing-identity, and handling the datagrams
//! that waited for a key once its identity arrives.

use std::net::SocketAddr;

use super::Node;
use crate::stats::DropReason;
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
    ) -> Result<(), DropReason> {
        if !self.proven(now, from, request.session) {
            return Err(DropReason::UnprovenIdentityRequest);
        }
        let key =
            wire::Keys::key(&self.members, &request.member).ok_or(DropReason::UnknownIdentity)?;
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
    ) -> Result<(), DropReason> {
        let ready = self
            .members
            .identity(from, identity.random, identity.member)
            .ok_or(DropReason::UnexpectedIdentity)?;
        for waiting in ready {
            self.process(now, waiting.from, &waiting.bytes);
        }
        Ok(())
    }
}
