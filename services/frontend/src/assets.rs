//! The page and its assets, embedded in the binary at build time: no files to ship beside
//! it, and a pod always serves the page that matches its own version.

use axum::{
    body::Bytes,
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH},
    },
    response::{IntoResponse, Response},
};

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Every response of the frontend is revalidated: the assets have no content hash in their
/// names (there is no build step), and an ES module graph mixing two deployments would
/// break. Revalidation is one `304` per file thanks to the ETag.
pub const REVALIDATE: &str = "no-cache";

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The URL path it is served at.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../assets/", $file)),
        }
    };
}

/// The page, its modules, style sheet and icon.
pub const ASSETS: &[Asset] = &[
    asset!("/", "index.html", HTML),
    asset!("/assets/style.css", "style.css", CSS),
    asset!("/assets/app.js", "app.js", JS),
    asset!("/assets/wire.js", "wire.js", JS),
    asset!("/assets/api.js", "api.js", JS),
    asset!("/assets/board.js", "board.js", JS),
    asset!("/assets/sync.js", "sync.js", JS),
    asset!("/assets/connection.js", "connection.js", JS),
    asset!("/assets/view.js", "view.js", JS),
    asset!("/assets/gestures.js", "gestures.js", JS),
    asset!("/assets/controls.js", "controls.js", JS),
    asset!("/assets/favicon.svg", "favicon.svg", SVG),
];

/// A fixed body served with a content type and a validator.
#[derive(Debug, Clone)]
pub struct Static {
    content_type: HeaderValue,
    body: Bytes,
    etag: HeaderValue,
}

impl Static {
    pub fn new(content_type: &'static str, body: Bytes) -> Self {
        // Weak: the compression layer may re-encode the bytes, which a strong validator
        // would forbid. The hex digest is always a valid header value.
        let etag = HeaderValue::from_str(&format!("W/\"{:016x}\"", fnv1a(&body)))
            .unwrap_or_else(|_| HeaderValue::from_static("W/\"0\""));
        Self {
            content_type: HeaderValue::from_static(content_type),
            body,
            etag,
        }
    }

    /// `200` with the body, or `304` when `If-None-Match` names this ETag.
    pub fn respond(&self, request: &HeaderMap) -> Response {
        let headers = [
            (CACHE_CONTROL, HeaderValue::from_static(REVALIDATE)),
            (ETAG, self.etag.clone()),
        ];
        if matches_etag(request, &self.etag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        (
            headers,
            [(CONTENT_TYPE, self.content_type.clone())],
            self.body.clone(),
        )
            .into_response()
    }
}

/// Weak comparison (RFC 9110 §13.1.2) of each entity tag listed in `If-None-Match`.
fn matches_etag(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.to_str().map(strip_weak).unwrap_or_default();
    request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || strip_weak(tag) == ours)
}

fn strip_weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// 64-bit FNV-1a: a tiny, stable content digest for ETags (not a security boundary).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_and_content_sensitive() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"ab"), fnv1a(b"ba"));
    }

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        let etag = HeaderValue::from_static("W/\"abc\"");
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
            matches_etag(&headers, &etag)
        };
        assert!(with("W/\"abc\""));
        assert!(with("\"abc\""));
        assert!(with("\"x\", W/\"abc\""));
        assert!(with("*"));
        assert!(!with("\"abd\""));
        assert!(!matches_etag(&HeaderMap::new(), &etag));
    }

    #[test]
    fn every_asset_is_served_at_a_distinct_path() {
        for (i, asset) in ASSETS.iter().enumerate() {
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
            assert!(
                ASSETS[..i].iter().all(|other| other.path != asset.path),
                "{} twice",
                asset.path
            );
        }
    }
}
