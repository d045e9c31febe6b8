//! Bloom filters for synchronisation (seed: "Bloom filter"; original-implementation §3.1).
//!
//! An introduction-request advertises the persistent messages its sender holds in a range of
//! global times as a bloom filter; the responder offers what is not in it. Sizing follows the
//! original: the filter takes the bytes the datagram budget leaves, and holds as many messages as
//! a 1 % false-positive rate allows.
//!
//! Hashing differs from the original's MD5 of every packet per round: each stored packet is
//! hashed once ([`PacketHash`], the first 16 bytes of its SHA-256), and a filter derives its
//! `functions` bit positions from that pair with a per-filter salt (double hashing). A fresh salt
//! each round makes false positives fall on other messages, so what one round misses the next one
//! finds, and building or probing a filter costs no hashing at all.

use crate::identity;

/// A stored packet's hash, computed once: the first 16 bytes of SHA-256 of the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketHash(pub u64, pub u64);

impl PacketHash {
    /// The hash of `packet` (its complete bytes, signatures included).
    pub fn of(packet: &[u8]) -> Self {
        let digest = identity::digest(packet);
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&digest[..8]);
        b.copy_from_slice(&digest[8..16]);
        PacketHash(u64::from_le_bytes(a), u64::from_le_bytes(b))
    }
}

/// Why received filter parameters are unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BloomError {
    /// No bits.
    #[error("a bloom filter needs at least one byte")]
    Empty,
    /// No or too many hash functions.
    #[error("a bloom filter needs 1..=64 hash functions")]
    Functions,
}

/// A bloom filter over [`PacketHash`]es.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    bytes: Vec<u8>,
    functions: u32,
    salt: u32,
}

/// Mixes 64 bits (the SplitMix64 finaliser).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl BloomFilter {
    /// An empty filter of `bytes` bytes with `functions` hash functions and `salt`.
    pub fn new(bytes: usize, functions: u32, salt: u32) -> Result<Self, BloomError> {
        Self::from_bytes(vec![0; bytes], functions, salt)
    }

    /// A filter received on the wire.
    pub fn from_bytes(bytes: Vec<u8>, functions: u32, salt: u32) -> Result<Self, BloomError> {
        if bytes.is_empty() {
            return Err(BloomError::Empty);
        }
        if functions == 0 || functions > 64 {
            return Err(BloomError::Functions);
        }
        Ok(BloomFilter {
            bytes,
            functions,
            salt,
        })
    }

    /// An empty filter of `bytes` bytes sized for `error_rate`: the number of functions that
    /// minimises false positives at its capacity.
    pub fn sized(bytes: usize, error_rate: f64, salt: u32) -> Result<Self, BloomError> {
        let bits = bytes * 8;
        let capacity = capacity(bits, error_rate).max(1);
        Self::new(bytes, optimal_functions(bits, capacity), salt)
    }

    fn positions(&self, hash: &PacketHash) -> impl Iterator<Item = usize> + use<> {
        let salt = u64::from(self.salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let a = mix(hash.0 ^ salt);
        let b = mix(hash.1 ^ salt.rotate_left(32)) | 1;
        let bits = (self.bytes.len() * 8) as u64;
        (0..u64::from(self.functions))
            .map(move |i| (a.wrapping_add(i.wrapping_mul(b)) % bits) as usize)
    }

    /// Adds a packet.
    pub fn insert(&mut self, hash: &PacketHash) {
        for bit in self.positions(hash) {
            self.bytes[bit / 8] |= 1 << (bit % 8);
        }
    }

    /// Whether the packet may be in the filter (no false negatives; false positives at about the
    /// rate the filter was sized for, as long as it holds at most its capacity).
    pub fn contains(&self, hash: &PacketHash) -> bool {
        self.positions(hash)
            .all(|bit| self.bytes[bit / 8] & (1 << (bit % 8)) != 0)
    }

    /// The filter bytes: bit `i` is bit `i % 8` (least significant first) of byte `i / 8`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of hash functions.
    pub fn functions(&self) -> u32 {
        self.functions
    }

    /// The salt.
    pub fn salt(&self) -> u32 {
        self.salt
    }

    /// About how many packets were inserted, from the share of bits set (Swamidass and Baldi's
    /// estimate `-(m/k) ln(1 - X/m)`); a full filter gives its bit count.
    pub fn estimated_count(&self) -> usize {
        let bits = (self.bytes.len() * 8) as f64;
        let set = self.bytes.iter().map(|b| b.count_ones()).sum::<u32>() as f64;
        if set >= bits {
            return bits as usize;
        }
        (-(bits / f64::from(self.functions)) * (1.0 - set / bits).ln()).round() as usize
    }

    /// How many packets the filter holds at `error_rate`.
    pub fn capacity(&self, error_rate: f64) -> usize {
        capacity(self.bytes.len() * 8, error_rate)
    }
}

/// Packets a filter of `bits` holds at false-positive rate `error_rate`:
/// `floor(m · (ln 2)² / |ln p|)`.
pub fn capacity(bits: usize, error_rate: f64) -> usize {
    let ln2 = std::f64::consts::LN_2;
    (bits as f64 * ln2 * ln2 / error_rate.ln().abs()).floor() as usize
}

/// The number of hash functions minimising false positives for `capacity` packets in `bits`:
/// `ceil(ln 2 · m / n)`, at most 64.
pub fn optimal_functions(bits: usize, capacity: usize) -> u32 {
    let k = (std::f64::consts::LN_2 * bits as f64 / capacity.max(1) as f64).ceil();
    k.clamp(1.0, 64.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_estimated_from_the_bits_set() {
        let mut filter = BloomFilter::sized(1000, 0.01, 5).expect("sized");
        assert_eq!(filter.estimated_count(), 0);
        let mut rng = crate::rng::Rng::new(3);
        for _ in 0..500 {
            filter.insert(&PacketHash(rng.next_u64(), rng.next_u64()));
        }
        let estimate = filter.estimated_count();
        assert!((470..=530).contains(&estimate), "{estimate}");
    }
    use crate::rng::Rng;

    fn hashes(rng: &mut Rng, n: usize) -> Vec<PacketHash> {
        (0..n)
            .map(|_| PacketHash(rng.next_u64(), rng.next_u64()))
            .collect()
    }

    #[test]
    fn sizing_follows_the_original_formulas() {
        // The original's worked value: 10160 bits at 1 % hold 1059 packets with 7 functions.
        assert_eq!(capacity(10_160, 0.01), 1059);
        assert_eq!(optimal_functions(10_160, 1059), 7);
        let filter = BloomFilter::sized(1270, 0.01, 3).unwrap();
        assert_eq!(filter.functions(), 7);
        assert_eq!(filter.capacity(0.01), 1059);
        assert_eq!(BloomFilter::new(0, 3, 1).err(), Some(BloomError::Empty));
        assert_eq!(BloomFilter::new(8, 0, 1).err(), Some(BloomError::Functions));
    }

    #[test]
    fn no_false_negatives_and_the_target_false_positive_rate() {
        let mut rng = Rng::new(9);
        let mut filter = BloomFilter::sized(1270, 0.01, rng.next_u32()).unwrap();
        let members = hashes(&mut rng, filter.capacity(0.01));
        for h in &members {
            filter.insert(h);
        }
        assert!(members.iter().all(|h| filter.contains(h)));
        let probes = hashes(&mut rng, 200_000);
        let false_positives = probes.iter().filter(|h| filter.contains(h)).count();
        let rate = false_positives as f64 / probes.len() as f64;
        assert!((0.005..0.015).contains(&rate), "false-positive rate {rate}");
    }

    #[test]
    fn another_salt_puts_false_positives_elsewhere() {
        let mut rng = Rng::new(4);
        let members = hashes(&mut rng, 1000);
        let probes = hashes(&mut rng, 100_000);
        let false_positives = |salt| {
            let mut filter = BloomFilter::sized(1270, 0.01, salt).unwrap();
            for h in &members {
                filter.insert(h);
            }
            probes
                .iter()
                .filter(|h| filter.contains(h))
                .copied()
                .collect::<Vec<_>>()
        };
        let first = false_positives(1);
        let second = false_positives(2);
        let both = first.iter().filter(|h| second.contains(h)).count();
        // Independent rounds: missing a message twice is about as rare as p².
        assert!(both * 20 < first.len().max(1), "{both} of {}", first.len());
    }

    #[test]
    fn packet_hashes_are_stable() {
        assert_eq!(PacketHash::of(b"packet"), PacketHash::of(b"packet"));
        assert_ne!(PacketHash::of(b"packet"), PacketHash::of(b"packet2"));
    }
}
