//! Lockout after repeated failures (seed 002 ch. 2 §7(2)④ ログイン試行回数の制限):
//! a wrong password, current password or TOTP code counts; after
//! `max_failures` in a row, each within `lock_for` of the one before, the
//! account is locked for `lock_for`. A full login (password and code)
//! resets the count. Pure: the times come in.
//!
//! A login as a user id nobody has is counted by the same rule (under a
//! keyed hash of what was typed), so someone without the password gets the
//! same answers whether or not the id exists. That is also why a count
//! lapses `lock_for` after its last failure: the state of an unknown id can
//! then be forgotten at [`forget_at`], so made-up ids cannot fill the
//! database, and a real account behaves the same. A guesser still gets no
//! more than about `max_failures` tries per `lock_for`, waiting or locked.

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
    /// When the last failure was counted.
    pub last_failure: Option<OffsetDateTime>,
}

/// The instant the account stays locked until, or `None` when it is usable at `now`.
pub fn locked_at(state: &LockState, now: OffsetDateTime) -> Option<OffsetDateTime> {
    state.locked_until.filter(|until| *until > now)
}

/// `at` plus `by`, or the last representable instant (a stored time near
/// the end of the calendar never panics a login).
fn later(at: OffsetDateTime, by: Duration) -> OffsetDateTime {
    time::Duration::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by))
        .unwrap_or_else(|| time::PrimitiveDateTime::MAX.assume_utc())
}

/// Whether the failures counted in `state` still count at `now`: a count
/// lapses `lock_for` after its last failure. A count without a time (none
/// is stored that way) is kept rather than forgotten.
fn counts_at(state: &LockState, now: OffsetDateTime, policy: &LockPolicy) -> bool {
    match state.last_failure {
        Some(at) => later(at, policy.lock_for) > now,
        None => true,
    }
}

/// The state after one more failure at `now`. Reaching the limit locks the
/// account and starts the count again for after the lock. An expired lock,
/// or a last failure `lock_for` ago or longer, counts from zero. A failure
/// while locked changes nothing (attempts are refused before they are
/// checked, so a lock cannot be extended by an attacker hammering it).
pub fn after_failure(state: &LockState, now: OffsetDateTime, policy: &LockPolicy) -> LockState {
    if locked_at(state, now).is_some() {
        return *state;
    }
    let before = if counts_at(state, now, policy) {
        state.failures
    } else {
        0
    };
    let failures = before.saturating_add(1);
    if failures >= policy.max_failures.max(1) {
        LockState {
            failures: 0,
            locked_until: Some(later(now, policy.lock_for)),
            last_failure: Some(now),
        }
    } else {
        LockState {
            failures,
            locked_until: None,
            last_failure: Some(now),
        }
    }
}

/// The instant from which `state` answers exactly as no failure at all
/// (its lock has passed and its count lapsed), so a stored copy may be
/// deleted. `None` for a state without a failure time, which waiting never
/// clears (only a full login or a reset does).
pub fn forget_at(state: &LockState, policy: &LockPolicy) -> Option<OffsetDateTime> {
    let lapse = state.last_failure.map(|at| later(at, policy.lock_for))?;
    Some(state.locked_until.map_or(lapse, |until| until.max(lapse)))
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

    #[test]
    fn a_count_lapses_lock_for_after_its_last_failure() {
        let policy = LockPolicy::default();
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        let mut state = LockState::default();
        for _ in 0..4 {
            state = after_failure(&state, t0, &policy);
        }
        // A failure 14:59 after the last one still counts: the fifth locks.
        let close = after_failure(&state, datetime!(2026-04-01 09:14:59 UTC), &policy);
        assert_eq!(
            locked_at(&close, datetime!(2026-04-01 09:14:59 UTC)),
            Some(datetime!(2026-04-01 09:29:59 UTC))
        );
        // One 15 minutes after the last is the first of a new count.
        let later = after_failure(&state, datetime!(2026-04-01 09:15:00 UTC), &policy);
        assert_eq!(later.failures, 1);
        assert_eq!(locked_at(&later, datetime!(2026-04-01 09:15:00 UTC)), None);
        // Failures spaced just under the limit keep adding up.
        let mut spaced = LockState::default();
        let mut at = t0;
        for _ in 0..5 {
            spaced = after_failure(&spaced, at, &policy);
            at += Duration::from_secs(14 * 60);
        }
        assert!(locked_at(&spaced, t0 + Duration::from_secs(4 * 14 * 60)).is_some());
    }

    #[test]
    fn a_state_is_forgotten_once_its_count_lapsed_and_lock_passed() {
        let policy = LockPolicy::default();
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        assert_eq!(forget_at(&LockState::default(), &policy), None);
        let once = after_failure(&LockState::default(), t0, &policy);
        let at = forget_at(&once, &policy).unwrap();
        assert_eq!(at, datetime!(2026-04-01 09:15:00 UTC));
        // From then on the state answers as no failure at all.
        let fresh = after_failure(&LockState::default(), at, &policy);
        assert_eq!(after_failure(&once, at, &policy), fresh);
        // Just before, it still counts.
        let before = datetime!(2026-04-01 09:14:59 UTC);
        assert_eq!(after_failure(&once, before, &policy).failures, 2);

        let mut locked = LockState::default();
        for _ in 0..5 {
            locked = after_failure(&locked, t0, &policy);
        }
        let at = forget_at(&locked, &policy).unwrap();
        assert_eq!(Some(at), locked.locked_until);
        assert_eq!(locked_at(&locked, at), None);
        assert_eq!(after_failure(&locked, at, &policy), fresh);
        // Failures refused while locked do not move it.
        let hammered = after_failure(&locked, datetime!(2026-04-01 09:10:00 UTC), &policy);
        assert_eq!(forget_at(&hammered, &policy), Some(at));
    }
}
