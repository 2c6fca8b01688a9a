//! A circuit breaker per target: after `failures` consecutive retryable failures the target is
//! skipped for `cooldown`; then one request probes it (half-open): success closes the circuit,
//! failure opens it for another cooldown. Bad requests do not count: they are the caller's.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub failures: u32,
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> BreakerPolicy {
        BreakerPolicy {
            failures: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
}

/// What the breaker says about sending a request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Closed,
    /// The one request allowed through to test a target that was failing.
    Probe,
    /// Skip this target; it may be tried again after this long.
    Open(Duration),
}

#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            policy,
            state: Mutex::new(State::default()),
        }
    }

    pub fn admit(&self) -> Admission {
        let Ok(mut state) = self.state.lock() else {
            return Admission::Closed;
        };
        let Some(opened_at) = state.opened_at else {
            return Admission::Closed;
        };
        let elapsed = opened_at.elapsed();
        if elapsed < self.policy.cooldown {
            return Admission::Open(self.policy.cooldown - elapsed);
        }
        if state.probing {
            // A probe is in flight: others wait for its verdict.
            return Admission::Open(Duration::from_secs(1));
        }
        state.probing = true;
        Admission::Probe
    }

    pub fn succeeded(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = State::default();
        }
    }

    pub fn failed(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            if state.probing || state.consecutive_failures >= self.policy.failures {
                state.opened_at = Some(Instant::now());
                state.probing = false;
            }
        }
    }

    /// The caller gave up on a probe without a verdict (a bad request): let another probe.
    pub fn released(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.probing = false;
        }
    }

    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|state| state.opened_at.is_some())
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_cooldown() {
        let breaker = Breaker::new(BreakerPolicy {
            failures: 2,
            cooldown: Duration::from_millis(30),
        });
        breaker.failed();
        assert_eq!(breaker.admit(), Admission::Closed);
        breaker.failed();
        assert!(matches!(breaker.admit(), Admission::Open(_)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.admit(), Admission::Probe);
        assert!(
            matches!(breaker.admit(), Admission::Open(_)),
            "one probe at a time"
        );
        breaker.failed();
        assert!(
            matches!(breaker.admit(), Admission::Open(_)),
            "a failed probe reopens"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(breaker.admit(), Admission::Probe);
        breaker.succeeded();
        assert_eq!(breaker.admit(), Admission::Closed);
        assert!(!breaker.is_open());
    }
}
