//! TOTP (RFC 6238): SHA-1, 6 digits, 30-second steps, one step of clock
//! skew either way. A code is accepted only for a step later than the last
//! one used, so a code seen over someone's shoulder cannot be used again.
//!
//! The secret is stored encrypted with the broker's data key
//! ([`crate::keys::Keyring::encrypt`]) under [`secret_context`].

use kakehashi_interfaces::people::UserId;
use rand::RngCore;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};
use zeroize::Zeroizing;

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "Kakehashi";
/// Digits per code.
pub const DIGITS: usize = 6;
/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Steps of clock skew accepted either way.
pub const SKEW_STEPS: u64 = 1;
/// Secret length: 160 bits, as RFC 4226 recommends.
pub const SECRET_BYTES: usize = 20;

/// A TOTP shared secret. Wiped on drop; `Debug` never shows it.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(****)")
    }
}

/// What is wrong with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeRefusal {
    /// The code matches no step in the window.
    #[error("wrong code")]
    Wrong,
    /// The code matches only steps already used.
    #[error("code already used")]
    Replayed,
    /// The stored secret is unusable.
    #[error("stored TOTP secret is malformed")]
    BadSecret,
}

impl TotpSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        TotpSecret(bytes)
    }

    /// A secret read back from storage (after decryption).
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Result<Self, CodeRefusal> {
        if bytes.len() < 16 {
            return Err(CodeRefusal::BadSecret);
        }
        Ok(TotpSecret(bytes))
    }

    /// The raw bytes, for encryption at rest.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn totp(&self) -> Result<TOTP, CodeRefusal> {
        TOTP::new(
            Algorithm::SHA1,
            DIGITS,
            // Skew is handled here (per step, for replay protection), not by the crate.
            0,
            STEP_SECS,
            self.0.to_vec(),
        )
        .map_err(|_| CodeRefusal::BadSecret)
    }

    /// The code for the step containing `unix_secs` (for tests and tools).
    pub fn code_at(&self, unix_secs: u64) -> Result<String, CodeRefusal> {
        Ok(self.totp()?.generate(unix_secs))
    }
}

/// The associated data binding a stored secret to its user.
pub fn secret_context(user: &UserId) -> Vec<u8> {
    format!("totp|{user}").into_bytes()
}

/// The `otpauth://` URI an authenticator app reads (Key Uri Format): issuer
/// `Kakehashi`, account the user id. User ids are URI-safe as they are.
pub fn otpauth_uri(user: &UserId, secret: &TotpSecret) -> Zeroizing<String> {
    let encoded = Secret::Raw(secret.0.to_vec()).to_encoded();
    let encoded = Zeroizing::new(match &encoded {
        Secret::Encoded(s) => s.clone(),
        Secret::Raw(_) => String::new(),
    });
    Zeroizing::new(format!(
        "otpauth://totp/{ISSUER}:{user}?secret={}&issuer={ISSUER}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        encoded.as_str()
    ))
}

/// The URI as a QR code, an SVG document.
pub fn qr_svg(uri: &str) -> Result<String, qrcode::types::QrError> {
    let code = qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M)?;
    Ok(code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build())
}

/// The step `unix_secs` falls in.
pub fn step_of(unix_secs: u64) -> u64 {
    unix_secs / STEP_SECS
}

/// Checks `code` at `unix_secs` against the steps one either side; returns
/// the step it matched, which must be later than `last_used` (the step of
/// the last accepted code).
pub fn verify(
    secret: &TotpSecret,
    code: &str,
    unix_secs: u64,
    last_used: Option<u64>,
) -> Result<u64, CodeRefusal> {
    let totp = secret.totp()?;
    let current = step_of(unix_secs);
    let mut matched_fresh = None;
    let mut matched_used = false;
    for step in current.saturating_sub(SKEW_STEPS)..=current.saturating_add(SKEW_STEPS) {
        let expected = totp.generate(step.saturating_mul(STEP_SECS));
        // Compare every step in full so timing says nothing about which matched.
        let same: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
        if same {
            if last_used.is_some_and(|last| step <= last) {
                matched_used = true;
            } else {
                matched_fresh = Some(step);
            }
        }
    }
    match (matched_fresh, matched_used) {
        (Some(step), _) => Ok(step),
        (None, true) => Err(CodeRefusal::Replayed),
        (None, false) => Err(CodeRefusal::Wrong),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1, truncated to 6 digits.
    #[test]
    fn rfc6238_vectors() {
        let secret =
            TotpSecret::from_bytes(Zeroizing::new(b"12345678901234567890".to_vec())).unwrap();
        for (t, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(secret.code_at(t).unwrap(), code, "t={t}");
            assert_eq!(verify(&secret, code, t, None), Ok(step_of(t)));
        }
    }

    #[test]
    fn one_step_of_skew_either_way() {
        let secret = TotpSecret::generate();
        let now = 1_800_000_015;
        let step = step_of(now);
        let at = |s: u64| secret.code_at(s * STEP_SECS).unwrap();
        assert_eq!(verify(&secret, &at(step - 1), now, None), Ok(step - 1));
        assert_eq!(verify(&secret, &at(step + 1), now, None), Ok(step + 1));
        let two_back = at(step - 2);
        let two_ahead = at(step + 2);
        let window: Vec<String> = (step - 1..=step + 1).map(at).collect();
        // (A code can repeat across steps by chance; only test distinct ones.)
        if !window.contains(&two_back) {
            assert_eq!(
                verify(&secret, &two_back, now, None),
                Err(CodeRefusal::Wrong)
            );
        }
        if !window.contains(&two_ahead) {
            assert_eq!(
                verify(&secret, &two_ahead, now, None),
                Err(CodeRefusal::Wrong)
            );
        }
    }

    #[test]
    fn a_used_step_or_an_earlier_one_is_refused() {
        let secret = TotpSecret::generate();
        let now = 1_800_000_015;
        let step = step_of(now);
        let code = secret.code_at(now).unwrap();
        let used = verify(&secret, &code, now, None).unwrap();
        assert_eq!(used, step);
        assert_eq!(
            verify(&secret, &code, now, Some(used)),
            Err(CodeRefusal::Replayed)
        );
        // The previous step's code is inside the skew window but older than the used step.
        let previous = secret.code_at(now - STEP_SECS).unwrap();
        if previous != code {
            assert_eq!(
                verify(&secret, &previous, now, Some(used)),
                Err(CodeRefusal::Replayed)
            );
        }
        // The next step's code is still fresh.
        let next = secret.code_at(now + STEP_SECS).unwrap();
        assert_eq!(verify(&secret, &next, now, Some(used)), Ok(step + 1));
    }

    #[test]
    fn uri_names_issuer_and_account_and_carries_the_secret() {
        let secret =
            TotpSecret::from_bytes(Zeroizing::new(b"12345678901234567890".to_vec())).unwrap();
        let user = UserId::new("taro.yamada").unwrap();
        let uri = otpauth_uri(&user, &secret);
        assert_eq!(
            uri.as_str(),
            "otpauth://totp/Kakehashi:taro.yamada?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Kakehashi&algorithm=SHA1&digits=6&period=30"
        );
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..40]);
        assert!(svg.contains("<svg"));
        assert_eq!(format!("{secret:?}"), "TotpSecret(****)");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(TotpSecret::from_bytes(Zeroizing::new(vec![1; 15])).is_err());
        assert!(TotpSecret::from_bytes(Zeroizing::new(vec![1; 16])).is_ok());
    }
}
