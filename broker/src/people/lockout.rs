//! Lockout after repeated failures (seed 002 ch. 2 §7(2)④ ログイン試行回数の制限):
//! a wrong password, current password or TOTP code counts; after
//! `max_failures` in a row the account is locked for `lock_for`. A full
//! login (password and code) resets the count. Pure: the times come in.

use std::time::Duration;

use time::OffsetDateTime;

/// How many failures lock an account, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    /// Consecutive failures that lock the account (at least 1).
    pub max_failures: u32,
    /// How long a lock lasts.
    pub lock_for: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        LockPolicy {
            max_failures: 5,
            lock_for: Duration::from_secs(15 * 60),
        }
    }
}

/// The stored failure state of one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockState {
    /// Consecutive failures since the last full login or lock.
    pub failures: u32,
    /// Locked until this instant, if it was ever locked and not reset since.
    pub locked_until: Option<OffsetDateTime>,
}

/// The instant the account stays locked until, or `None` when it is usable at `now`.
pub fn locked_at(state: &LockState, now: OffsetDateTime) -> Option<OffsetDateTime> {
    state.locked_until.filter(|until| *until > now)
}

/// The state after one more failure at `now`. Reaching the limit locks the
/// account and starts the count again for after the lock. An expired lock
/// counts from zero. A failure while locked changes nothing (attempts are
/// refused before they are checked, so a lock cannot be extended by an
/// attacker hammering it).
pub fn after_failure(state: &LockState, now: OffsetDateTime, policy: &LockPolicy) -> LockState {
    if locked_at(state, now).is_some() {
        return *state;
    }
    let failures = state.failures.saturating_add(1);
    if failures >= policy.max_failures.max(1) {
        LockState {
            failures: 0,
            locked_until: Some(now + policy.lock_for),
        }
    } else {
        LockState {
            failures,
            locked_until: None,
        }
    }
}

/// The state after a full login.
pub fn after_success() -> LockState {
    LockState::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn five_failures_lock_for_fifteen_minutes() {
        let policy = LockPolicy::default();
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        let mut state = LockState::default();
        for i in 1..=4 {
            state = after_failure(&state, t0, &policy);
            assert_eq!(state.failures, i);
            assert_eq!(locked_at(&state, t0), None, "not locked after {i}");
        }
        state = after_failure(&state, t0, &policy);
        let until = datetime!(2026-04-01 09:15:00 UTC);
        assert_eq!(locked_at(&state, t0), Some(until));
        assert_eq!(
            locked_at(&state, datetime!(2026-04-01 09:14:59 UTC)),
            Some(until)
        );
        // Failures while locked do not extend the lock.
        let hammered = after_failure(&state, datetime!(2026-04-01 09:10:00 UTC), &policy);
        assert_eq!(hammered, state);
        // It expires on its own.
        assert_eq!(locked_at(&state, until), None);
        // After expiry the count starts again: one failure does not lock.
        let after = after_failure(&state, datetime!(2026-04-01 09:16:00 UTC), &policy);
        assert_eq!(after.failures, 1);
        assert_eq!(locked_at(&after, datetime!(2026-04-01 09:16:00 UTC)), None);
    }

    #[test]
    fn a_success_resets_the_count() {
        let policy = LockPolicy::default();
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        let mut state = LockState::default();
        for _ in 0..4 {
            state = after_failure(&state, t0, &policy);
        }
        state = after_success();
        for _ in 0..4 {
            state = after_failure(&state, t0, &policy);
        }
        assert_eq!(locked_at(&state, t0), None, "4 + 4 with a success between");
        state = after_failure(&state, t0, &policy);
        assert!(locked_at(&state, t0).is_some());
    }

    #[test]
    fn the_policy_is_configurable() {
        let policy = LockPolicy {
            max_failures: 2,
            lock_for: Duration::from_secs(2),
        };
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        let state = after_failure(
            &after_failure(&LockState::default(), t0, &policy),
            t0,
            &policy,
        );
        assert_eq!(
            locked_at(&state, t0),
            Some(datetime!(2026-04-01 09:00:02 UTC))
        );
    }
}
