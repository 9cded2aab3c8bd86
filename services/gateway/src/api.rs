//! canvas-api as the gateway calls it: placements, undos and history, over one keep-alive HTTP
//! connection pool, every call bounded by a timeout. Placements go in batches: the ones this
//! gateway's clients make together are sent as one `POST /api/v1/pixels/batch` (each with its
//! own idempotency key and its own answer), which canvas-api applies in one script call.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use pixel_common::{
    ports::{
        API_HISTORY_PATH, API_MODERATION_PATH, API_PIXELS_BATCH_PATH, API_PIXELS_PATH,
        API_UNDO_PATH, CLIENT_ID_HEADER, IDEMPOTENCY_KEY_HEADER, MODERATOR_HEADER,
        PLACEMENT_BATCH_MAX,
    },
    wire::PixelUpdate,
};
use reqwest::{StatusCode, header::RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

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
    /// The batch request this placement went in failed as a whole.
    #[error("the placement's batch failed")]
    Batch(#[source] Arc<ApiError>),
    #[error("the gateway's placement queue is closed")]
    QueueClosed,
    /// Waiting for a batch and its answer took longer than the calls' bound.
    #[error("the placement got no answer within {0:?}")]
    TimedOut(Duration),
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

/// A handle on canvas-api; cheap to clone (the pool and the placement queue are shared).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    /// The bound on each call, a placement's wait for its batch included.
    timeout: Duration,
    /// The batching task's queue, started with the first placement (so on a runtime).
    batches: Arc<OnceLock<mpsc::Sender<Queued>>>,
}

/// One placement of a batch request, as canvas-api reads it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchPlacement {
    client_id: String,
    x: i64,
    y: i64,
    color: i64,
    idempotency_key: String,
}

/// A placement waiting for its batch, and where its answer goes.
type Queued = (
    BatchPlacement,
    pixel_common::batch::Answer<Outcome<Placed>, ApiError>,
);

#[derive(Debug, Serialize)]
struct BatchRequest<'a> {
    placements: &'a [BatchPlacement],
}

#[derive(Debug, Deserialize)]
struct BatchAnswer {
    results: Vec<BatchResult>,
}

/// One placement's answer: the status `POST /api/v1/pixels` would have given it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchResult {
    status: u16,
    version: Option<u64>,
    placed_at_ms: Option<u64>,
    error: Option<ErrorDetail>,
}

/// Placements waiting for a batch at most; past it, placing waits for room.
const QUEUE: usize = 4 * PLACEMENT_BATCH_MAX;
/// Batch requests in flight at once; placements made meanwhile wait for the next batch,
/// so batches grow with the load and the requests per second stay bounded.
const BATCHES_IN_FLIGHT: usize = 4;

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
            timeout,
            batches: Arc::new(OnceLock::new()),
        })
    }

    /// A placement on behalf of `client_id`, in the next batch request (`POST
    /// /api/v1/pixels/batch`) with the placements other clients make meanwhile; its own
    /// answer. A batch is sent once more if the connection was refused or lost before an
    /// answer (a canvas-api pod stopping mid-rollout): each placement's idempotency key makes
    /// the second send answer as the first did when that one was placed, so a placement is
    /// never applied twice. A canvas-api without the batch endpoint (an older one, mid-
    /// upgrade) gets the batch's placements one by one (`POST /api/v1/pixels`).
    pub async fn place(
        &self,
        client_id: &str,
        x: i64,
        y: i64,
        color: i64,
    ) -> Result<Outcome<Placed>, ApiError> {
        let placement = BatchPlacement {
            client_id: client_id.to_owned(),
            x,
            y,
            color,
            idempotency_key: format!("{:032x}", rand::random::<u128>()),
        };
        let queue = self.batches.get_or_init(|| {
            let (queue, waiting) = mpsc::channel(QUEUE);
            tokio::spawn(send_batches(self.without_queue(), waiting));
            queue
        });
        // Bounded as a whole: behind a full queue and busy batches a placement could wait
        // for several requests' timeouts. One that times out may still be placed, as with
        // a request's timeout; its key keeps it from being placed twice.
        let queued = async {
            let (answer, answered) = oneshot::channel();
            queue
                .send((placement, answer))
                .await
                .map_err(|_| ApiError::QueueClosed)?;
            answered.await.map_err(|_| ApiError::QueueClosed)?
        };
        tokio::time::timeout(self.timeout, queued)
            .await
            .map_err(|_| ApiError::TimedOut(self.timeout))?
    }

    /// This client for the batching task: without the queue, so that the task ends when
    /// the last handle holding it is dropped.
    fn without_queue(&self) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            timeout: self.timeout,
            batches: Arc::new(OnceLock::new()),
        }
    }

    /// One placement alone (`POST /api/v1/pixels`), sent once more like a batch.
    async fn place_one(&self, placement: &BatchPlacement) -> Result<Outcome<Placed>, ApiError> {
        let body =
            serde_json::json!({"x": placement.x, "y": placement.y, "color": placement.color});
        let send = || {
            self.post(
                API_PIXELS_PATH,
                &placement.client_id,
                Some(&body),
                Some(&placement.idempotency_key),
            )
        };
        retried(send).await
    }

    /// One batch request: each placement's answer, in order, or why there is none.
    async fn place_batch(
        &self,
        placements: &[BatchPlacement],
    ) -> Result<Vec<Result<Outcome<Placed>, ApiError>>, ApiError> {
        let send = || async {
            let response = self
                .http
                .post(format!("{}{API_PIXELS_BATCH_PATH}", self.base))
                .json(&BatchRequest { placements })
                .send()
                .await
                .map_err(ApiError::Request)?;
            let status = response.status();
            Ok((status, response))
        };
        let (status, response) = retried(send).await?;
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            // An older canvas-api: its placements one by one, concurrently.
            let answers =
                futures_util::future::join_all(placements.iter().map(|p| self.place_one(p)));
            return Ok(answers.await);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(ApiError::Unauthorized);
        }
        if !status.is_success() {
            return Err(ApiError::Unexpected {
                status,
                source: None,
            });
        }
        let answer: BatchAnswer = response
            .json()
            .await
            .map_err(|source| unexpected(status, source))?;
        if answer.results.len() != placements.len() {
            return Err(ApiError::Unexpected {
                status,
                source: None,
            });
        }
        Ok(answer.results.into_iter().map(batch_outcome).collect())
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

/// `send`, and once more after [`RETRY_DELAY`] when its connection was refused or lost
/// before an answer.
async fn retried<T, F>(send: impl Fn() -> F) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ApiError>>,
{
    match send().await {
        Err(ApiError::Request(error)) if worth_retrying(&error) => {
            tracing::debug!(error = %pixel_common::error::ErrorChain(&error), "placements sent again");
            tokio::time::sleep(RETRY_DELAY).await;
            send().await
        }
        outcome => outcome,
    }
}

/// One placement's answer in a batch, as the same answer alone would have been read.
fn batch_outcome(result: BatchResult) -> Result<Outcome<Placed>, ApiError> {
    let status = StatusCode::from_u16(result.status).unwrap_or(StatusCode::BAD_GATEWAY);
    match (status, result) {
        (
            StatusCode::OK,
            BatchResult {
                version: Some(version),
                placed_at_ms: Some(placed_at_ms),
                ..
            },
        ) => Ok(Outcome::Done(Placed {
            version,
            placed_at_ms,
        })),
        (StatusCode::UNAUTHORIZED, _) => Err(ApiError::Unauthorized),
        (
            status,
            BatchResult {
                error: Some(error), ..
            },
        ) if status.is_client_error() => Ok(Outcome::Refused {
            code: error.code,
            message: error.message,
            retry_after_ms: error.retry_after_ms,
        }),
        (status, _) => Err(ApiError::Unexpected {
            status,
            source: None,
        }),
    }
}

/// The batching task: waits for a placement, then sends every placement waiting (up to
/// [`PLACEMENT_BATCH_MAX`]) as one request, up to [`BATCHES_IN_FLIGHT`] at once. No batch
/// waits to fill: an idle gateway sends a placement at once.
async fn send_batches(api: ApiClient, mut waiting: mpsc::Receiver<Queued>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut taken = Vec::with_capacity(PLACEMENT_BATCH_MAX);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        if waiting.recv_many(&mut taken, PLACEMENT_BATCH_MAX).await == 0 {
            return;
        }
        let (placements, answers): (Vec<BatchPlacement>, Vec<_>) = taken.drain(..).unzip();
        let api = api.clone();
        tokio::spawn(async move {
            let results = api.place_batch(&placements).await;
            if let Err(error) = &results {
                tracing::warn!(
                    error = %pixel_common::error::ErrorChain(error),
                    placements = placements.len(),
                    "cannot forward a batch of placements"
                );
            }
            pixel_common::batch::answer_each(answers, results, ApiError::Batch);
            drop(slot);
        });
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

    /// One HTTP/1.1 request read off `stream`: its head, lowercased, and its body.
    async fn request(stream: &mut TcpStream) -> (String, String) {
        let mut read = Vec::new();
        let mut buffer = [0u8; 4096];
        let end = loop {
            if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(n > 0, "the request ended early");
            read.extend_from_slice(&buffer[..n]);
        };
        let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().expect("length"));
        while read.len() < end + length {
            let n = stream.read(&mut buffer).await.expect("read");
            assert!(n > 0, "the body ended early");
            read.extend_from_slice(&buffer[..n]);
        }
        (
            head,
            String::from_utf8_lossy(&read[end..end + length]).into_owned(),
        )
    }

    /// The request's path and the idempotency key of its (first) placement, from the
    /// header of a single placement or the body of a batch.
    fn path_and_key(head: &str, body: &str) -> (String, String) {
        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let header = head
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{IDEMPOTENCY_KEY_HEADER}: ")))
            .map(str::to_owned);
        let key = header.unwrap_or_else(|| {
            serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|b| {
                    b["placements"][0]["idempotencyKey"]
                        .as_str()
                        .map(str::to_owned)
                })
                .unwrap_or_default()
        });
        (path, key)
    }

    /// A canvas-api stand-in whose connections do `script[n]` in turn: `None` closes the
    /// connection once the request is read, `Some(answer)` sends it. The paths and keys it
    /// saw.
    async fn canvas_api(
        script: Vec<Option<&'static str>>,
    ) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for step in script {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let (head, body) = request(&mut stream).await;
                log.lock().expect("lock").push(path_and_key(&head, &body));
                if let Some(answer) = step {
                    stream.write_all(answer.as_bytes()).await.expect("write");
                }
            }
        });
        (base, seen)
    }

    const PLACED: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                          content-length: 29\r\nconnection: close\r\n\r\n\
                          {\"version\":7,\"placedAtMs\":12}";
    const PLACED_BATCH: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                          content-length: 56\r\nconnection: close\r\n\r\n\
                          {\"results\":[{\"status\":200,\"version\":7,\"placedAtMs\":12}]}";
    const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\
                               connection: close\r\n\r\n";
    const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\
                               connection: close\r\n\r\n";

    fn client(base: &str) -> ApiClient {
        ApiClient::new(
            base,
            "a-token-long-enough-for-tests",
            Duration::from_secs(5),
        )
        .expect("client")
    }

    const SEVEN: Outcome<Placed> = Outcome::Done(Placed {
        version: 7,
        placed_at_ms: 12,
    });

    /// The first connection is lost after the request was sent, as when a canvas-api pod
    /// stops: the batch is sent once more with the same keys, and its answer is the
    /// player's.
    #[tokio::test]
    async fn a_placement_lost_with_its_connection_is_sent_again_with_the_same_key() {
        let (base, seen) = canvas_api(vec![None, Some(PLACED_BATCH)]).await;
        let outcome = client(&base).place("a", 1, 2, 3).await.expect("placed");
        assert_eq!(outcome, SEVEN);
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, API_PIXELS_BATCH_PATH);
        assert_eq!(seen[0].1.len(), 32, "{seen:?}");
        assert_eq!(seen[0], seen[1], "the retry names the same placement");
    }

    /// A canvas-api that takes requests and never answers: every batch slot is taken by a
    /// batch waiting for its timeout, so the next placement waits for a slot, then for its
    /// own batch. The bound covers that whole wait, not each request alone.
    #[tokio::test]
    async fn a_placement_queued_behind_stuck_batches_is_answered_within_its_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let bound = Duration::from_millis(300);
        let api = ApiClient::new(&base, "a-token-long-enough-for-tests", bound).expect("client");
        let mut stuck = Vec::new();
        for _ in 0..BATCHES_IN_FLIGHT {
            let api = api.clone();
            stuck.push(tokio::spawn(async move { api.place("a", 1, 2, 3).await }));
            // Each is sent in a batch of its own before the next is made.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let queued = api.place("b", 1, 2, 3).await;
        assert!(
            matches!(queued, Err(ApiError::TimedOut(after)) if after == bound),
            "{queued:?}"
        );
        for placement in stuck {
            let answer = placement.await.expect("task");
            assert!(answer.is_err(), "{answer:?}");
        }
    }

    /// Once only: a second loss is the player's error to see.
    #[tokio::test]
    async fn a_placement_is_sent_again_once_at_most() {
        let (base, seen) = canvas_api(vec![None, None, Some(PLACED_BATCH)]).await;
        let outcome = client(&base).place("a", 1, 2, 3).await;
        assert!(
            matches!(&outcome, Err(ApiError::Batch(error)) if matches!(**error, ApiError::Request(_))),
            "{outcome:?}"
        );
        assert_eq!(seen.lock().expect("lock").len(), 2);
    }

    /// An answer, even a failing one, means canvas-api decided: nothing is sent again.
    #[tokio::test]
    async fn an_answered_placement_is_never_sent_again() {
        let (base, seen) = canvas_api(vec![Some(UNAVAILABLE), Some(PLACED_BATCH)]).await;
        let outcome = client(&base).place("a", 1, 2, 3).await;
        assert!(
            matches!(&outcome, Err(ApiError::Batch(error)) if matches!(**error, ApiError::Unexpected { .. })),
            "{outcome:?}"
        );
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }

    /// Every placement has a key of its own.
    #[tokio::test]
    async fn each_placement_has_its_own_key() {
        let (base, seen) = canvas_api(vec![Some(PLACED_BATCH), Some(PLACED_BATCH)]).await;
        let api = client(&base);
        api.place("a", 1, 2, 3).await.expect("placed");
        api.place("a", 1, 2, 3).await.expect("placed");
        let seen = seen.lock().expect("lock").clone();
        assert_ne!(seen[0].1, seen[1].1, "{seen:?}");
    }

    /// A canvas-api from before the batch endpoint (mid-upgrade) gets the placement alone,
    /// with the same key.
    #[tokio::test]
    async fn an_older_canvas_api_gets_placements_one_by_one() {
        let (base, seen) = canvas_api(vec![Some(NOT_FOUND), Some(PLACED)]).await;
        let outcome = client(&base).place("a", 1, 2, 3).await.expect("placed");
        assert_eq!(outcome, SEVEN);
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen[0].0, API_PIXELS_BATCH_PATH);
        assert_eq!(seen[1].0, API_PIXELS_PATH);
        assert_eq!(seen[0].1, seen[1].1, "the same placement");
    }

    /// Each placement's answer in a batch is read as the same answer alone would be.
    #[test]
    fn batch_answers_map_like_single_ones() {
        let result = |json: &str| batch_outcome(serde_json::from_str(json).expect("json"));
        assert_eq!(
            result(r#"{"status":200,"version":7,"placedAtMs":12}"#).expect("done"),
            SEVEN
        );
        let refused = result(
            r#"{"status":429,"error":{"code":"cooldown","message":"wait","retryAfterMs":900}}"#,
        );
        assert_eq!(
            refused.expect("refused"),
            Outcome::Refused {
                code: "cooldown".to_owned(),
                message: "wait".to_owned(),
                retry_after_ms: Some(900)
            }
        );
        let unavailable =
            result(r#"{"status":503,"error":{"code":"unavailable","message":"later"}}"#);
        assert!(
            matches!(unavailable, Err(ApiError::Unexpected { status, .. }) if status == StatusCode::SERVICE_UNAVAILABLE)
        );
        assert!(matches!(
            result(r#"{"status":401,"error":{"code":"unauthorized","message":"no"}}"#),
            Err(ApiError::Unauthorized)
        ));
        assert!(result(r#"{"status":200}"#).is_err(), "no version");
    }
}
