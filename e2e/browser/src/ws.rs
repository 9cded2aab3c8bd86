//! One WebSocket client of a canvas's gateway through the Ingress, as a browser's: TCP to
//! the address the canvas's host resolves to (`--resolve`), the handshake naming the host
//! and the page's Origin and carrying the identity cookie a previous handshake set (as a
//! browser keeps it), then the hello. Every step is bounded.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        http::{
            HeaderValue, Uri,
            header::{COOKIE, ORIGIN, SET_COOKIE},
        },
    },
};

use crate::Resolve;

/// Where a check's WebSocket clients connect (its flags).
#[derive(Debug, clap::Args)]
pub struct Endpoint {
    /// The gateway's WebSocket URL through the Ingress: `ws://<host>:<port>/ws`.
    #[arg(long)]
    pub ws_url: String,
    /// `HOST=ADDRESS` (repeatable): connect to ADDRESS for HOST; the request still names
    /// HOST (its `Host` header), as a browser's would.
    #[arg(long)]
    pub resolve: Vec<Resolve>,
}

/// Where and how the clients connect.
#[derive(Debug)]
pub struct Target {
    url: String,
    addr: SocketAddr,
    origin: HeaderValue,
    /// Bound on each single step (a connection, a hello, an answer).
    pub patience: Duration,
    /// The `name=value` of the cookie the gateway set, sent on every later handshake: the
    /// connections of one target are one person.
    cookie: std::sync::Mutex<Option<String>>,
}

pub type Socket = WebSocketStream<TcpStream>;

/// The gateway's first message.
#[derive(Debug, Clone)]
pub struct Hello {
    pub version: u64,
    pub width: u64,
    pub height: u64,
    pub palette_len: usize,
    /// The identity this connection places as (`null` for a watcher).
    pub handle: Option<String>,
}

impl Target {
    /// `ws_url` through the Ingress; `resolve` maps its host to an address; `origin` is
    /// the page's (by default `http://` and the URL's authority).
    pub async fn new(
        ws_url: &str,
        resolve: &[Resolve],
        origin: Option<&str>,
        patience: Duration,
    ) -> Result<Self> {
        let uri: Uri = ws_url
            .parse()
            .with_context(|| format!("{ws_url:?} is not a URL"))?;
        ensure!(
            uri.scheme_str() == Some("ws"),
            "{} is not a ws:// URL (this check speaks plain WebSocket only)",
            ws_url
        );
        let host = uri
            .host()
            .with_context(|| format!("{} names no host", ws_url))?
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(80);
        let addr = match resolve.iter().find(|r| r.host == host) {
            Some(rule) => SocketAddr::new(rule.addr, port),
            None => tokio::net::lookup_host((host.as_str(), port))
                .await
                .with_context(|| format!("cannot resolve {host} (give --resolve {host}=ADDRESS)"))?
                .next()
                .with_context(|| format!("{host} has no address"))?,
        };
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
        let origin = origin.map_or_else(|| format!("http://{authority}"), str::to_owned);
        Ok(Self {
            url: ws_url.to_owned(),
            addr,
            origin: HeaderValue::from_str(&origin)
                .with_context(|| format!("{origin:?} is not a header value"))?,
            patience,
            cookie: std::sync::Mutex::new(None),
        })
    }

    /// Sends `cookie` (`name=value`, as a browser sends it back) from the next handshake on.
    pub fn keep_cookie(&self, cookie: String) {
        if let Ok(mut kept) = self.cookie.lock() {
            *kept = Some(cookie);
        }
    }

    /// The cookie the handshakes send, if any (the last one a gateway set, or kept).
    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().ok().and_then(|c| c.clone())
    }

    /// Bound on one handshake: shorter than the patience, so that a handshake the Ingress
    /// holds while it still routes to a pod that is gone (a rollout's old pod, until its
    /// endpoints update) leaves time for another attempt, which lands elsewhere.
    fn attempt_limit(&self) -> Duration {
        self.patience.min(Duration::from_secs(8))
    }

    /// The WebSocket URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn url_since(&self, since: Option<u64>) -> String {
        match since {
            None => self.url.clone(),
            Some(v) if self.url.contains('?') => format!("{}&since={v}", self.url),
            Some(v) => format!("{}?since={v}", self.url),
        }
    }

    /// One connection: TCP to the resolved address, the handshake naming the URL's host
    /// with the page's Origin, then the hello. Each step bounded by the patience.
    pub async fn connect(&self, since: Option<u64>) -> Result<(Socket, Hello)> {
        let url = self.url_since(since);
        let stream = tokio::time::timeout(self.patience, TcpStream::connect(self.addr))
            .await
            .with_context(|| format!("connecting to {} timed out", self.addr))?
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let mut request = url.as_str().into_client_request()?;
        request.headers_mut().insert(ORIGIN, self.origin.clone());
        let cookie = self.cookie.lock().map(|c| c.clone()).unwrap_or_default();
        if let Some(cookie) = cookie {
            request
                .headers_mut()
                .insert(COOKIE, HeaderValue::from_str(&cookie)?);
        }
        let (mut socket, response) =
            tokio::time::timeout(self.attempt_limit(), client_async(request, stream))
                .await
                .with_context(|| format!("the WebSocket handshake with {url} timed out"))?
                .map_err(|error| match error {
                    tungstenite::Error::Http(response) => anyhow::anyhow!(
                        "{url} refused the upgrade: {} {}",
                        response.status(),
                        response
                            .body()
                            .as_ref()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default()
                    ),
                    other => anyhow::Error::new(other).context(format!("handshake with {url}")),
                })?;
        let set = response
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        if let (Some(set), Ok(mut kept)) = (set, self.cookie.lock()) {
            *kept = Some(set);
        }
        let hello = loop {
            let next = tokio::time::timeout(self.patience, socket.next())
                .await
                .with_context(|| format!("no hello from {url}"))?;
            match next {
                Some(Ok(Message::Text(text))) => break parse_hello(text.as_str())?,
                Some(Ok(Message::Close(frame))) => {
                    bail!("{url} closed before its hello: {frame:?}")
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error).context(format!("reading {url}")),
                None => bail!("{url} ended before its hello"),
            }
        };
        Ok((socket, hello))
    }

    /// [`Self::connect`], retried as the protocol says a client reconnects: the `n`-th
    /// retry after `d/2 + random(0, d/2)`, `d = min(30 s, 0.5 s × 2^n)`, for at most the
    /// patience. Returns the connection and how many attempts it took.
    pub async fn connect_retrying(&self, since: Option<u64>) -> Result<((Socket, Hello), u32)> {
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match self.connect(since).await {
                Ok(connected) => return Ok((connected, attempts)),
                Err(error) => error,
            };
            let d = Duration::from_millis(500)
                .saturating_mul(1 << (attempts - 1).min(6))
                .min(Duration::from_secs(30));
            let delay = d / 2 + d.mul_f64(fastrand::f64() / 2.0);
            if started.elapsed() + delay >= self.patience {
                return Err(error.context(format!(
                    "gave up reconnecting after {attempts} attempts in {:?}",
                    started.elapsed()
                )));
            }
            eprintln!("attempt {attempts} failed ({error:#}); retrying in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Places pixel (`x`, `y`) in `color` on `socket`, as message `id`, and returns the canvas
/// version it produced. Like the page, it waits out a `rate_limited` answer's
/// `retryAfterMs` and sends again; any other refusal, a broken connection or no answer
/// within `patience` is an error.
pub async fn place(
    socket: &mut Socket,
    patience: Duration,
    id: u64,
    (x, y, color): (u64, u64, u64),
) -> Result<u64> {
    let message = serde_json::json!({"type": "place", "x": x, "y": y, "color": color, "id": id});
    let started = Instant::now();
    'send: loop {
        socket
            .send(Message::text(message.to_string()))
            .await
            .with_context(|| format!("sending placement {id} ({x},{y})"))?;
        loop {
            let left = patience.saturating_sub(started.elapsed());
            let next = tokio::time::timeout(left, socket.next())
                .await
                .with_context(|| format!("no answer to placement {id} ({x},{y})"))?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    let answer: Value = serde_json::from_str(text.as_str())?;
                    match answer["type"].as_str() {
                        Some("placed") if answer["id"] == id => {
                            return answer["version"]
                                .as_u64()
                                .with_context(|| format!("placed without a version: {answer}"));
                        }
                        Some("error") if answer["code"] == "rate_limited" => {
                            let wait = answer["retryAfterMs"].as_u64().unwrap_or(200);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                            continue 'send;
                        }
                        Some("error") => bail!("placement {id} ({x},{y}) was refused: {answer}"),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error).context("the placing connection failed"),
                None => bail!("the placing connection closed before answer {id}"),
            }
        }
    }
}

pub fn parse_hello(text: &str) -> Result<Hello> {
    let hello: Value = serde_json::from_str(text)
        .with_context(|| format!("the first message is not JSON: {text}"))?;
    ensure!(
        hello["type"] == "hello",
        "the gateway's first message is not a hello: {text}"
    );
    let number = |key: &str| {
        hello[key]
            .as_u64()
            .with_context(|| format!("the hello has no {key}: {text}"))
    };
    Ok(Hello {
        version: number("version")?,
        width: number("width")?,
        height: number("height")?,
        palette_len: hello["palette"].as_array().map_or(0, Vec::len),
        handle: hello["identity"]["handle"].as_str().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hello_is_read_for_its_version_and_board() {
        let hello = parse_hello(
            r##"{"type":"hello","protocol":2,"identity":{"kind":"anonymous","handle":"anon-01234567"},"cooldownMs":0,"version":7,"width":64,"height":32,"palette":["#FFFFFF","#000000"],"cooldownSeconds":0,"online":2}"##,
        )
        .expect("a hello");
        assert_eq!(
            (hello.version, hello.width, hello.height, hello.palette_len),
            (7, 64, 32, 2)
        );
        assert!(parse_hello(r#"{"type":"online","count":2}"#).is_err());
        assert!(parse_hello("not json").is_err());
    }
}
