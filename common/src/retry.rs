//! One retry policy for every client: the ClickHouse sink, webhook
//! delivery and the Kafka producers.
//!
//! In the spirit of Vector's `RetryLogic`, it separates two questions:
//! - **what is retried** is the error's to say, through [`Retryable`]
//!   (a network error or a "too many parts" is, a syntax error is not; a
//!   receiver may add a `Retry-After`);
//! - **when, and until when** is the [`RetryPolicy`]'s: exponential
//!   backoff from `first`, doubling up to `max`, with "equal jitter" (each
//!   wait is drawn between half and all of the backoff, so that clients
//!   that failed together do not retry together, yet none retries at
//!   once); never sooner than a `Retry-After`; and a give-up budget
//!   measured from the first attempt.
//!
//! [`RetryPolicy::run`] drives an attempt loop that sleeps between
//! attempts. A caller that keeps its attempts in durable state (webhook
//! deliveries survive restarts) asks the policy for [`RetryPolicy::delay`]
//! and [`RetryPolicy::gives_up`] instead.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// A receiver may ask for a long pause, but a `Retry-After` past this is
/// taken as this: an hour is longer than any outage a retry should wait
/// out, and a hostile or broken header cannot park a delivery for years.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// What a failed attempt says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Final: repeating the attempt cannot help.
    Fail,
    /// Worth repeating, after the policy's backoff, and at least after
    /// the given pause when the other side named one (`Retry-After`).
    Retry(Option<Duration>),
}

/// Implemented by the errors of each client: whether an attempt that
/// failed this way may succeed when repeated.
pub trait Retryable {
    fn verdict(&self) -> Verdict;
}

/// Backoff and give-up budget; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The backoff after the first failure.
    pub first: Duration,
    /// The backoff doubles after each failure up to this.
    pub max: Duration,
    /// A failure this long after the first attempt is given up.
    pub give_up_after: Duration,
}

/// How [`RetryPolicy::run`] ended without success.
#[derive(Debug, thiserror::Error)]
pub enum GaveUp<E> {
    /// The error was final ([`Verdict::Fail`]).
    #[error("{0}")]
    Final(E),
    /// Still failing when the budget was spent; the last error.
    #[error("still failing after {after:?}: {last}")]
    Exhausted { after: Duration, last: E },
}

impl<E> GaveUp<E> {
    /// The last error, however it ended.
    pub fn into_inner(self) -> E {
        match self {
            GaveUp::Final(e) | GaveUp::Exhausted { last: e, .. } => e,
        }
    }
}

impl RetryPolicy {
    /// The backoff after `failures` failed attempts (1 after the first),
    /// jittered, and never shorter than `retry_after` (itself capped at
    /// [`MAX_RETRY_AFTER`]).
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let backoff = self.first.saturating_mul(1u32 << doublings).min(self.max);
        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
        retry_after.map_or(jittered, |a| jittered.max(a.min(MAX_RETRY_AFTER)))
    }

    /// Whether a failure `elapsed` after the first attempt is given up.
    pub fn gives_up(&self, elapsed: Duration) -> bool {
        elapsed >= self.give_up_after
    }

    /// Run `op` (given the attempt number, from 0) until it succeeds, its
    /// error is final, or a retryable failure comes after the budget is
    /// spent. `on_retry` hears each failure that will be retried, with
    /// the attempt number and the wait before the next, for logs and
    /// metrics.
    pub async fn run<T, E, F, Fut>(
        &self,
        mut op: F,
        mut on_retry: impl FnMut(&E, u32, Duration),
    ) -> Result<T, GaveUp<E>>
    where
        E: Retryable,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            let error = match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Verdict::Retry(retry_after) = error.verdict() else {
                return Err(GaveUp::Final(error));
            };
            let elapsed = started.elapsed();
            if self.gives_up(elapsed) {
                return Err(GaveUp::Exhausted {
                    after: elapsed,
                    last: error,
                });
            }
            let wait = self.delay(attempt + 1, retry_after);
            on_retry(&error, attempt, wait);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const POLICY: RetryPolicy = RetryPolicy {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
        give_up_after: Duration::from_secs(60),
    };

    // Real time, kept short: the loop tests wait out whole budgets.
    const QUICK: RetryPolicy = RetryPolicy {
        first: Duration::from_millis(1),
        max: Duration::from_millis(4),
        give_up_after: Duration::from_millis(40),
    };

    #[derive(Debug, PartialEq)]
    struct Fails(Verdict);

    impl Retryable for Fails {
        fn verdict(&self) -> Verdict {
            self.0
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_between_half_and_all() {
        for _ in 0..200 {
            for (failures, full) in [(1, 100), (2, 200), (3, 400), (6, 3_200), (7, 5_000)] {
                let d = POLICY.delay(failures, None);
                let full = Duration::from_millis(full);
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
            }
            // Far past the cap, and with no overflow.
            let d = POLICY.delay(u32::MAX, None);
            assert!(d >= Duration::from_millis(2_500) && d <= Duration::from_secs(5));
        }
        // A policy whose first backoff exceeds its cap waits the cap.
        let odd = RetryPolicy {
            first: Duration::from_secs(10),
            ..POLICY
        };
        assert!(odd.delay(1, None) <= Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_a_floor_and_is_capped() {
        let d = POLICY.delay(1, Some(Duration::from_secs(30)));
        assert_eq!(d, Duration::from_secs(30));
        let d = POLICY.delay(1, Some(Duration::from_secs(u64::MAX / 2)));
        assert_eq!(d, MAX_RETRY_AFTER);
        // A short Retry-After does not shorten the backoff.
        let d = POLICY.delay(7, Some(Duration::from_millis(1)));
        assert!(d >= Duration::from_millis(2_500));
    }

    #[test]
    fn the_budget_is_measured_from_the_first_attempt() {
        assert!(!POLICY.gives_up(Duration::from_secs(59)));
        assert!(POLICY.gives_up(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn run_retries_what_is_retryable_until_it_succeeds() {
        let calls = Cell::new(0);
        let retried = Cell::new(0);
        let got = QUICK
            .run(
                |attempt| {
                    calls.set(calls.get() + 1);
                    async move {
                        if attempt < 3 {
                            Err(Fails(Verdict::Retry(None)))
                        } else {
                            Ok(attempt)
                        }
                    }
                },
                |_, _, _| retried.set(retried.get() + 1),
            )
            .await
            .unwrap();
        assert_eq!((got, calls.get(), retried.get()), (3, 4, 3));
    }

    #[tokio::test]
    async fn run_stops_at_a_final_error_and_when_the_budget_is_spent() {
        let calls = Cell::new(0);
        let err = QUICK
            .run(
                |_| {
                    calls.set(calls.get() + 1);
                    async { Err::<(), _>(Fails(Verdict::Fail)) }
                },
                |_, _, _| {},
            )
            .await
            .unwrap_err();
        assert!(matches!(err, GaveUp::Final(Fails(Verdict::Fail))));
        assert_eq!(calls.get(), 1);

        let started = std::time::Instant::now();
        let err = QUICK
            .run(
                |_| async { Err::<(), _>(Fails(Verdict::Retry(None))) },
                |_, _, _| {},
            )
            .await
            .unwrap_err();
        let GaveUp::Exhausted { after, .. } = err else {
            panic!("{err:?}")
        };
        assert!(after >= QUICK.give_up_after, "{after:?}");
        assert!(started.elapsed() >= QUICK.give_up_after);
    }
}
