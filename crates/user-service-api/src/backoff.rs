//! Retry delays: exponential, capped, optionally jittered. The one policy
//! behind every retry loop of the server (database reconnects, schema
//! retries) and of the client (read retries, watch reconnects), here
//! because both depend on this crate and the client must not depend on the
//! server.

use std::time::Duration;

/// Delays that double from `first` up to `max`, each scaled by a random
/// factor in `[1 - jitter, 1 + jitter]`, so that processes that failed
/// together (replicas that lost the database at once) do not retry in
/// lockstep.
///
/// ```
/// # use std::time::Duration;
/// # use user_service_api::backoff::Backoff;
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(200));
/// backoff.reset();
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    jitter: f64,
    current: Duration,
}

impl Backoff {
    /// Starts at `first`, without jitter (see [`Backoff::with_jitter`]).
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            jitter: 0.0,
            current: first,
        }
    }

    /// Scales each delay by a random factor in `[1 - spread, 1 + spread]`
    /// (0.5: ±50%). `spread` is clamped to `[0, 1]`, so a delay is never
    /// negative and at most doubled.
    pub fn with_jitter(mut self, spread: f64) -> Self {
        // NaN would poison every delay; treat it as "no jitter".
        self.jitter = if spread.is_nan() {
            0.0
        } else {
            spread.clamp(0.0, 1.0)
        };
        self
    }

    /// The delay before the next attempt; the one after it is twice as
    /// long (before jitter), up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        // A thread-local generator: jitter needs spread, not secrecy.
        let unit = if self.jitter == 0.0 {
            0.5
        } else {
            fastrand::f64()
        };
        self.next_delay_with(unit)
    }

    /// [`Backoff::next_delay`] with the random draw given: `unit` in
    /// `[0, 1]` (clamped) picks the factor, 0 the smallest and 1 the
    /// largest. For callers with their own random source, and for tests.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let base = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        jitter(base, self.jitter, unit)
    }

    /// Back to `first`, after a success.
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

/// `base` scaled by `1 - spread + 2 * spread * unit`: for `unit` uniform in
/// `[0, 1]`, a factor uniform in `[1 - spread, 1 + spread]`. `spread` and
/// `unit` are clamped to `[0, 1]`; a product too large for a `Duration`
/// saturates instead of panicking.
pub fn jitter(base: Duration, spread: f64, unit: f64) -> Duration {
    let spread = if spread.is_nan() {
        0.0
    } else {
        spread.clamp(0.0, 1.0)
    };
    if spread == 0.0 {
        // Exactly `base`: no round trip through floating point.
        return base;
    }
    let unit = if unit.is_nan() {
        0.5
    } else {
        unit.clamp(0.0, 1.0)
    };
    let factor = 1.0 - spread + 2.0 * spread * unit;
    // The factor is finite and in [0, 2], so the only failure is overflow.
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_on_reset() {
        let mut backoff = Backoff::new(100 * MS, 2000 * MS);
        let delays: Vec<_> = (0..7).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 2000, 2000].map(|ms| ms * MS)
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), 100 * MS);
    }

    #[test]
    fn the_random_draw_picks_a_factor_within_the_spread() {
        let mut backoff = Backoff::new(100 * MS, 2000 * MS).with_jitter(0.5);
        assert_eq!(backoff.next_delay_with(0.0), 50 * MS);
        assert_eq!(backoff.next_delay_with(1.0), 300 * MS);
        assert_eq!(backoff.next_delay_with(0.5), 400 * MS);
        // Out-of-range draws are clamped, not extrapolated.
        assert_eq!(backoff.next_delay_with(-3.0), 400 * MS);
        assert_eq!(backoff.next_delay_with(7.0), 2400 * MS);
    }

    #[test]
    fn random_delays_stay_within_their_bounds() {
        let mut backoff = Backoff::new(100 * MS, 400 * MS).with_jitter(0.5);
        for attempt in 0..1000 {
            let base = [100, 200, 400][attempt.min(2)] * MS;
            let delay = backoff.next_delay();
            assert!(
                delay >= base / 2 && delay <= base * 3 / 2,
                "attempt {attempt}: {delay:?} outside ±50% of {base:?}"
            );
        }
    }

    #[test]
    fn spreads_are_clamped_and_extremes_do_not_panic() {
        assert_eq!(jitter(100 * MS, 5.0, 1.0), 200 * MS);
        assert_eq!(jitter(100 * MS, -1.0, 1.0), 100 * MS);
        assert_eq!(jitter(100 * MS, f64::NAN, 1.0), 100 * MS);
        assert_eq!(jitter(100 * MS, 0.5, f64::NAN), 100 * MS);
        assert_eq!(jitter(Duration::MAX, 0.5, 1.0), Duration::MAX);
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX).with_jitter(1.0);
        assert_eq!(huge.next_delay_with(1.0), Duration::MAX);
        assert_eq!(huge.next_delay_with(1.0), Duration::MAX);
    }
}
