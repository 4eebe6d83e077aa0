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
//! refused token is never stored, so it cannot push entries out or be
//! compared against them: lookups hash with a per-process random key, so
//! a caller cannot steer its token onto a stored one's slot.
//!
//! Bounded by two generations of at most [`GENERATION`] entries: when the
//! current one is full it becomes the previous one and the oldest is
//! dropped; a hit in the previous generation moves the entry forward.

use std::{
    collections::HashMap,
    mem,
    sync::{Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::domain::Actor;

/// Entries per generation.
pub const GENERATION: usize = 1024;

#[derive(Clone)]
struct Entry {
    actor: Actor,
    /// Seconds since the epoch after which the token is expired (its
    /// `exp` plus the leeway).
    valid_until: u64,
    /// The key set the token was verified with.
    keys: u64,
}

#[derive(Default)]
struct Generations {
    current: HashMap<Box<str>, Entry>,
    previous: HashMap<Box<str>, Entry>,
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
}
