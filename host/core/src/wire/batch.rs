//! Signature checks while decoding: at once, or noted for one check of a whole batch of
//! datagrams by a [`Verifier`] ([`decode_batch`]).

use std::cell::RefCell;

use super::decoding::decode_checked;
use super::{DecodeError, Keys, Packet};
use crate::identity::{self, PublicKey, SIGNATURE_LEN, SignatureError};
use crate::verifier::{Check, Verifier};

/// Decodes and verifies datagrams as [`decode`](super::decode) does, one result each in their
/// order, with all their signatures checked together by `verifier` (cheaper per signature for
/// frequent signers). A datagram with a signature that fails is an error, as with
/// [`decode`](super::decode); when it has other faults too, which one is reported may differ.
pub fn decode_batch(
    datagrams: &[&[u8]],
    max_datagram: usize,
    keys: &dyn Keys,
    verifier: &mut Verifier,
) -> Vec<Result<Packet, DecodeError>> {
    let noted = RefCell::new(Vec::new());
    // Per noted signature, the datagram it belongs to.
    let mut owners = Vec::new();
    let mut packets: Vec<Result<Packet, DecodeError>> = datagrams
        .iter()
        .enumerate()
        .map(|(i, datagram)| {
            let result = decode_checked(datagram, max_datagram, keys, &Checks::Later(&noted));
            let mut noted = noted.borrow_mut();
            if result.is_err() {
                // Nothing to check for a datagram that is dropped anyway.
                noted.truncate(owners.len());
            }
            owners.resize(noted.len(), i);
            result
        })
        .collect();
    let noted = noted.into_inner();
    let checks: Vec<Check<'_>> = noted
        .iter()
        .map(|n| Check {
            key: &n.key,
            digest: &n.digest,
            signature: &n.signature,
        })
        .collect();
    for (result, owner) in verifier.check(&checks).into_iter().zip(owners) {
        if let (Err(error), Some(packet)) = (result, packets.get_mut(owner))
            && packet.is_ok()
        {
            *packet = Err(error.into());
        }
    }
    packets
}

/// How decoding checks signatures: at once, or noted for one check of a whole batch.
pub(super) enum Checks<'a> {
    Now,
    Later(&'a RefCell<Vec<Noted>>),
}

/// A signature noted for later (its length checked already).
pub(super) struct Noted {
    key: PublicKey,
    digest: [u8; 32],
    signature: [u8; SIGNATURE_LEN],
}

pub(super) fn verify_signatures(
    descriptor: &[u8],
    members: &[PublicKey],
    signatures: &[Vec<u8>],
    checks: &Checks<'_>,
) -> Result<(), DecodeError> {
    if members.len() != signatures.len() {
        return Err(DecodeError::SignatureCount {
            expected: members.len(),
            got: signatures.len(),
        });
    }
    if members.is_empty() {
        return Ok(());
    }
    let digest = identity::digest(descriptor);
    for (member, signature) in members.iter().zip(signatures) {
        match checks {
            Checks::Now => member.verify_digest(&digest, signature)?,
            Checks::Later(noted) => noted.borrow_mut().push(Noted {
                key: member.clone(),
                digest,
                signature: <[u8; SIGNATURE_LEN]>::try_from(signature.as_slice())
                    .map_err(|_| SignatureError::Length(signature.len()))?,
            }),
        }
    }
    Ok(())
}
