//! Signature checks in batches, fast for the members who sign most.
//!
//! An ECDSA check computes R = u1·G + u2·Q with u1 = e/s and u2 = r/s, and accepts when the x
//! coordinate of R, reduced modulo the group order n, equals r. libsecp256k1 does this for any key
//! Q in about 41 µs on this project's 2-core machine (measured 2026-11-21; an earlier day gave
//! 25 µs): most of it is the 128 point doublings that a key without precomputation needs.
//!
//! Messages come in runs from few authors (an active member, a catch-up from one peer), so a
//! [`Verifier`] keeps, for each key that has signed at least `hot_after` verified messages, a
//! fixed-base comb: 32 windows of 8 bits, 255 multiples each (8,160 affine points, about 700 KiB).
//! u2·Q is then at most 32 point additions and no doubling, and u1·G the same with the generator's
//! comb, built once. A batch shares one scalar inversion (the s⁻¹ of every check) and one field
//! inversion (every R to affine x), by Montgomery's trick. A check costs about 25 µs that way.
//! Other keys are checked one by one by libsecp256k1.
//!
//! Both paths accept exactly the same signatures: r and s in [1, n), s at most n/2 (low-S), R not
//! the point at infinity, x(R) mod n = r. The tests hold the comb path to libsecp256k1 on valid,
//! altered, high-S, zero, out-of-range and point-at-infinity signatures.
//!
//! Bounded: at most `max_tables` combs per verifier (the least used one gives way to a key that
//! has signed more since), and at most `max_counted` keys counted towards `hot_after`. Building a
//! comb costs about as much as 150 checks, so a key must sign `hot_after` valid messages first.

use std::collections::HashMap;
use std::sync::OnceLock;

use k256::elliptic_curve::group::Group;
use k256::elliptic_curve::ops::Reduce;
use k256::elliptic_curve::point::AffineCoordinates;
use k256::elliptic_curve::scalar::IsHigh;
use k256::elliptic_curve::{BatchNormalize, PrimeField};
use k256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar};

use crate::identity::{PUBLIC_KEY_LEN, PublicKey, SIGNATURE_LEN, SignatureError};

/// When a key earns a comb, and how many combs a verifier keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Valid signatures a key must have made (as seen by this verifier) before it gets a comb.
    pub hot_after: u32,
    /// Combs kept (about 700 KiB each); 0 checks everything with libsecp256k1.
    pub max_tables: usize,
    /// Keys counted towards `hot_after`; when full, the counts start over.
    pub max_counted: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hot_after: 256,
            max_tables: 4,
            max_counted: 4_096,
        }
    }
}

/// One signature to check: `signature` by `key` over the SHA-256 `digest`.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The signer.
    pub key: &'a PublicKey,
    /// SHA-256 of the signed bytes.
    pub digest: &'a [u8; 32],
    /// 64 bytes, r ‖ s (other lengths fail with [`SignatureError::Length`]).
    pub signature: &'a [u8],
}

/// Checks signatures in batches, with combs for the keys that sign most (see the module docs).
#[derive(Debug)]
pub struct Verifier {
    config: Config,
    /// Valid signatures per key without a comb.
    counts: HashMap<[u8; PUBLIC_KEY_LEN], u32>,
    tables: HashMap<[u8; PUBLIC_KEY_LEN], Table>,
}

#[derive(Debug)]
struct Table {
    comb: Comb,
    /// Checks through this comb since it was built, halved whenever a comb gives way.
    uses: u64,
}

impl Verifier {
    /// A verifier with no comb yet.
    pub fn new(config: Config) -> Self {
        Verifier {
            config,
            counts: HashMap::new(),
            tables: HashMap::new(),
        }
    }

    /// Combs held now.
    pub fn tables(&self) -> usize {
        self.tables.len()
    }

    /// Checks every signature; the results are in the order of `checks`. The error of a failed
    /// check is what [`PublicKey::verify_digest`] would say.
    pub fn check(&mut self, checks: &[Check<'_>]) -> Vec<Result<(), SignatureError>> {
        let mut results = Vec::with_capacity(checks.len());
        // Checks for keys with a comb: (index, r, s).
        let mut batch: Vec<(usize, Scalar, Scalar)> = Vec::new();
        // Keys without a comb that signed validly: counted once the batch is done, so that no
        // comb the batch relies on gives way in the middle of it.
        let mut valid = Vec::new();
        for (i, check) in checks.iter().enumerate() {
            let key = check.key.as_bytes();
            if let Some(table) = self.tables.get_mut(key) {
                table.uses += 1;
                match scalars(check.signature) {
                    Ok((r, s)) => {
                        batch.push((i, r, s));
                        results.push(Ok(()));
                    }
                    Err(error) => results.push(Err(error)),
                }
                continue;
            }
            let result = check.key.verify_digest(check.digest, check.signature);
            if result.is_ok() {
                valid.push(check.key);
            }
            results.push(result);
        }
        if !batch.is_empty() {
            self.combine(checks, &batch, &mut results);
        }
        for key in valid {
            self.count(key);
        }
        results
    }

    /// Counts one valid signature of `key` and gives it a comb when it has earned one.
    fn count(&mut self, key: &PublicKey) {
        if self.config.max_tables == 0 {
            return;
        }
        if self.counts.len() >= self.config.max_counted && !self.counts.contains_key(key.as_bytes())
        {
            self.counts.clear();
        }
        let count = self.counts.entry(*key.as_bytes()).or_insert(0);
        *count += 1;
        let count = *count;
        if count < self.config.hot_after {
            return;
        }
        if self.tables.len() >= self.config.max_tables {
            // The least used comb gives way only to a key that has signed more since.
            let Some((&weakest, table)) = self.tables.iter().min_by_key(|(_, t)| t.uses) else {
                return;
            };
            if table.uses >= u64::from(count) {
                return;
            }
            self.tables.remove(&weakest);
            for table in self.tables.values_mut() {
                table.uses /= 2;
            }
        }
        let Some(comb) = Comb::of_key(key) else {
            return;
        };
        self.counts.remove(key.as_bytes());
        // Credited with what earned it, so a newer key must have signed more to replace it.
        let uses = u64::from(count);
        self.tables.insert(*key.as_bytes(), Table { comb, uses });
    }

    /// Finishes the checks of keys with a comb: one scalar inversion and one field inversion
    /// for all of them.
    fn combine(
        &self,
        checks: &[Check<'_>],
        batch: &[(usize, Scalar, Scalar)],
        results: &mut [Result<(), SignatureError>],
    ) {
        let inverses = invert_all(batch.iter().map(|&(_, _, s)| s).collect());
        let generator = generator();
        let mut points = Vec::with_capacity(batch.len());
        for (&(i, r, _), w) in batch.iter().zip(&inverses) {
            let check = &checks[i];
            let e = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*check.digest));
            let mut point = ProjectivePoint::IDENTITY;
            generator.add_multiple(&mut point, &(e * w));
            if let Some(table) = self.tables.get(check.key.as_bytes()) {
                table.comb.add_multiple(&mut point, &(r * w));
            }
            if bool::from(point.is_identity()) {
                results[i] = Err(SignatureError::Invalid);
                // Any point but infinity, so the batch inversion below stays defined.
                point = ProjectivePoint::GENERATOR;
            }
            points.push(point);
        }
        let affine =
            <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize_vartime(
                &points,
            );
        for (&(i, r, _), point) in batch.iter().zip(&affine) {
            if <Scalar as Reduce<FieldBytes>>::reduce(&point.x()) != r {
                results[i] = Err(SignatureError::Invalid);
            }
        }
    }
}

/// r and s of a 64-byte signature: both in [1, n) and s low, as libsecp256k1 demands.
fn scalars(signature: &[u8]) -> Result<(Scalar, Scalar), SignatureError> {
    if signature.len() != SIGNATURE_LEN {
        return Err(SignatureError::Length(signature.len()));
    }
    let parse = |bytes: &[u8]| {
        Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(
            <[u8; 32]>::try_from(bytes).unwrap_or([0xff; 32]),
        )))
    };
    let (Some(r), Some(s)) = (parse(&signature[..32]), parse(&signature[32..])) else {
        return Err(SignatureError::Malformed);
    };
    if bool::from(r.is_zero()) || bool::from(s.is_zero()) || bool::from(s.is_high()) {
        return Err(SignatureError::Invalid);
    }
    Ok((r, s))
}

/// The inverses of non-zero scalars, with one inversion (Montgomery's trick).
fn invert_all(values: Vec<Scalar>) -> Vec<Scalar> {
    let mut prefix = Vec::with_capacity(values.len());
    let mut product = Scalar::ONE;
    for value in &values {
        prefix.push(product);
        product *= value;
    }
    // Non-zero factors modulo a prime: the product is invertible.
    let mut inverse = Option::<Scalar>::from(product.invert_vartime()).unwrap_or(Scalar::ZERO);
    let mut inverses = vec![Scalar::ZERO; values.len()];
    for i in (0..values.len()).rev() {
        inverses[i] = inverse * prefix[i];
        inverse *= values[i];
    }
    inverses
}

/// The generator's comb, built on first use.
fn generator() -> &'static Comb {
    static GENERATOR: OnceLock<Comb> = OnceLock::new();
    GENERATOR.get_or_init(|| Comb::new(ProjectivePoint::GENERATOR))
}

/// Multiples of one point: `table[i * 255 + j - 1] = j · 2^(8i) · P` for windows i in 0..32 and
/// j in 1..=255. None of them is the point at infinity: every factor is below n.
struct Comb {
    table: Vec<AffinePoint>,
}

impl std::fmt::Debug for Comb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Comb({} points)", self.table.len())
    }
}

const WINDOWS: usize = 32;
const MULTIPLES: usize = 255;

impl Comb {
    fn of_key(key: &PublicKey) -> Option<Self> {
        let point = k256::PublicKey::from_sec1_bytes(key.as_bytes()).ok()?;
        Some(Comb::new(point.to_projective()))
    }

    fn new(point: ProjectivePoint) -> Self {
        let mut multiples = Vec::with_capacity(WINDOWS * MULTIPLES);
        let mut base = point;
        for _ in 0..WINDOWS {
            let mut multiple = base;
            for _ in 0..MULTIPLES {
                multiples.push(multiple);
                multiple += base;
            }
            // 256 · base: the next window's base.
            base = multiple;
        }
        let table = <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize_vartime(
            &multiples,
        );
        Comb { table }
    }

    /// Adds k · P to `sum`.
    fn add_multiple(&self, sum: &mut ProjectivePoint, k: &Scalar) {
        let bytes = k.to_bytes();
        for (window, &byte) in bytes.iter().rev().enumerate() {
            if byte != 0 {
                *sum += &self.table[window * MULTIPLES + usize::from(byte) - 1];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{KeyPair, digest};

    fn key(n: u8) -> KeyPair {
        KeyPair::from_secret(&[n; 32]).unwrap()
    }

    /// A verifier that has a comb for `keys` already.
    fn hot(keys: &[&KeyPair]) -> Verifier {
        let mut verifier = Verifier::new(Config {
            hot_after: 1,
            max_tables: keys.len(),
            max_counted: 16,
        });
        for key in keys {
            let d = digest(b"warm up");
            let signature = key.sign_digest(&d);
            let result = verifier.check(&[Check {
                key: key.public(),
                digest: &d,
                signature: &signature,
            }]);
            assert_eq!(result, vec![Ok(())]);
        }
        assert_eq!(verifier.tables(), keys.len());
        verifier
    }

    /// What libsecp256k1 says, against what the comb path says, for every case.
    fn agree(verifier: &mut Verifier, cases: &[(PublicKey, [u8; 32], Vec<u8>)]) -> usize {
        let checks: Vec<Check<'_>> = cases
            .iter()
            .map(|(key, digest, signature)| Check {
                key,
                digest,
                signature,
            })
            .collect();
        let batched = verifier.check(&checks);
        let mut valid = 0;
        for ((key, digest, signature), got) in cases.iter().zip(batched) {
            let expected = key.verify_digest(digest, signature);
            assert_eq!(got, expected, "signature {}", hex::encode(signature));
            valid += usize::from(got.is_ok());
        }
        valid
    }

    #[test]
    fn the_comb_path_accepts_exactly_what_libsecp256k1_accepts() {
        let (a, b, stranger) = (key(1), key(2), key(3));
        let mut verifier = hot(&[&a, &b]);
        let mut cases = Vec::new();
        for i in 0u32..300 {
            let signer = if i % 2 == 0 { &a } else { &b };
            let d = digest(&i.to_be_bytes());
            let signature = signer.sign_digest(&d).to_vec();
            cases.push((signer.public().clone(), d, signature.clone()));
            // Altered: one bit of r or s, or of the digest; another key's claim.
            let mut altered = signature.clone();
            altered[(i as usize * 7) % 64] ^= 1 << (i % 8);
            cases.push((signer.public().clone(), d, altered));
            let mut other = d;
            other[(i as usize) % 32] ^= 0x80;
            cases.push((signer.public().clone(), other, signature.clone()));
            let wrong = if i % 2 == 0 { &b } else { &a };
            cases.push((wrong.public().clone(), d, signature.clone()));
            // A key without a comb in the same batch.
            let d2 = digest(&(i + 1000).to_be_bytes());
            cases.push((
                stranger.public().clone(),
                d2,
                stranger.sign_digest(&d2).to_vec(),
            ));
        }
        let valid = agree(&mut verifier, &cases);
        assert_eq!(valid, 600, "every genuine signature, and nothing else");
    }

    #[test]
    fn high_zero_and_out_of_range_values_are_refused_as_libsecp256k1_refuses_them() {
        let a = key(4);
        let mut verifier = hot(&[&a]);
        let d = digest(b"edge");
        let signature = a.sign_digest(&d);
        let (r, s) = signature.split_at(32);
        let s_scalar = Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(
            <[u8; 32]>::try_from(s).unwrap(),
        )))
        .unwrap();
        let high = [r, &(-s_scalar).to_bytes()[..]].concat();
        let order = hex::decode("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")
            .unwrap();
        let cases = vec![
            (a.public().clone(), d, signature.to_vec()),
            (a.public().clone(), d, high),
            (a.public().clone(), d, [&[0u8; 32][..], s].concat()),
            (a.public().clone(), d, [r, &[0u8; 32][..]].concat()),
            (a.public().clone(), d, [&order[..], s].concat()),
            (a.public().clone(), d, [r, &order[..]].concat()),
            (a.public().clone(), d, [&[0xffu8; 32][..], s].concat()),
            (a.public().clone(), d, signature[..63].to_vec()),
            (a.public().clone(), d, Vec::new()),
        ];
        assert_eq!(agree(&mut verifier, &cases), 1);
    }

    #[test]
    fn a_signature_whose_r_is_the_point_at_infinity_is_refused() {
        // With Q = q·G: u1·G + u2·Q = (e + r·q)/s · G, infinity when e = -r·q (mod n).
        let secret = [6u8; 32];
        let a = KeyPair::from_secret(&secret).unwrap();
        let mut verifier = hot(&[&a]);
        let q = Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(secret))).unwrap();
        let r = Scalar::from(12_345u64);
        let e: [u8; 32] = (-(r * q)).to_bytes().into();
        let s = Scalar::from(777u64);
        let signature = [&r.to_bytes()[..], &s.to_bytes()[..]].concat();
        let w = Option::<Scalar>::from(s.invert_vartime()).unwrap();
        let e_scalar = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(e));
        let sum =
            ProjectivePoint::GENERATOR * (e_scalar * w) + ProjectivePoint::GENERATOR * q * (r * w);
        assert!(bool::from(sum.is_identity()), "the case is what it claims");
        let cases = vec![
            (a.public().clone(), e, signature),
            (a.public().clone(), d_signed(&a).0, d_signed(&a).1),
        ];
        assert_eq!(agree(&mut verifier, &cases), 1, "the good one only");
    }

    fn d_signed(key: &KeyPair) -> ([u8; 32], Vec<u8>) {
        let d = digest(b"good");
        (d, key.sign_digest(&d).to_vec())
    }

    #[test]
    fn a_comb_giving_way_within_a_batch_still_checks_that_batch() {
        // Key A has the only comb; in one batch, key C earns one and takes A's place.
        let (a, c) = (key(20), key(21));
        let mut verifier = Verifier::new(Config {
            hot_after: 2,
            max_tables: 1,
            max_counted: 8,
        });
        let sign = |k: &KeyPair, i: u32| {
            let d = digest(&i.to_be_bytes());
            (k.public().clone(), d, k.sign_digest(&d).to_vec())
        };
        let warm = vec![sign(&a, 0), sign(&a, 1), sign(&a, 2)];
        assert_eq!(agree(&mut verifier, &warm), 3);
        assert!(verifier.tables.contains_key(a.public().as_bytes()));
        // A's comb has served 4 checks by then; C's fifth valid signature outweighs it.
        let mut batch = vec![sign(&a, 3)];
        batch.extend((4..9).map(|i| sign(&c, i)));
        assert_eq!(
            agree(&mut verifier, &batch),
            6,
            "A's check used the comb it started with"
        );
        assert!(verifier.tables.contains_key(c.public().as_bytes()));
        assert!(!verifier.tables.contains_key(a.public().as_bytes()));
    }

    #[test]
    fn a_key_earns_a_comb_after_hot_after_valid_signatures_and_tables_stay_bounded() {
        let mut verifier = Verifier::new(Config {
            hot_after: 3,
            max_tables: 2,
            max_counted: 8,
        });
        let keys: Vec<KeyPair> = (10..14).map(key).collect();
        let sign = |k: &KeyPair, i: u32| {
            let d = digest(&i.to_be_bytes());
            (d, k.sign_digest(&d).to_vec())
        };
        let run = |verifier: &mut Verifier, k: &KeyPair, times: u32, valid: bool| {
            for i in 0..times {
                let (d, mut signature) = sign(k, i);
                if !valid {
                    signature[40] ^= 1;
                }
                let ok = verifier.check(&[Check {
                    key: k.public(),
                    digest: &d,
                    signature: &signature,
                }]);
                assert_eq!(ok[0].is_ok(), valid);
            }
        };
        run(&mut verifier, &keys[0], 10, false);
        assert_eq!(verifier.tables(), 0, "invalid signatures earn nothing");
        run(&mut verifier, &keys[0], 2, true);
        assert_eq!(verifier.tables(), 0);
        run(&mut verifier, &keys[0], 1, true);
        assert_eq!(verifier.tables(), 1);
        run(&mut verifier, &keys[0], 20, true);
        run(&mut verifier, &keys[1], 3, true);
        assert_eq!(verifier.tables(), 2);
        // Full: a third key needs more signatures than the least used comb has served since.
        run(&mut verifier, &keys[2], 3, true);
        assert!(verifier.tables.contains_key(keys[0].public().as_bytes()));
        assert!(verifier.tables.contains_key(keys[1].public().as_bytes()));
        run(&mut verifier, &keys[2], 5, true);
        assert_eq!(verifier.tables(), 2);
        assert!(verifier.tables.contains_key(keys[2].public().as_bytes()));
        assert!(!verifier.tables.contains_key(keys[1].public().as_bytes()));
        // No comb at all when max_tables is 0.
        let mut plain = Verifier::new(Config {
            max_tables: 0,
            ..Config::default()
        });
        run(&mut plain, &keys[3], 300, true);
        assert_eq!(plain.tables(), 0);
    }
}
