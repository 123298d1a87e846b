//! The hashes of K2, in one place.
//!
//! * [`key_hash`] routes a key to its worker (timely's exchange takes it
//!   modulo the number of workers, see [`worker_of`]) and re-routes
//!   checkpointed state on restore. Its algorithm is fixed here (FNV-1a over
//!   the bytes `Hash` feeds, then a murmur3 finalizer so that the low bits,
//!   which pick the worker, depend on every byte): processes built apart
//!   agree on it, and a Rust release cannot change it.
//! * [`fnv1a`] makes deterministic ids (`k2.commit-id`, alert ids).
//! * [`fingerprint`] is the 128-bit identity of an id dedup remembers
//!   without keeping the id (xxh3).

use std::hash::{Hash, Hasher};

/// FNV-1a 64 of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    h.0
}

/// The routing hash of `key`; see the module docs.
pub fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = Fnv::default();
    key.hash(&mut hasher);
    mix(hasher.0)
}

/// The worker, out of `peers`, that timely's exchange sends hash `hash` to
/// (the hash modulo `peers`; a mask when `peers` is a power of two, which is
/// the same).
pub fn worker_of(hash: u64, peers: usize) -> usize {
    (hash % peers.max(1) as u64) as usize
}

/// The worker, out of `peers`, that owns `key`.
pub fn key_worker<K: Hash + ?Sized>(key: &K, peers: usize) -> usize {
    worker_of(key_hash(key), peers)
}

/// A 128-bit fingerprint of `bytes`: collisions among a billion ids have a
/// probability of about 10^-21.
pub fn fingerprint(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// murmur3's 64-bit finalizer.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        mix(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_fixed_across_builds() {
        // Checkpointed state is re-routed by these: they must never change.
        assert_eq!(key_hash("BTC/USDT"), key_hash(&"BTC/USDT".to_string()));
        assert_eq!(key_hash("BTC/USDT"), 12_583_068_498_830_971_201);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(worker_of(13, 4), 1);
        assert_eq!(worker_of(14, 3), 2);
    }
}
