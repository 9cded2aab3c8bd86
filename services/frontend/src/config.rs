//! Where the page finds canvas-api and the gateway (`/config.json`), and the
//! Content-Security-Policy that lets it reach exactly those places.

use std::fmt;

use serde::Serialize;

/// Why a configured public URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("is empty")]
    Empty,
    #[error("starts with `//`: give a path (`/api/v1`) or a full URL with its scheme")]
    ProtocolRelative,
    #[error("must be a path starting with `/` or a URL with one of the schemes {allowed}")]
    Scheme { allowed: &'static str },
    #[error("has no host after the scheme")]
    MissingHost,
    #[error("contains {0:?}, which a URL here may not hold")]
    Character(char),
}

/// A location the browser is sent to: a path on the page's own origin (what the Ingress
/// routes) or an absolute URL on another origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    url: String,
    /// `scheme://host[:port]` of an absolute URL; `None` for a same-origin path.
    origin: Option<String>,
}

const HTTP_SCHEMES: &[&str] = &["http", "https"];
const WS_SCHEMES: &[&str] = &["ws", "wss"];

impl PublicUrl {
    /// The API base: a path or an `http(s)://` URL. A trailing `/` is dropped so the page
    /// can append `/canvas`.
    pub fn api(value: &str) -> Result<Self, UrlError> {
        let mut parsed = Self::parse(value, HTTP_SCHEMES, "http, https")?;
        while parsed.url.len() > 1 && parsed.url.ends_with('/') {
            parsed.url.pop();
        }
        Ok(parsed)
    }

    /// The WebSocket URL: a path or a `ws(s)://` URL.
    pub fn websocket(value: &str) -> Result<Self, UrlError> {
        Self::parse(value, WS_SCHEMES, "ws, wss")
    }

    fn parse(value: &str, schemes: &[&str], allowed: &'static str) -> Result<Self, UrlError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(UrlError::Empty);
        }
        // The value ends up inside a header (the CSP) and a JSON document: refuse what could
        // end a directive or a token there, rather than escaping it.
        if let Some(bad) = value
            .chars()
            .find(|c| !c.is_ascii_graphic() || "\"'`;,\\<>".contains(*c))
        {
            return Err(UrlError::Character(bad));
        }
        if value.starts_with("//") {
            return Err(UrlError::ProtocolRelative);
        }
        if value.starts_with('/') {
            return Ok(Self {
                url: value.to_owned(),
                origin: None,
            });
        }
        let (scheme, rest) = value
            .split_once("://")
            .filter(|(scheme, _)| schemes.iter().any(|s| scheme.eq_ignore_ascii_case(s)))
            .ok_or(UrlError::Scheme { allowed })?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() {
            return Err(UrlError::MissingHost);
        }
        Ok(Self {
            url: value.to_owned(),
            origin: Some(format!(
                "{}://{}",
                scheme.to_ascii_lowercase(),
                authority.to_ascii_lowercase()
            )),
        })
    }

    /// The URL as configured (a path or an absolute URL).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The origin of an absolute URL; `None` when the page's own origin serves it.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// The body of `GET /config.json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicConfig {
    /// canvas-api's base (`/api/v1`): the page GETs `<apiBase>/canvas`, `<apiBase>/pixels/…`.
    pub api_base: String,
    /// The gateway's WebSocket (`/ws`): a path is opened on the page's own host with `ws:`
    /// or `wss:` matching the page's scheme.
    pub ws_url: String,
}

impl PublicConfig {
    pub fn new(api: &PublicUrl, ws: &PublicUrl) -> Self {
        Self {
            api_base: api.as_str().to_owned(),
            ws_url: ws.as_str().to_owned(),
        }
    }
}

/// The page's Content-Security-Policy: scripts, styles and images from its own origin
/// only; network access to its own origin (which in CSP level 3 includes `ws:`/`wss:` to the
/// same host) plus the origins of absolutely configured API and WebSocket URLs.
pub fn content_security_policy(api: &PublicUrl, ws: &PublicUrl) -> String {
    let mut connect = String::from("'self'");
    let mut seen: Vec<&str> = Vec::new();
    for origin in [api.origin(), ws.origin()].into_iter().flatten() {
        if !seen.contains(&origin) {
            seen.push(origin);
            connect.push(' ');
            connect.push_str(origin);
        }
    }
    // The one form is sign-out, posted to the gateway's `/auth/logout` (the gateway's
    // origin is the WebSocket's, in HTTP).
    let mut form = String::from("'self'");
    if let Some(origin) = ws.origin() {
        let http = origin
            .strip_prefix("wss://")
            .map(|rest| format!(" https://{rest}"))
            .or_else(|| {
                origin
                    .strip_prefix("ws://")
                    .map(|rest| format!(" http://{rest}"))
            });
        form.push_str(&http.unwrap_or_default());
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; base-uri 'none'; form-action {form}; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_relative_and_lose_a_trailing_slash() {
        let api = PublicUrl::api("/api/v1/").expect("valid");
        assert_eq!(api.as_str(), "/api/v1");
        assert_eq!(api.origin(), None);
        assert_eq!(PublicUrl::api("/").expect("valid").as_str(), "/");
        let ws = PublicUrl::websocket("/ws").expect("valid");
        assert_eq!((ws.as_str(), ws.origin()), ("/ws", None));
    }

    #[test]
    fn absolute_urls_carry_their_origin() {
        let api = PublicUrl::api("https://API.example.com:8443/api/v1").expect("valid");
        assert_eq!(api.origin(), Some("https://api.example.com:8443"));
        let ws = PublicUrl::websocket("wss://ws.example.com/ws?x=1").expect("valid");
        assert_eq!(ws.origin(), Some("wss://ws.example.com"));
    }

    #[test]
    fn refuses_what_the_page_cannot_use_or_the_header_cannot_hold() {
        assert_eq!(PublicUrl::api(""), Err(UrlError::Empty));
        assert_eq!(
            PublicUrl::api("//evil.example"),
            Err(UrlError::ProtocolRelative)
        );
        assert!(matches!(
            PublicUrl::api("ws://x/api"),
            Err(UrlError::Scheme { .. })
        ));
        assert!(matches!(
            PublicUrl::websocket("https://x/ws"),
            Err(UrlError::Scheme { .. })
        ));
        assert!(matches!(
            PublicUrl::api("api/v1"),
            Err(UrlError::Scheme { .. })
        ));
        assert_eq!(PublicUrl::websocket("ws:///ws"), Err(UrlError::MissingHost));
        assert_eq!(
            PublicUrl::api("/api; script-src *"),
            Err(UrlError::Character(';'))
        );
        assert_eq!(PublicUrl::api("/a b"), Err(UrlError::Character(' ')));
    }

    #[test]
    fn csp_names_each_foreign_origin_once() {
        let same = content_security_policy(
            &PublicUrl::api("/api/v1").expect("valid"),
            &PublicUrl::websocket("/ws").expect("valid"),
        );
        assert!(same.contains("connect-src 'self';"), "{same}");
        assert!(same.contains("form-action 'self';"), "{same}");
        let (api, gateway) = (
            pixel_common::ports::CANVAS_API,
            pixel_common::ports::GATEWAY,
        );
        let foreign = content_security_policy(
            &PublicUrl::api(&format!("http://127.0.0.1:{api}/api/v1")).expect("valid"),
            &PublicUrl::websocket(&format!("ws://127.0.0.1:{gateway}/ws")).expect("valid"),
        );
        assert!(
            foreign.contains(&format!(
                "connect-src 'self' http://127.0.0.1:{api} ws://127.0.0.1:{gateway};"
            )),
            "{foreign}"
        );
        assert!(
            foreign.contains(&format!("form-action 'self' http://127.0.0.1:{gateway};")),
            "sign-out posts to the gateway: {foreign}"
        );
    }
}
