//! API-key check: `Authorization: Bearer <key>`, compared in constant time.
//!
//! Only the OpenAI and tokenizer endpoints are protected; probes and scrapes (`/health`,
//! `/live`, `/metrics`, `/version`, `/load`) never need the key.

use http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// Whether `path` requires the key.
pub fn is_protected(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/tokenize" || path == "/detokenize"
}

/// Checks the bearer token against `key` (no key configured: everything passes).
pub fn check(headers: &HeaderMap, key: Option<&str>) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(token) if bool::from(token.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_key() {
        assert!(check(&HeaderMap::new(), None).is_ok());
        assert!(check(&headers("Bearer sk-1"), Some("sk-1")).is_ok());
        assert!(check(&headers("Bearer sk-2"), Some("sk-1")).is_err());
        assert!(check(&headers("sk-1"), Some("sk-1")).is_err());
        assert!(check(&HeaderMap::new(), Some("sk-1")).is_err());
        assert!(is_protected("/v1/models") && is_protected("/tokenize"));
        assert!(!is_protected("/health") && !is_protected("/metrics") && !is_protected("/load"));
    }
}
