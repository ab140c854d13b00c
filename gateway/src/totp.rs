//! Time-based one-time passwords (RFC 6238): HMAC-SHA1, 30-second steps,
//! 6 digits, one step of clock skew either way.

use data_encoding::BASE32_NOPAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const STEP_S: i64 = 30;

/// A new random secret, base32.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 20];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    BASE32_NOPAD.encode(&bytes)
}

pub fn otpauth_uri(issuer: &str, user: &str, secret: &str) -> String {
    format!(
        "otpauth://totp/{issuer}:{user}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits=6&period=30"
    )
}

/// The code for `secret` at unix time `now_s`.
pub fn code_at(secret: &str, now_s: i64) -> Option<String> {
    let key = BASE32_NOPAD.decode(secret.as_bytes()).ok()?;
    let counter = (now_s / STEP_S) as u64;
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key),
        &counter.to_be_bytes(),
    );
    let d = tag.as_ref();
    let off = (d[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([d[off] & 0x7f, d[off + 1], d[off + 2], d[off + 3]]);
    Some(format!("{:06}", bin % 1_000_000))
}

/// The time step `code` is valid for at `now_s`, allowing one step of
/// skew; `None` if it is not valid. Callers record the step so that a code
/// is accepted once ([`crate::store::Store::use_totp_step`]).
pub fn verify(secret: &str, code: &str, now_s: i64) -> Option<i64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    [-STEP_S, 0, STEP_S].iter().find_map(|d| {
        let t = now_s + d;
        code_at(secret, t)
            .is_some_and(|c| crate::tokens::constant_time_eq(c.as_bytes(), code.as_bytes()))
            .then_some(t / STEP_S)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vector() {
        // RFC 6238 appendix B, SHA1 secret "12345678901234567890", T = 59 s.
        let secret = BASE32_NOPAD.encode(b"12345678901234567890");
        assert_eq!(code_at(&secret, 59).unwrap(), "287082");
        assert_eq!(verify(&secret, "287082", 59), Some(1));
        assert_eq!(verify(&secret, "287082", 80), Some(1));
        assert_eq!(verify(&secret, "287082", 200), None);
        assert_eq!(verify(&secret, "28708", 59), None);
    }
}
