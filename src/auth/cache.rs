//! Tokens verified before, so a client that sends the same token on every
//! call (as clients do) pays for decoding and the signature check once,
//! not per call: that check was a third of a call's CPU (BENCHMARKS.md).
//!
//! Only tokens that passed every check are kept, keyed by their exact
//! text, so what a hit returns is what verifying again would return,
//! with two exceptions handled here: time (an entry ends when its token
//! expires, with the same leeway) and keys (an entry belongs to the key
//! set that verified it; a JWKS fetch starts a new set, so a key the
//! provider withdrew stops working within one refresh). A forged or
//! refused token is never stored, so it cannot push entries out. The map
//! hashes a token's end only ([`TailHasher`] says why that is safe).
//!
//! Bounded by two generations of at most [`GENERATION`] entries: when the
//! current one is full it becomes the previous one and the oldest is
//! dropped; a hit in the previous generation moves the entry forward.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    mem,
    sync::{Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{domain::Actor, hash::Fnv1a};

/// Entries per generation.
pub const GENERATION: usize = 1024;

/// How much of a token the map hashes: its end. A JWT ends with its
/// signature (43 characters for HS256, more for RSA and EC), which differs
/// between any two tokens that passed verification, so 16 of its
/// characters (96 bits) spread the kept tokens as well as the whole text
/// would. Hashing the whole ~200-byte token with SipHash cost ~550
/// instructions per call more than this (BENCHMARKS.md item 21).
const HASHED_TAIL: usize = 16;

#[derive(Clone)]
struct Entry {
    actor: Actor,
    /// Seconds since the epoch after which the token is expired (its
    /// `exp` plus the leeway).
    valid_until: u64,
    /// The key set the token was verified with.
    keys: u64,
}

type Map = HashMap<Box<str>, Entry, BuildHasherDefault<TailHasher>>;

#[derive(Default)]
struct Generations {
    current: Map,
    previous: Map,
}

/// FNV-1a ([`crate::hash`]) over the last [`HASHED_TAIL`] bytes of each
/// byte string, whatever the token's length.
///
/// Not keyed, and it need not be: a map's probing cost grows with
/// collisions among the *stored* entries, and only verified tokens are
/// stored, whose ends are signatures no caller chooses. A caller's forged
/// token costs one lookup (a bucket probe and, at worst, one comparison
/// with a kept token), never an entry. Equality is untouched: the lookup
/// compares tokens whole.
#[derive(Default)]
struct TailHasher(Fnv1a);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        let start = bytes.len().saturating_sub(HASHED_TAIL);
        self.0.write(bytes.get(start..).unwrap_or(bytes));
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// See the module docs.
#[derive(Default)]
pub struct TokenCache {
    generations: Mutex<Generations>,
}

impl TokenCache {
    /// The caller of `token`, if it was verified with key set `keys` and
    /// has not expired.
    pub fn get(&self, token: &str, keys: u64) -> Option<Actor> {
        let now = now();
        let mut generations = self.lock();
        let fresh = |entry: &Entry| entry.keys == keys && now <= entry.valid_until;
        if let Some(entry) = generations.current.get(token) {
            return fresh(entry).then(|| entry.actor.clone());
        }
        let (token, entry) = generations.previous.remove_entry(token)?;
        if !fresh(&entry) {
            return None;
        }
        let actor = entry.actor.clone();
        generations.insert(token, entry);
        Some(actor)
    }

    /// Keeps a token that passed every check, until `valid_until`.
    pub fn insert(&self, token: &str, actor: Actor, valid_until: u64, keys: u64) {
        let entry = Entry {
            actor,
            valid_until,
            keys,
        };
        self.lock().insert(token.into(), entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Plain maps: a panic while holding the lock leaves them usable.
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Generations {
    fn insert(&mut self, token: Box<str>, entry: Entry) {
        if self.current.len() >= GENERATION && !self.current.contains_key(&token) {
            self.previous = mem::take(&mut self.current);
        }
        self.current.insert(token, entry);
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(sub: &str) -> Actor {
        Actor::user(sub, &[])
    }

    #[test]
    fn a_kept_token_is_found_until_it_expires_and_only_for_its_key_set() {
        let cache = TokenCache::default();
        cache.insert("a.b.c", actor("alice"), now() + 60, 7);
        assert_eq!(cache.get("a.b.c", 7), Some(actor("alice")));
        assert_eq!(cache.get("a.b.C", 7), None, "another token");
        assert_eq!(cache.get("a.b.c", 8), None, "another key set");
        cache.insert("old", actor("bob"), now() - 1, 7);
        assert_eq!(cache.get("old", 7), None, "expired");
    }

    #[test]
    fn at_most_two_generations_are_kept_and_a_hit_moves_forward() {
        let cache = TokenCache::default();
        let valid = now() + 60;
        cache.insert("first", actor("first"), valid, 0);
        for i in 0..GENERATION {
            cache.insert(&format!("t{i}"), actor("x"), valid, 0);
        }
        // "first" went to the previous generation; a hit brings it back.
        assert_eq!(cache.get("first", 0), Some(actor("first")));
        for i in GENERATION..2 * GENERATION - 1 {
            cache.insert(&format!("t{i}"), actor("x"), valid, 0);
        }
        let generations = cache.lock();
        assert!(generations.current.len() <= GENERATION);
        assert!(generations.previous.len() <= GENERATION);
        assert!(
            generations.current.contains_key("first") || generations.previous.contains_key("first")
        );
        assert!(
            !generations.current.contains_key("t0") && !generations.previous.contains_key("t0")
        );
    }

    #[test]
    fn tokens_with_the_same_end_are_told_apart() {
        let cache = TokenCache::default();
        let tail = "s".repeat(HASHED_TAIL);
        let (a, b) = (format!("a.{tail}"), format!("b.{tail}"));
        cache.insert(&a, actor("alice"), now() + 60, 0);
        assert_eq!(cache.get(&a, 0), Some(actor("alice")));
        assert_eq!(cache.get(&b, 0), None, "same end, another token");
        cache.insert(&b, actor("bob"), now() + 60, 0);
        assert_eq!(cache.get(&a, 0), Some(actor("alice")));
        assert_eq!(cache.get(&b, 0), Some(actor("bob")));
    }

    #[test]
    fn the_hash_depends_on_the_end_only() {
        use std::hash::BuildHasher;
        let state = BuildHasherDefault::<TailHasher>::default();
        let tail = "t".repeat(HASHED_TAIL);
        assert_eq!(
            state.hash_one(format!("one.{tail}").as_str()),
            state.hash_one(format!("two.{tail}").as_str())
        );
        assert_ne!(
            state.hash_one(format!("{tail}.one").as_str()),
            state.hash_one(format!("{tail}.two").as_str())
        );
    }
}
