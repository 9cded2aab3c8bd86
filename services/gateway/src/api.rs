//! canvas-api as the gateway calls it: placements, undos and history, over one keep-alive HTTP
//! connection pool, every call bounded by a timeout.

use std::time::Duration;

use pixel_common::{
    ports::{
        API_HISTORY_PATH, API_MODERATION_PATH, API_PIXELS_PATH, API_UNDO_PATH, CLIENT_ID_HEADER,
        IDEMPOTENCY_KEY_HEADER, MODERATOR_HEADER,
    },
    wire::PixelUpdate,
};
use reqwest::{StatusCode, header::RETRY_AFTER};
use serde::Deserialize;

/// Why canvas-api gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("the internal API token is not a valid header value")]
    Token(#[source] reqwest::header::InvalidHeaderValue),
    #[error("canvas-api did not answer")]
    Request(#[source] reqwest::Error),
    #[error(
        "canvas-api refused the gateway's internal token: PIXEL_API_TOKEN differs between them"
    )]
    Unauthorized,
    #[error("canvas-api answered {status} with a body that is not its documented one")]
    Unexpected {
        status: StatusCode,
        #[source]
        source: Option<reqwest::Error>,
    },
}

/// Why missed updates cannot be read from the history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history no longer reaches back to version {since}")]
    Gone { since: u64 },
    #[error("history after version {since} is not contiguous")]
    NotContiguous { since: u64 },
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// canvas-api's answer to a placement or an undo: what it did, or why it refused (its
/// error code and message, both meant for the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    Done(T),
    Refused {
        code: String,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

/// An accepted placement.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placed {
    pub version: u64,
    pub placed_at_ms: u64,
}

/// An undone placement: the pixel has `color` again, as `version`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Undone {
    pub version: u64,
    pub x: u16,
    pub y: u16,
    pub color: u8,
}

#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorDetail {
    code: String,
    message: String,
    /// Exact, where `Retry-After` has whole seconds.
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct HistoryAnswer {
    updates: Vec<PixelUpdate>,
    more: bool,
}

/// How long the gateway waits before sending a placement again: enough for the endpoints of
/// a stopping pod to be withdrawn, short beside a player's patience.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// Whether a placement that failed so may be sent again: the connection was refused
/// (nothing reached canvas-api) or closed or reset before an answer (it may have been
/// placed; its key answers for it). Not a timeout: canvas-api may still be placing it, and
/// the player has waited long enough.
fn worth_retrying(error: &reqwest::Error) -> bool {
    if error.is_timeout() {
        return false;
    }
    if error.is_connect() {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(error) = cause {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        if error.downcast_ref::<std::io::Error>().is_some_and(|error| {
            matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        }) {
            return true;
        }
        cause = error.source();
    }
    false
}

/// A handle on canvas-api; cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    /// `base` is `http://host:port`; `token` is the internal credential placements carry;
    /// `timeout` bounds each call.
    pub fn new(base: &str, token: &str, timeout: Duration) -> Result<Self, ApiError> {
        let mut authorization = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(ApiError::Token)?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .default_headers(
                [(reqwest::header::AUTHORIZATION, authorization)]
                    .into_iter()
                    .collect(),
            )
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(ApiError::Client)?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// `POST /api/v1/pixels` on behalf of `client_id`, sent once more if the connection was
    /// refused or lost before an answer (a canvas-api pod stopping mid-rollout). The
    /// placement's idempotency key makes the second send answer as the first did when that
    /// one was placed, so a placement is never applied twice.
    pub async fn place(
        &self,
        client_id: &str,
        x: i64,
        y: i64,
        color: i64,
    ) -> Result<Outcome<Placed>, ApiError> {
        let body = serde_json::json!({"x": x, "y": y, "color": color});
        let key = format!("{:032x}", rand::random::<u128>());
        let send = || self.post(API_PIXELS_PATH, client_id, Some(&body), Some(&key));
        match send().await {
            Err(ApiError::Request(error)) if worth_retrying(&error) => {
                tracing::debug!(error = %pixel_common::error::ErrorChain(&error), "placement sent again");
                tokio::time::sleep(RETRY_DELAY).await;
                send().await
            }
            outcome => outcome,
        }
    }

    /// `POST /api/v1/pixels/undo` on behalf of `client_id`.
    pub async fn undo(&self, client_id: &str) -> Result<Outcome<Undone>, ApiError> {
        self.post(API_UNDO_PATH, client_id, None, None).await
    }

    /// A moderation request forwarded for the signed-in moderator `handle`: `method` on
    /// `/api/v1/moderation` + `rest` (a path and query), with the moderator `token` and
    /// `body`; canvas-api's status, content type and body, whatever they are.
    pub async fn moderate(
        &self,
        token: &str,
        handle: &str,
        method: reqwest::Method,
        rest: &str,
        body: bytes::Bytes,
    ) -> Result<
        (
            StatusCode,
            Option<reqwest::header::HeaderValue>,
            bytes::Bytes,
        ),
        ApiError,
    > {
        let mut request = self
            .http
            .request(method, format!("{}{API_MODERATION_PATH}{rest}", self.base))
            .bearer_auth(token)
            .header(MODERATOR_HEADER, handle);
        if !body.is_empty() {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(ApiError::Request)?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .cloned();
        let body = response
            .bytes()
            .await
            .map_err(|source| unexpected(status, source))?;
        Ok((status, content_type, body))
    }

    /// A POST on behalf of `client_id`: the answer's body when it succeeds, canvas-api's
    /// refusal when it refuses the client's request.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        client_id: &str,
        body: Option<&serde_json::Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Outcome<T>, ApiError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CLIENT_ID_HEADER, client_id);
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(ApiError::Request)?;
        let status = response.status();
        if status.is_success() {
            let answer = response
                .json()
                .await
                .map_err(|source| unexpected(status, source))?;
            return Ok(Outcome::Done(answer));
        }
        if status.is_server_error() {
            return Err(ApiError::Unexpected {
                status,
                source: None,
            });
        }
        if status == StatusCode::UNAUTHORIZED {
            // Not the player's doing: the canvas is misconfigured (or mid-upgrade).
            return Err(ApiError::Unauthorized);
        }
        let retry_after_ms = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok())
            .map(|seconds| seconds.saturating_mul(1000));
        let answer: ErrorAnswer = response
            .json()
            .await
            .map_err(|source| unexpected(status, source))?;
        Ok(Outcome::Refused {
            code: answer.error.code,
            message: answer.error.message,
            retry_after_ms: answer.error.retry_after_ms.or(retry_after_ms),
        })
    }

    /// The updates with versions `after + 1 ..= upto`, oldest first, read page by page from
    /// `GET /api/v1/history`.
    pub async fn history(&self, after: u64, upto: u64) -> Result<Vec<PixelUpdate>, HistoryError> {
        let mut updates: Vec<PixelUpdate> = Vec::new();
        let mut since = after;
        while since < upto {
            let before = since;
            let response = self
                .http
                .get(format!("{}{API_HISTORY_PATH}?since={since}", self.base))
                .send()
                .await
                .map_err(ApiError::Request)?;
            let status = response.status();
            if status == StatusCode::GONE {
                return Err(HistoryError::Gone { since });
            }
            if !status.is_success() {
                return Err(ApiError::Unexpected {
                    status,
                    source: None,
                }
                .into());
            }
            let page: HistoryAnswer = response
                .json()
                .await
                .map_err(|source| unexpected(status, source))?;
            for update in page.updates.into_iter().take_while(|u| u.version <= upto) {
                if update.version != since + 1 {
                    return Err(HistoryError::NotContiguous { since });
                }
                since = update.version;
                updates.push(update);
            }
            if !page.more || since == before {
                break;
            }
        }
        if since < upto {
            // The canvas is behind the version asked for: it was reset.
            return Err(HistoryError::Gone { since });
        }
        Ok(updates)
    }
}

fn unexpected(status: StatusCode, source: reqwest::Error) -> ApiError {
    ApiError::Unexpected {
        status,
        source: Some(source),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// One HTTP/1.1 request read off `stream`: its head, as text, and nothing else (the
    /// body is small and arrives with it).
    async fn request_head(stream: &mut TcpStream) -> String {
        let mut read = Vec::new();
        let mut buffer = [0u8; 4096];
        while !String::from_utf8_lossy(&read).contains("\r\n\r\n") {
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(n > 0, "the request ended early");
            read.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&read).to_lowercase()
    }

    fn key_of(head: &str) -> Option<String> {
        head.lines()
            .find_map(|line| line.strip_prefix(&format!("{IDEMPOTENCY_KEY_HEADER}: ")))
            .map(str::to_owned)
    }

    /// A canvas-api stand-in whose connections do `script[n]` in turn: `None` closes the
    /// connection once the request is read, `Some(answer)` sends it. The keys it saw.
    async fn canvas_api(script: Vec<Option<&'static str>>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let seen = keys.clone();
        tokio::spawn(async move {
            for step in script {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let head = request_head(&mut stream).await;
                seen.lock()
                    .expect("lock")
                    .push(key_of(&head).unwrap_or_default());
                if let Some(answer) = step {
                    stream.write_all(answer.as_bytes()).await.expect("write");
                }
            }
        });
        (base, keys)
    }

    const PLACED: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                          content-length: 29\r\nconnection: close\r\n\r\n\
                          {\"version\":7,\"placedAtMs\":12}";
    const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\
                               connection: close\r\n\r\n";

    fn client(base: &str) -> ApiClient {
        ApiClient::new(
            base,
            "a-token-long-enough-for-tests",
            Duration::from_secs(5),
        )
        .expect("client")
    }

    /// The first connection is lost after the request was sent, as when a canvas-api pod
    /// stops: the placement is sent once more with the same key, and its answer is the
    /// player's.
    #[tokio::test]
    async fn a_placement_lost_with_its_connection_is_sent_again_with_the_same_key() {
        let (base, keys) = canvas_api(vec![None, Some(PLACED)]).await;
        let outcome = client(&base).place("a", 1, 2, 3).await.expect("placed");
        assert_eq!(
            outcome,
            Outcome::Done(Placed {
                version: 7,
                placed_at_ms: 12
            })
        );
        let keys = keys.lock().expect("lock").clone();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0].len(), 32, "{keys:?}");
        assert_eq!(keys[0], keys[1], "the retry names the same placement");
    }

    /// Once only: a second loss is the player's error to see.
    #[tokio::test]
    async fn a_placement_is_sent_again_once_at_most() {
        let (base, keys) = canvas_api(vec![None, None, Some(PLACED)]).await;
        let outcome = client(&base).place("a", 1, 2, 3).await;
        assert!(matches!(outcome, Err(ApiError::Request(_))), "{outcome:?}");
        assert_eq!(keys.lock().expect("lock").len(), 2);
    }

    /// An answer, even a failing one, means canvas-api decided: nothing is sent again.
    #[tokio::test]
    async fn an_answered_placement_is_never_sent_again() {
        let (base, keys) = canvas_api(vec![Some(UNAVAILABLE), Some(PLACED)]).await;
        let outcome = client(&base).place("a", 1, 2, 3).await;
        assert!(
            matches!(outcome, Err(ApiError::Unexpected { .. })),
            "{outcome:?}"
        );
        assert_eq!(keys.lock().expect("lock").len(), 1);
    }

    /// Every placement has a key of its own.
    #[tokio::test]
    async fn each_placement_has_its_own_key() {
        let (base, keys) = canvas_api(vec![Some(PLACED), Some(PLACED)]).await;
        let api = client(&base);
        api.place("a", 1, 2, 3).await.expect("placed");
        api.place("a", 1, 2, 3).await.expect("placed");
        let keys = keys.lock().expect("lock").clone();
        assert_ne!(keys[0], keys[1], "{keys:?}");
    }
}
