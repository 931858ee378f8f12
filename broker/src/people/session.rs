//! Sessions: random 256-bit ids kept only as SHA-256 hashes, a CSRF token
//! per session, the stages a login passes, and the idle and absolute
//! timeouts (seed 002 ch. 2 §7(2)④ アクセスタイムアウト). Pure functions; the
//! store keeps the rows.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use zeroize::Zeroizing;

pub use kakehashi_interfaces::people::SessionStage as Stage;

/// The cookie that carries the session id. The `__Host-` prefix makes
/// browsers take it only from this host over HTTPS, for the whole site
/// (`Path=/`, no `Domain`): a page on a sibling subdomain cannot set one.
pub const SESSION_COOKIE: &str = "__Host-kakehashi_session";
/// The cookie's attributes: never sent over plain HTTP, never readable by
/// scripts, never sent by another site's page.
pub const COOKIE_ATTRIBUTES: &str = "Secure; HttpOnly; SameSite=Strict; Path=/";
/// The request header carrying the CSRF token on state-changing calls.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Random bytes in a session id and in a CSRF token.
pub const TOKEN_BYTES: usize = 32;
/// Characters of a token in base64url without padding.
const TOKEN_CHARS: usize = 43;

/// A session id as the client holds it. Wiped on drop; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(Zeroizing<String>);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(****)")
    }
}

impl SessionToken {
    /// A fresh random id (256 bits, base64url).
    pub fn generate() -> Self {
        SessionToken(Zeroizing::new(random_token()))
    }

    /// The id, for the cookie.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash stored in place of the id.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

/// The stored hash of a token a client presented, or `None` when it cannot
/// be a session id at all (wrong length or alphabet).
pub fn token_hash(presented: &str) -> Option<[u8; 32]> {
    let well_formed = presented.len() == TOKEN_CHARS
        && presented
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| Sha256::digest(presented.as_bytes()).into())
}

fn random_token() -> String {
    let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    URL_SAFE_NO_PAD.encode(bytes.as_ref())
}

/// A fresh CSRF token (256 bits, base64url).
pub fn new_csrf_token() -> String {
    random_token()
}

/// Whether the CSRF token a request carries is the session's, in time that
/// does not depend on where they differ.
pub fn csrf_matches(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(token: &SessionToken) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{SESSION_COOKIE}={}; {COOKIE_ATTRIBUTES}",
        token.expose()
    ))
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Max-Age=0; {COOKIE_ATTRIBUTES}")
}

/// The session id in a `Cookie` request header, if there is one.
pub fn token_from_cookie_header(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
    })
}

/// The idle timeout and the absolute lifetime of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Ends a session this long after its last use.
    pub idle: Duration,
    /// Ends a session this long after login, used or not.
    pub lifetime: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle: Duration::from_secs(15 * 60),
            lifetime: Duration::from_secs(8 * 60 * 60),
        }
    }
}

/// Whether a session may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Usable; `refresh` says whether to store the new last-use time (it is
    /// stored at most every 1/16 of the idle timeout, so a busy console
    /// does not write on every request).
    Live {
        /// Store `now` as the last use.
        refresh: bool,
    },
    /// Unused for longer than the idle timeout.
    Idle,
    /// Older than the absolute lifetime.
    Ended,
}

/// Decides whether a session created at `created` and last used at
/// `last_seen` is usable at `now`.
pub fn liveness(
    created: OffsetDateTime,
    last_seen: OffsetDateTime,
    now: OffsetDateTime,
    limits: &SessionLimits,
) -> Liveness {
    if now - created >= limits.lifetime {
        return Liveness::Ended;
    }
    let idle_for = now - last_seen;
    if idle_for >= limits.idle {
        return Liveness::Idle;
    }
    Liveness::Live {
        refresh: idle_for >= limits.idle / 16,
    }
}

/// The stage a session starts at after a right password.
pub fn stage_after_password(temporary: bool, totp_enrolled: bool) -> Stage {
    if temporary {
        Stage::PasswordChange
    } else if totp_enrolled {
        Stage::Totp
    } else {
        Stage::TotpEnrolment
    }
}

/// The stage after a password change made at `stage`, or `None` when a
/// password cannot be changed there (before the TOTP step of a normal
/// login, so a stolen password alone cannot change it).
pub fn stage_after_password_change(stage: Stage, totp_enrolled: bool) -> Option<Stage> {
    match stage {
        Stage::PasswordChange => Some(stage_after_password(false, totp_enrolled)),
        Stage::Full => Some(Stage::Full),
        Stage::TotpEnrolment | Stage::Totp => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), TOKEN_CHARS);
        assert_eq!(URL_SAFE_NO_PAD.decode(a.expose()).unwrap().len(), 32);
        assert_eq!(token_hash(a.expose()), Some(a.hash()));
        assert_ne!(a.hash(), b.hash());
        assert_eq!(format!("{a:?}"), "SessionToken(****)");
        assert_eq!(token_hash("short"), None);
        assert_eq!(token_hash(&format!("{}=", &a.expose()[..42])), None);
    }

    #[test]
    fn csrf_compare() {
        let t = new_csrf_token();
        assert!(csrf_matches(&t, &t.clone()));
        assert!(!csrf_matches(&t, &new_csrf_token()));
        assert!(!csrf_matches(&t, &t[..42]));
        assert!(!csrf_matches(&t, ""));
        assert!(!csrf_matches("", ""));
        let mut flipped = t.clone().into_bytes();
        flipped[0] ^= 1;
        assert!(!csrf_matches(&t, &String::from_utf8(flipped).unwrap()));
    }

    #[test]
    fn cookies() {
        let t = SessionToken::generate();
        let set = set_cookie(&t);
        assert!(set.starts_with("__Host-kakehashi_session="));
        assert!(!set.contains("Domain"), "__Host- cookies carry no Domain");
        assert!(set.ends_with("; Secure; HttpOnly; SameSite=Strict; Path=/"));
        assert!(clear_cookie().contains("Max-Age=0"));
        let header = format!(
            "theme=dark; kakehashi_session=planted; __Host-kakehashi_session={}; x=1",
            t.expose()
        );
        assert_eq!(token_from_cookie_header(&header), Some(t.expose()));
        assert_eq!(token_from_cookie_header("theme=dark"), None);
        assert_eq!(token_from_cookie_header("__Host-kakehashi_session="), None);
        assert_eq!(token_from_cookie_header("kakehashi_session=planted"), None);
    }

    #[test]
    fn idle_timeout() {
        let limits = SessionLimits::default();
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        let seen = datetime!(2026-04-01 10:00:00 UTC);
        assert_eq!(
            liveness(t0, seen, datetime!(2026-04-01 10:14:59 UTC), &limits),
            Liveness::Live { refresh: true }
        );
        assert_eq!(
            liveness(t0, seen, datetime!(2026-04-01 10:15:00 UTC), &limits),
            Liveness::Idle
        );
        // Recent use is not written again at once.
        assert_eq!(
            liveness(t0, seen, datetime!(2026-04-01 10:00:10 UTC), &limits),
            Liveness::Live { refresh: false }
        );
    }

    #[test]
    fn absolute_lifetime() {
        let limits = SessionLimits::default();
        let t0 = datetime!(2026-04-01 09:00:00 UTC);
        // Used a minute ago, but eight hours old: over.
        assert_eq!(
            liveness(
                t0,
                datetime!(2026-04-01 16:59:00 UTC),
                datetime!(2026-04-01 17:00:00 UTC),
                &limits
            ),
            Liveness::Ended
        );
        assert!(matches!(
            liveness(
                t0,
                datetime!(2026-04-01 16:59:00 UTC),
                datetime!(2026-04-01 16:59:59 UTC),
                &limits
            ),
            Liveness::Live { .. }
        ));
        let short = SessionLimits {
            idle: Duration::from_secs(2),
            lifetime: Duration::from_secs(5),
        };
        assert_eq!(
            liveness(t0, t0, datetime!(2026-04-01 09:00:02 UTC), &short),
            Liveness::Idle
        );
    }

    #[test]
    fn stages() {
        assert_eq!(stage_after_password(true, false), Stage::PasswordChange);
        assert_eq!(stage_after_password(true, true), Stage::PasswordChange);
        assert_eq!(stage_after_password(false, false), Stage::TotpEnrolment);
        assert_eq!(stage_after_password(false, true), Stage::Totp);
        assert_eq!(
            stage_after_password_change(Stage::PasswordChange, false),
            Some(Stage::TotpEnrolment)
        );
        assert_eq!(
            stage_after_password_change(Stage::PasswordChange, true),
            Some(Stage::Totp)
        );
        assert_eq!(
            stage_after_password_change(Stage::Full, true),
            Some(Stage::Full)
        );
        assert_eq!(stage_after_password_change(Stage::Totp, true), None);
        assert_eq!(
            stage_after_password_change(Stage::TotpEnrolment, false),
            None
        );
    }
}
