//! Single fields between prost and domain types: member keys and ids, community ids, addresses,
//! connection types, sync parameters, required and non-zero numbers. Every reader names the field
//! it reads in the [`DecodeError`] it returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dispersy_proto as pb;

use super::{ConnectionType, DecodeError, Keys, Synchronization};
use crate::authority::MemberRef;
use crate::identity::{CommunityId, ID_LEN, KeyError, MemberId, PUBLIC_KEY_LEN, PublicKey};
use crate::meta::builtin;

/// A member given by its 33-byte key (parsed through `keys`) or by its 20-byte id (looked up in
/// `keys`).
pub(super) fn member_key(
    bytes: Option<&[u8]>,
    field: &'static str,
    keys: &dyn Keys,
) -> Result<PublicKey, DecodeError> {
    let member = member_ref(bytes, field, keys)?;
    match member.key {
        Some(key) => Ok(key),
        None => keys
            .key(&member.id)
            .ok_or(DecodeError::UnknownMember(member.id)),
    }
}

/// A member named by its 33-byte key (parsed through `keys`) or by its 20-byte id (taken as it
/// is: nothing is looked up, the key stays unknown).
pub(super) fn member_ref(
    bytes: Option<&[u8]>,
    field: &'static str,
    keys: &dyn Keys,
) -> Result<MemberRef, DecodeError> {
    match bytes {
        None => Err(DecodeError::Missing(field)),
        Some(b) if b.len() == ID_LEN => Ok(MemberRef::from_id(member_id(Some(b), field)?)),
        Some(b) => match <&[u8; PUBLIC_KEY_LEN]>::try_from(b) {
            Ok(key) => Ok(MemberRef::from_key(keys.parse(key)?)),
            Err(_) => Err(KeyError::Length(b.len()).into()),
        },
    }
}

/// The wire form of a member reference: its key when known, else its id.
pub(super) fn to_member_ref(member: &MemberRef) -> Vec<u8> {
    match &member.key {
        Some(key) => key.as_bytes().to_vec(),
        None => member.id.0.to_vec(),
    }
}

/// A 20-byte member id.
pub(super) fn member_id(
    bytes: Option<&[u8]>,
    field: &'static str,
) -> Result<MemberId, DecodeError> {
    MemberId::from_slice(bytes.ok_or(DecodeError::Missing(field))?).map_err(|_| {
        DecodeError::Invalid {
            field,
            reason: "a member id is 20 bytes",
        }
    })
}

/// The message type a missing-sequence or missing-last-message names: a plugin type below the
/// reserved range (descriptor COMMUNITY, `community_message` given), or a built-in permission
/// message by its descriptor type (AUTHORIZE .. DESTROYCOMMUNITY), as its reserved id
/// ([`crate::meta::builtin`]).
pub(super) fn community_type(
    descriptor: Option<i32>,
    community_message: Option<u32>,
    field: &'static str,
) -> Result<u32, DecodeError> {
    use pb::descriptor::Type;
    match descriptor.map(Type::try_from) {
        Some(Ok(Type::Community)) => {
            super::authority::plugin_type(required(community_message, field)?, field)
        }
        Some(Ok(
            t @ (Type::Authorize
            | Type::Revoke
            | Type::Undoown
            | Type::Undoother
            | Type::Dynamicsettings
            | Type::Destroycommunity),
        )) => Ok(builtin::RESERVED_FROM | t as u32),
        _ => Err(DecodeError::Invalid {
            field,
            reason: "names a community message type or a permission message type",
        }),
    }
}

/// The wire form of a message type named by a missing-sequence or missing-last-message:
/// (descriptor, community_message), the inverse of [`community_type`].
pub(super) fn to_community_type(meta: u32) -> (i32, Option<u32>) {
    if builtin::is_reserved(meta) {
        ((meta - builtin::RESERVED_FROM) as i32, None)
    } else {
        (pb::descriptor::Type::Community as i32, Some(meta))
    }
}

/// A 20-byte community id.
pub(super) fn community_id(bytes: Option<&[u8]>) -> Result<CommunityId, DecodeError> {
    let bytes = bytes.ok_or(DecodeError::Missing("community"))?;
    CommunityId::from_slice(bytes).map_err(|_| DecodeError::Invalid {
        field: "community",
        reason: "a community id is 20 bytes",
    })
}

/// A field that must be present.
pub(super) fn required<T>(value: Option<T>, field: &'static str) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::Missing(field))
}

/// A field that must be present and non-zero.
pub(super) fn nonzero(value: Option<u32>, field: &'static str) -> Result<u32, DecodeError> {
    match required(value, field)? {
        0 => Err(DecodeError::Invalid {
            field,
            reason: "must be non-zero",
        }),
        v => Ok(v),
    }
}

/// A socket address: an IPv4 or an IPv6 host (exactly one) and a port.
pub(super) fn address(
    a: Option<&pb::Address>,
    field: &'static str,
) -> Result<SocketAddr, DecodeError> {
    let a = a.ok_or(DecodeError::Missing(field))?;
    let port = u16::try_from(a.ipv4_port.unwrap_or(0)).map_err(|_| DecodeError::Invalid {
        field,
        reason: "port above 65535",
    })?;
    let ip = match (a.ipv4_host, a.ipv6_host.as_deref()) {
        (Some(v4), None) => IpAddr::V4(Ipv4Addr::from(v4)),
        (None, Some(v6)) => {
            let octets: [u8; 16] = v6.try_into().map_err(|_| DecodeError::Invalid {
                field,
                reason: "an IPv6 host is 16 bytes",
            })?;
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        (None, None) => {
            return Err(DecodeError::Invalid {
                field,
                reason: "no host",
            });
        }
        (Some(_), Some(_)) => {
            return Err(DecodeError::Invalid {
                field,
                reason: "both an IPv4 and an IPv6 host",
            });
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// The wire form of a socket address.
pub(super) fn to_address(addr: SocketAddr) -> pb::Address {
    match addr {
        SocketAddr::V4(v4) => pb::Address {
            ipv4_host: Some(u32::from(*v4.ip())),
            ipv4_port: Some(u32::from(v4.port())),
            r#type: None,
            ipv6_host: None,
        },
        SocketAddr::V6(v6) => pb::Address {
            ipv4_host: None,
            ipv4_port: Some(u32::from(v6.port())),
            r#type: None,
            ipv6_host: Some(v6.ip().octets().to_vec()),
        },
    }
}

/// A connection type; absent or unknown values mean [`ConnectionType::Unknown`].
pub(super) fn connection_type(value: Option<i32>) -> ConnectionType {
    match value.and_then(|v| pb::ConnectionType::try_from(v).ok()) {
        Some(pb::ConnectionType::Public) => ConnectionType::Public,
        Some(pb::ConnectionType::SymmetricNat) => ConnectionType::SymmetricNat,
        Some(pb::ConnectionType::UnknownNat) | None => ConnectionType::Unknown,
    }
}

/// The wire form of a connection type.
pub(super) fn to_connection_type(value: ConnectionType) -> i32 {
    match value {
        ConnectionType::Unknown => pb::ConnectionType::UnknownNat,
        ConnectionType::Public => pb::ConnectionType::Public,
        ConnectionType::SymmetricNat => pb::ConnectionType::SymmetricNat,
    }
    .into()
}

/// The sync parameters of an introduction-request, defaults filled in and checked.
pub(super) fn synchronization(
    s: pb::introduction_request::Synchronization,
) -> Result<Synchronization, DecodeError> {
    let sync = Synchronization {
        low: s.low.unwrap_or(1),
        high: s.high.unwrap_or(1),
        modulo: s.modulo.unwrap_or(1),
        offset: s.offset.unwrap_or(0),
        functions: s.functions.unwrap_or(0),
        prefix: s.prefix.unwrap_or(0),
        bloom: s.bloomfilter.unwrap_or_default(),
    };
    let invalid = |reason| {
        Err(DecodeError::Invalid {
            field: "IntroductionRequest.synchronization",
            reason,
        })
    };
    if sync.low == 0 {
        return invalid("low must be 1 or higher");
    }
    if sync.high != 0 && sync.high < sync.low {
        return invalid("high must be 0 or at least low");
    }
    if sync.modulo == 0 || sync.offset >= u64::from(sync.modulo) {
        return invalid("need 0 <= offset < modulo");
    }
    let sync = Synchronization {
        offset: flip_offset(sync.modulo, sync.offset),
        ..sync
    };
    if sync.functions == 0 || sync.functions > 64 {
        return invalid("1..=64 hash functions");
    }
    if sync.bloom.is_empty() {
        return invalid("empty bloom filter");
    }
    Ok(sync)
}

/// The original's sync offset `o` (covers `t` iff `(t + o) % modulo == 0`) as the residue the
/// node selects by (`t % modulo == r`), and back: `(modulo - x) % modulo`, its own inverse.
pub(crate) fn flip_offset(modulo: u32, x: u64) -> u64 {
    let m = u64::from(modulo.max(1));
    (m - x % m) % m
}
