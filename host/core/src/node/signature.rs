//! The node's side of double-member co-signing (the rules and bounds are in
//! [`crate::signature`]): [`Node::request_signature`] on the first author's side, the
//! signature-request handler and [`Node::handle_signature_verdict`] on the co-signer's side, the
//! signature-response that completes the message and hands it to our plugin's check before
//! it is published, and the expiry of both.

use std::net::SocketAddr;

use super::{CreateError, Event, Node, RequestId};
use crate::identity::{CommunityId, PublicKey};
use crate::meta::Authentication;
use crate::signature::{Asked, Pending, SignError};
use crate::stats::{DropReason, Traffic};
use crate::time::Instant;
use crate::wire::{CommunityMessage, Packet, SignatureRequest, SignatureResponse, SignedMessage};

impl Node {
    /// Starts a double-member message of meta `meta` with `co_signer` (reachable at `to`)
    /// as its second author: claims its global time and sends the signature-request.
    /// Returns the request id that [`Event::Created`] reports on (once the co-signer signed
    /// and our plugin's check passed the message, or why not).
    #[allow(clippy::too_many_arguments)]
    pub fn request_signature(
        &mut self,
        now: Instant,
        community: CommunityId,
        meta: &str,
        payload: Vec<u8>,
        co_signer: PublicKey,
        to: SocketAddr,
        candidates: &[SocketAddr],
    ) -> Result<RequestId, CreateError> {
        self.request_signature_in(
            now, community, meta, None, payload, co_signer, to, candidates,
        )
    }

    /// [`Node::request_signature`] with `payload` written in `conversion`, which the plugin
    /// chose (`None`: the community's first; one the community does not list is refused,
    /// [`CreateError::UnknownConversion`]).
    #[allow(clippy::too_many_arguments)]
    pub fn request_signature_in(
        &mut self,
        now: Instant,
        community: CommunityId,
        meta: &str,
        conversion: Option<&[u8]>,
        payload: Vec<u8>,
        co_signer: PublicKey,
        to: SocketAddr,
        candidates: &[SocketAddr],
    ) -> Result<RequestId, CreateError> {
        if self.signing.len() >= self.config.signature.max_pending {
            return Err(CreateError::Busy);
        }
        let me = self.key.public().clone();
        if co_signer == me {
            return Err(CreateError::CoSigner);
        }
        let (meta, first) = self.creatable(community, meta, Authentication::DoubleMember)?;
        let conversion = match conversion {
            None => first,
            Some(bytes) => self.conversion_of(community, bytes)?,
        };
        let c = self
            .communities
            .get_mut(&community)
            .ok_or(CreateError::UnknownCommunity(community))?;
        // Both signers need the permit a Linear (or Dynamic, now Linear) meta asks for.
        if !c.permits(&meta, &[me.member_id(), co_signer.member_id()]) {
            return Err(CreateError::NotPermitted(meta.name.clone()));
        }
        let message = CommunityMessage {
            community,
            message_type: meta.id,
            conversion,
            authors: vec![me, co_signer],
            global_time: c.global_time + 1,
            sequence_number: None,
            resolution_index: None,
            relay_hops: None,
            payload,
            authority: None,
        };
        let descriptor = message.descriptor();
        // Two signatures and the envelope: what the final message will take.
        if descriptor.len() + 160 > self.config.max_datagram {
            return Err(CreateError::TooLarge {
                len: descriptor.len() + 160,
                max: self.config.max_datagram,
            });
        }
        c.claim_global_time();
        let request = self.next_request_id();
        let session = self.sessions.id(&to).unwrap_or(0);
        self.send(
            to,
            Packet::SignatureRequest(SignatureRequest {
                session,
                request: request.0,
                message: message.clone(),
                descriptor: descriptor.clone(),
            }),
        );
        self.signing.insert(
            request,
            Pending {
                community,
                message,
                descriptor,
                to,
                candidates: candidates.to_vec(),
                deadline: now + self.config.signature.timeout,
            },
        );
        Ok(request)
    }

    /// A signature-request from a proven address naming us as second author: our plugin
    /// decides ([`Event::SignatureAsked`]).
    pub(super) fn on_signature_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: SignatureRequest,
    ) -> Result<(), DropReason> {
        if !self.proven(now, from, m.session) {
            return Err(DropReason::UnprovenSignatureRequest);
        }
        if m.message.authors.get(1) != Some(self.key.public())
            || m.message.authors.first() == Some(self.key.public())
        {
            return Err(DropReason::SignatureRequestNotForUs);
        }
        let margin = self.config.global_time_margin;
        let c = self
            .communities
            .get(&m.message.community)
            .filter(|c| c.definition.is_some())
            .ok_or(DropReason::UnknownCommunity)?;
        let double = c
            .meta(m.message.message_type)
            .is_some_and(|meta| meta.authentication == Authentication::DoubleMember);
        if !double {
            return Err(DropReason::SignatureRequestWrongMeta);
        }
        if m.message.global_time > c.acceptable_global_time(now, margin) {
            return Err(DropReason::GlobalTimeBeyondLimit);
        }
        // Co-signing is creating: a destroyed or frozen community does neither (crate::destroy).
        if c.is_hard_destroyed() {
            return Err(DropReason::Destroyed);
        }
        if c.destroyed.is_some() {
            return Err(DropReason::Frozen);
        }
        if self.asked.len() >= self.config.signature.max_pending {
            return Err(DropReason::SignatureBusy);
        }
        let ask = self.next_request_id();
        let community = m.message.community;
        self.push_event(Event::SignatureAsked {
            community,
            ask,
            message: m.message.clone(),
        });
        self.asked.insert(
            ask,
            Asked {
                from,
                request: m.request,
                message: m.message,
                descriptor: m.descriptor,
                deadline: now + self.config.signature.timeout,
            },
        );
        Ok(())
    }

    /// Our plugin's verdict on [`Event::SignatureAsked`] `ask`: when allowed, our signature
    /// goes back to the requester.
    pub fn handle_signature_verdict(&mut self, now: Instant, ask: RequestId, allow: bool) {
        let Some(asked) = self.asked.remove(&ask) else {
            return;
        };
        if !allow || asked.deadline <= now {
            self.stats.packets.bump(Traffic::SignatureRefused);
            return;
        }
        let signature = self.key.sign(&asked.descriptor).to_vec();
        let session = self.sessions.id(&asked.from).unwrap_or(0);
        self.stats.packets.bump(Traffic::SignatureGiven);
        self.send(
            asked.from,
            Packet::SignatureResponse(SignatureResponse {
                session,
                request: asked.request,
                message: asked.message,
                descriptor: asked.descriptor,
                signer: 1,
                signature,
            }),
        );
    }

    /// The co-signer's signature: checked, completed with ours, published.
    pub(super) fn on_signature_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: SignatureResponse,
    ) -> Result<(), DropReason> {
        let matches = self
            .signing
            .get(&RequestId(m.request))
            .is_some_and(|p| p.to == from && m.signer == 1);
        if !matches {
            return Err(DropReason::UnexpectedSignatureResponse);
        }
        let Some(pending) = self.signing.remove(&RequestId(m.request)) else {
            return Err(DropReason::UnexpectedSignatureResponse);
        };
        if m.descriptor != pending.descriptor {
            self.push_event(Event::Created {
                community: pending.community,
                request: RequestId(m.request),
                result: Err(SignError::Modified.into()),
            });
            return Err(DropReason::SignatureResponseModified);
        }
        // The co-signer's signature was checked when its response was decoded, over these
        // very bytes; ours is made here. Our plugin checks it before it is published.
        let mine = self.key.sign(&pending.descriptor).to_vec();
        let signed =
            SignedMessage::checked(pending.message, pending.descriptor, vec![mine, m.signature]);
        let deadline = now + self.config.check_timeout;
        self.check_created(
            RequestId(m.request),
            pending.community,
            signed,
            pending.candidates,
            deadline,
        );
        Ok(())
    }

    /// Gives up on signatures not given in time, and on verdicts not taken in time.
    pub(super) fn expire_signatures(&mut self, now: Instant) {
        let expired: Vec<RequestId> = self
            .signing
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for request in expired {
            if let Some(pending) = self.signing.remove(&request) {
                self.push_event(Event::Created {
                    community: pending.community,
                    request,
                    result: Err(SignError::Timeout.into()),
                });
            }
        }
        self.asked.retain(|_, a| a.deadline > now);
    }
}
