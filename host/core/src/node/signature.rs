//! The node's side of double-member co-signing (the rules and bounds are in
//! [`crate::signature`]): [`Node::request_signature`] and [`Node::propose`] on the first
//! author's side, the signature-request handler and [`Node::handle_cosign_verdict`] on the
//! co-signer's side, the signature-response classified and, when our plugin must decide,
//! [`Event::Cosigned`] answered by [`Node::handle_cosigned`], the message completed and handed
//! to our plugin's check before it is published, and the expiry of all.

use std::net::SocketAddr;

use super::{CreateError, Event, Node, RequestId};
use crate::identity::{CommunityId, PublicKey};
use crate::meta::Authentication;
use crate::signature::{Answer, Answered, Asked, Consult, Cosign, Pending, SignError};
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
    /// [`CreateError::UnknownConversion`]). An unchanged answer is published at once; a changed
    /// one (the co-signer modified or appended to the payload) only once the driver's answer to
    /// [`Event::Cosigned`] accepts it.
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
        let proposal = (meta, conversion, payload, co_signer, to, candidates);
        self.start_signature(now, community, proposal, Consult::Changed)
    }

    /// A double-member message a plugin proposes: like [`Node::request_signature_in`], but the
    /// driver is asked about every answer ([`Event::Cosigned`], unchanged ones too, answered by
    /// [`Node::handle_cosigned`]) and told of the expiry ([`Answer::Timeout`], before the
    /// request's [`Event::Created`]).
    #[allow(clippy::too_many_arguments)]
    pub fn propose(
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
        let proposal = (meta, conversion, payload, co_signer, to, candidates);
        self.start_signature(now, community, proposal, Consult::Always)
    }

    /// Claims the global time of a proposed double-member message and sends the
    /// signature-request.
    fn start_signature(
        &mut self,
        now: Instant,
        community: CommunityId,
        (meta, conversion, payload, co_signer, to, candidates): Proposal<'_>,
        consult: Consult,
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
        if descriptor.len() + SIGNED_OVERHEAD > self.config.max_datagram {
            return Err(CreateError::TooLarge {
                len: descriptor.len() + SIGNED_OVERHEAD,
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
                consult,
                answered: None,
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

    /// Our plugin's yes or no on [`Event::SignatureAsked`] `ask` (the older form of
    /// [`Node::handle_cosign_verdict`]: `true` signs the message as proposed).
    pub fn handle_signature_verdict(&mut self, now: Instant, ask: RequestId, allow: bool) {
        let verdict = if allow { Cosign::Sign } else { Cosign::Refuse };
        self.handle_cosign_verdict(now, ask, verdict);
    }

    /// Our plugin's answer to [`Event::SignatureAsked`] `ask`: unless it refuses, our signature
    /// over the message (its payload replaced or extended as the answer says) goes back to the
    /// requester. A changed message that would not fit a datagram with both signatures is
    /// refused. Either way refusals are counted ([`Traffic::SignatureRefused`]).
    pub fn handle_cosign_verdict(&mut self, now: Instant, ask: RequestId, verdict: Cosign) {
        let Some(asked) = self.asked.remove(&ask) else {
            return;
        };
        let changed = !matches!(verdict, Cosign::Sign);
        let payload = match verdict.payload(&asked.message.payload) {
            Some(payload) if asked.deadline > now => payload,
            _ => {
                self.stats.packets.bump(Traffic::SignatureRefused);
                return;
            }
        };
        let (message, descriptor) = if changed {
            let message = CommunityMessage {
                payload,
                ..asked.message
            };
            let descriptor = message.descriptor();
            if descriptor.len() + SIGNED_OVERHEAD > self.config.max_datagram {
                self.stats.packets.bump(Traffic::SignatureRefused);
                return;
            }
            (message, descriptor)
        } else {
            (asked.message, asked.descriptor)
        };
        let signature = self.key.sign(&descriptor).to_vec();
        let session = self.sessions.id(&asked.from).unwrap_or(0);
        self.stats.packets.bump(Traffic::SignatureGiven);
        self.send(
            asked.from,
            Packet::SignatureResponse(SignatureResponse {
                session,
                request: asked.request,
                message,
                descriptor,
                signer: 1,
                signature,
            }),
        );
    }

    /// The co-signer's signature: checked, classified and, when our plugin must decide,
    /// handed to it ([`Event::Cosigned`]); otherwise completed with ours and published.
    pub(super) fn on_signature_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        m: SignatureResponse,
    ) -> Result<(), DropReason> {
        let matches = self
            .signing
            .get(&RequestId(m.request))
            .is_some_and(|p| p.to == from && m.signer == 1 && p.answered.is_none());
        if !matches {
            return Err(DropReason::UnexpectedSignatureResponse);
        }
        let request = RequestId(m.request);
        let Some(mut pending) = self.signing.remove(&request) else {
            return Err(DropReason::UnexpectedSignatureResponse);
        };
        let answer = if m.descriptor == pending.descriptor {
            Answer::Signed
        } else if only_payload_differs(&pending.message, &m.message)
            && m.descriptor.len() + SIGNED_OVERHEAD <= self.config.max_datagram
        {
            Answer::of(&pending.message.payload, &m.message.payload)
        } else {
            self.push_event(Event::Created {
                community: pending.community,
                request,
                result: Err(SignError::Modified.into()),
            });
            return Err(DropReason::SignatureResponseModified);
        };
        // The co-signer's signature was checked when its response was decoded, over these
        // very bytes.
        let answered = Answered {
            message: m.message,
            descriptor: m.descriptor,
            signature: m.signature,
        };
        if answer == Answer::Signed && pending.consult == Consult::Changed {
            self.complete_signature(now, request, pending, answered);
            return Ok(());
        }
        self.push_event(Event::Cosigned {
            community: pending.community,
            request,
            answer,
            message: answered.message.clone(),
        });
        pending.answered = Some(answered);
        pending.deadline = now + self.config.check_timeout;
        self.signing.insert(request, pending);
        Ok(())
    }

    /// Our plugin's decision on the co-signer's answer to `request` ([`Event::Cosigned`]):
    /// accepted, the message is completed with our signature and checked before it is
    /// published; declined, nothing is sent or stored, the decline is counted
    /// ([`Traffic::SignatureDeclined`]) and [`Event::Created`] reports
    /// [`SignError::Declined`]. An answer for an unknown or expired request is ignored.
    pub fn handle_cosigned(&mut self, now: Instant, request: RequestId, accept: bool) {
        let answered = self
            .signing
            .get(&request)
            .is_some_and(|p| p.answered.is_some());
        if !answered {
            return;
        }
        let Some(mut pending) = self.signing.remove(&request) else {
            return;
        };
        let Some(answer) = pending.answered.take() else {
            return;
        };
        if accept {
            self.complete_signature(now, request, pending, answer);
        } else {
            self.stats.packets.bump(Traffic::SignatureDeclined);
            self.push_event(Event::Created {
                community: pending.community,
                request,
                result: Err(SignError::Declined.into()),
            });
        }
    }

    /// Adds our signature to the co-signed `answer` and hands it to our plugin's check.
    fn complete_signature(
        &mut self,
        now: Instant,
        request: RequestId,
        pending: Pending,
        answer: Answered,
    ) {
        let mine = self.key.sign(&answer.descriptor).to_vec();
        let signed = SignedMessage::checked(
            answer.message,
            answer.descriptor,
            vec![mine, answer.signature],
        );
        let deadline = now + self.config.check_timeout;
        self.check_created(
            request,
            pending.community,
            signed,
            pending.candidates,
            deadline,
        );
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
            let Some(pending) = self.signing.remove(&request) else {
                continue;
            };
            let error = if pending.answered.is_some() {
                SignError::Undecided
            } else {
                if pending.consult == Consult::Always {
                    self.push_event(Event::Cosigned {
                        community: pending.community,
                        request,
                        answer: Answer::Timeout,
                        message: pending.message,
                    });
                }
                SignError::Timeout
            };
            self.push_event(Event::Created {
                community: pending.community,
                request,
                result: Err(error.into()),
            });
        }
        self.asked.retain(|_, a| a.deadline > now);
    }
}

/// What a proposed double-member message is: meta name, conversion, payload, co-signer, its
/// address, extra destinations.
type Proposal<'a> = (
    &'a str,
    Option<&'a [u8]>,
    Vec<u8>,
    PublicKey,
    SocketAddr,
    &'a [SocketAddr],
);

/// What two signatures and the collection envelope add to a descriptor: a co-signed message
/// whose descriptor leaves less than this of the datagram budget is refused.
const SIGNED_OVERHEAD: usize = 160;

/// Whether `answered` is `proposed` with at most its payload changed (the only change a
/// co-signer may make).
fn only_payload_differs(proposed: &CommunityMessage, answered: &CommunityMessage) -> bool {
    CommunityMessage {
        payload: Vec::new(),
        ..proposed.clone()
    } == CommunityMessage {
        payload: Vec::new(),
        ..answered.clone()
    }
}
