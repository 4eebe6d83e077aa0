//! The hasher for the per-call path's maps whose stored keys no caller
//! chooses (the method catalogue's paths, verified tokens).
//!
//! std's SipHash resists keys chosen to collide, which costs ~4
//! instructions per byte plus its setup and finish on every lookup. A map
//! pays for collisions among its *stored* keys; when callers can only
//! look up, never insert, that resistance buys nothing.

use std::hash::Hasher;

/// The 64-bit FNV-1a hash.
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
