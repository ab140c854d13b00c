//! Pagination: page sizes are clamped, page tokens are opaque to callers and
//! refused when they were not issued by us.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::validate::FieldError;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
const TOKEN_PREFIX: &str = "dc1:";

/// 0 means the default; values above the maximum are clamped to it.
pub fn page_size(requested: i32) -> Result<usize, FieldError> {
    match requested {
        n if n < 0 => Err(FieldError::new("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// A token resuming after `key`.
pub fn encode_token(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{key}"))
}

/// The key a token resumes after; `None` for the first page.
pub fn decode_token(token: &str) -> Result<Option<String>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || FieldError::new("page_token", "not a token from a previous response");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix(TOKEN_PREFIX)
        .map(|k| Some(k.to_owned()))
        .ok_or_else(bad)
}

/// Cuts a page fetched with one extra row: returns the next-page token.
pub fn finish<T>(rows: &mut Vec<T>, size: usize, key: impl Fn(&T) -> String) -> String {
    if rows.len() > size {
        rows.truncate(size);
        rows.last()
            .map(key)
            .map(|k| encode_token(&k))
            .unwrap_or_default()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_clamped() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5).unwrap(), 5);
        assert_eq!(page_size(i32::MAX).unwrap(), MAX_PAGE_SIZE);
        assert_eq!(page_size(-1).unwrap_err().field, "page_size");
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(
            decode_token(&encode_token("abc")).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(decode_token("").unwrap(), None);
        assert_eq!(decode_token("garbage!").unwrap_err().field, "page_token");
        assert!(decode_token(&URL_SAFE_NO_PAD.encode("other:abc")).is_err());
    }
}
