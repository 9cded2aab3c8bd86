//! Who may place: only the canvas's gateway, which presents the internal token
//! (`Authorization: Bearer <token>`) on behalf of an identity it verified. A caller through
//! the Ingress has no such token, so it cannot place, whatever `X-Client-Id` it sends.

use std::sync::Arc;

use axum::http::{HeaderMap, header::AUTHORIZATION};
use subtle::ConstantTimeEq;

/// A bearer credential (the internal token, the moderator token); never printed.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8]>);

impl BearerToken {
    pub fn new(token: &str) -> Self {
        Self(token.as_bytes().into())
    }

    /// Whether `headers` carry this token as a bearer credential, compared in constant
    /// time (only a length mismatch answers early, and the length is no secret).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        headers
            .get(AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|presented| bool::from(presented.ct_eq(&self.0)))
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = BearerToken::new("0123456789abcdef");
        assert!(token.admits(&with("Bearer 0123456789abcdef")));
        for wrong in [
            "Bearer 0123456789abcdeg",
            "Bearer 0123456789abcde",
            "Bearer 0123456789abcdef0",
            "bearer 0123456789abcdef",
            "Basic 0123456789abcdef",
            "0123456789abcdef",
            "Bearer ",
        ] {
            assert!(!token.admits(&with(wrong)), "{wrong}");
        }
        assert!(!token.admits(&HeaderMap::new()));
        assert_eq!(format!("{token:?}"), "BearerToken(..)");
    }
}
