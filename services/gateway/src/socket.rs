//! One WebSocket connection, generic over its two halves so tests drive it through
//! channels: a `Sink` of messages to the client and a `Stream` of what the client sent.
//!
//! The connection sends the hello, then (with `?since=`) the missed updates from history,
//! then live update frames from the [`Fanout`], online counts when they change, and the
//! answers to the client's placements, which are forwarded to canvas-api concurrently.
//! Every write is bounded by the send timeout; every limit ends in a documented close code.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{
    FutureExt, Sink, SinkExt, Stream, StreamExt, future::BoxFuture, stream::FuturesUnordered,
};
use pixel_common::error::ErrorChain;
use tokio::{
    sync::{
        broadcast::{
            self,
            error::{RecvError, TryRecvError},
        },
        watch,
    },
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{ApiClient, ApiError, HistoryError, Outcome},
    fanout::{Broadcast, Fanout, frames},
    identity::{Seat, WatchReason},
    metrics::Metrics,
    protocol::{
        CanvasInfo, ClientMessage, IdentityInfo, PROTOCOL_VERSION, RefetchReason, ServerMessage,
        close, code,
    },
    redis_link::Timers,
};

/// How long a closing connection waits for the client's close reply (so unread client
/// data does not reset the connection before our close frame arrives).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The bytes of update frames after which a connection stops gathering more into one write
/// (a write is at most this plus one frame): tungstenite keeps its write buffer at the
/// largest write, so this bounds it per connection.
const MAX_WRITE_BYTES: usize = 16 * 1024;

/// What the client could not send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// A message or frame over the size limit.
    TooLarge,
    /// Anything else: a protocol violation or a broken connection.
    Broken,
}

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Placements per second (token refill rate).
    pub placement_rate: f64,
    /// Placements at once (token bucket size).
    pub placement_burst: u32,
    /// Rejected messages in a row that close the connection (1008).
    pub flood_limit: u32,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    /// The most missed updates sent from history on `?since=`.
    pub resync_max: u64,
}

/// What every connection of a gateway shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shared {
    pub limits: Arc<Limits>,
    pub canvas: Arc<CanvasInfo>,
    pub fanout: Arc<Fanout>,
    pub api: ApiClient,
    pub online: watch::Receiver<u64>,
    pub metrics: Metrics,
    /// Cancelled when the gateway shuts down: connections close with 1001.
    pub stop: CancellationToken,
}

/// Why a connection ended (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    ClientClosed,
    ClientGone,
    ReadFailed,
    SendFailed,
    SendTimedOut,
    Shutdown,
    Unavailable,
    TooBig,
    Binary,
    Flood,
    Idle,
    TooSlow,
}

impl Ended {
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ClientGone => "client_gone",
            Self::ReadFailed => "read_failed",
            Self::SendFailed => "send_failed",
            Self::SendTimedOut => "send_timed_out",
            Self::Shutdown => "shutdown",
            Self::Unavailable => "unavailable",
            Self::TooBig => "too_big",
            Self::Binary => "binary",
            Self::Flood => "flood",
            Self::Idle => "idle",
            Self::TooSlow => "too_slow",
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            burst,
            rate,
            at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / self.rate).min(86_400.0),
            ))
        }
    }
}

type Answer = BoxFuture<'static, ServerMessage>;

struct Connection<S> {
    sink: S,
    shared: Shared,
    seat: Seat,
    /// What the log calls this connection: its handle, or `watcher`.
    who: String,
    timers: Timers,
    bucket: Bucket,
    strikes: u32,
    last_heard: Instant,
}

/// Who a connection is, as its upgrade established it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub seat: Seat,
    /// How long its identity's cooldown and undo still run.
    pub timers: Timers,
    /// The client's last applied version, when it reconnects.
    pub since: Option<u64>,
}

/// Serves one client until it leaves, breaks a limit, or the gateway stops; answers why
/// it ended, and gives the socket's halves back so the caller decides when it closes.
///
/// Everything is set up before the returned future: it carries only the connection
/// itself, and it is most of an idle connection's memory.
pub fn serve<S, R>(
    sink: S,
    mut stream: R,
    shared: Shared,
    arrival: Arrival,
) -> impl Future<Output = (Ended, S, R)> + Send
where
    S: Sink<Message> + Unpin + Send,
    S::Error: std::error::Error + Send + Sync + 'static,
    R: Stream<Item = Result<Message, ReadError>> + Unpin + Send,
{
    let limits = &shared.limits;
    let who = match &arrival.seat {
        Seat::Player(player) => player.handle.clone(),
        Seat::Watcher(_) => "watcher".to_owned(),
    };
    tracing::debug!(client = %who, since = ?arrival.since, "client connected");
    let since = arrival.since;
    let mut connection = Connection {
        sink,
        bucket: Bucket::new(limits.placement_rate, limits.placement_burst),
        shared,
        seat: arrival.seat,
        who,
        timers: arrival.timers,
        strikes: 0,
        last_heard: Instant::now(),
    };
    async move {
        let ended = connection.run(&mut stream, since).await;
        connection.linger(&mut stream).await;
        tracing::debug!(client = %connection.who, reason = ended.label(), "client disconnected");
        (ended, connection.sink, stream)
    }
}

impl<S> Connection<S>
where
    S: Sink<Message> + Unpin + Send,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    async fn run<R>(&mut self, stream: &mut R, since: Option<u64>) -> Ended
    where
        R: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let Some((version, mut updates)) = self.shared.fanout.subscribe() else {
            return self
                .close(
                    close::TRY_AGAIN_LATER,
                    "not subscribed to updates yet",
                    Ended::Unavailable,
                )
                .await;
        };
        let mut online = self.shared.online.clone();
        let count = *online.borrow_and_update();
        // Boxed, like `incoming` below: an awaited call's state is part of the connection's
        // task for its whole life, and the task is most of an idle connection's memory.
        if let Err(ended) = Box::pin(self.start(version, count, since)).await {
            return ended;
        }
        let limits = Arc::clone(&self.shared.limits);
        let mut ping =
            tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
        let mut answers: FuturesUnordered<Answer> = FuturesUnordered::new();
        let stop = self.shared.stop.clone();
        // Once, not per turn of the loop: each `cancelled()` joins the token's waiter list.
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        loop {
            let step = tokio::select! {
                biased;
                () = &mut cancelled => Err(self.close(close::GOING_AWAY, "server shutting down", Ended::Shutdown).await),
                incoming = stream.next() => Box::pin(self.incoming(incoming, &mut answers)).await,
                Some(answer) = answers.next(), if !answers.is_empty() => self.send_json(&answer).await,
                broadcast = updates.recv() => self.broadcast(broadcast, &mut updates).await,
                Ok(()) = online.changed() => {
                    let count = *online.borrow_and_update();
                    self.send_json(&ServerMessage::Online { count }).await
                }
                _ = ping.tick() => self.ping().await,
            };
            if let Err(ended) = step {
                return ended;
            }
        }
    }

    /// The hello, then what a reconnecting client missed.
    async fn start(&mut self, version: u64, online: u64, since: Option<u64>) -> Result<(), Ended> {
        let hello = self.hello(version, online);
        self.send_json(&hello).await?;
        self.resync(since, version).await
    }

    fn hello(&self, version: u64, online: u64) -> ServerMessage {
        let canvas = &self.shared.canvas;
        ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            identity: match &self.seat {
                Seat::Player(player) => Some(IdentityInfo {
                    kind: if player.signed_in() {
                        "signed_in"
                    } else {
                        "anonymous"
                    },
                    handle: player.handle.clone(),
                    name: player.name.clone(),
                }),
                Seat::Watcher(_) => None,
            },
            sign_in: match &self.seat {
                Seat::Player(player) => player.signed_in(),
                Seat::Watcher(reason) => *reason == WatchReason::SignInRequired,
            },
            cooldown_ms: millis(self.timers.cooldown),
            undo_ms: millis(self.timers.undo),
            version,
            canvas: CanvasInfo::clone(canvas),
            online,
        }
    }

    async fn send(&mut self, message: Message) -> Result<(), Ended> {
        self.send_all(vec![message]).await
    }

    /// Writes `messages` with one flush (one write to the socket when they fit its buffer),
    /// within one send timeout.
    async fn send_all(&mut self, messages: Vec<Message>) -> Result<(), Ended> {
        let sink = &mut self.sink;
        let write = async move {
            for message in messages {
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(self.shared.limits.send_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                tracing::debug!(error = %ErrorChain(&error), client = %self.who, "cannot write to the client");
                Err(Ended::SendFailed)
            }
            Err(_) => {
                tracing::info!(client = %self.who, "a write to the client timed out; dropping it");
                Err(Ended::SendTimedOut)
            }
        }
    }

    async fn send_json(&mut self, message: &ServerMessage) -> Result<(), Ended> {
        self.send(Message::Text(message.to_json().into())).await?;
        self.shared.metrics.sent("json");
        Ok(())
    }

    /// Sends a close frame (best effort) and returns why the connection ends. Boxed: it
    /// runs once, and its state would otherwise be carried by every idle connection.
    fn close(&mut self, code: u16, reason: &'static str, ended: Ended) -> BoxFuture<'_, Ended> {
        Box::pin(async move {
            tracing::debug!(client = %self.who, code, reason, "closing the connection");
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = self.send(Message::Close(Some(frame))).await;
            ended
        })
    }

    /// After a close: reads until the client's close reply or the end, within a bound.
    async fn linger<R>(&mut self, stream: &mut R)
    where
        R: Stream<Item = Result<Message, ReadError>> + Unpin,
    {
        let drain = async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
        let _ = tokio::time::timeout(CLOSE_LINGER, self.sink.close()).await;
    }

    /// Sends versions `since + 1 ..= version` from history, or tells the client to refetch.
    async fn resync(&mut self, since: Option<u64>, version: u64) -> Result<(), Ended> {
        // A `since` at or ahead of this gateway's version needs nothing: the client ignores
        // the versions it already has.
        let Some(since) = since.filter(|since| *since < version) else {
            return Ok(());
        };
        let reason = if version - since > self.shared.limits.resync_max {
            RefetchReason::TooFarBehind
        } else {
            let kept = self.shared.fanout.recent(since, version);
            let read = match kept {
                Some(updates) => Ok(updates),
                None => self.shared.api.history(since, version).await,
            };
            match read {
                Ok(updates) => {
                    for frame in frames(&updates) {
                        self.send(Message::Binary(frame.encode().into())).await?;
                        self.shared.metrics.frames_sent(1);
                    }
                    return Ok(());
                }
                Err(HistoryError::Gone { .. }) => RefetchReason::HistoryGone,
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), since, "cannot read the history for a resync");
                    RefetchReason::HistoryUnavailable
                }
            }
        };
        self.send_json(&ServerMessage::Refetch { version, reason })
            .await
    }

    async fn incoming(
        &mut self,
        incoming: Option<Result<Message, ReadError>>,
        answers: &mut FuturesUnordered<Answer>,
    ) -> Result<(), Ended> {
        let message = match incoming {
            None => return Err(Ended::ClientGone),
            Some(Err(ReadError::TooLarge)) => return Err(self.too_big().await),
            Some(Err(ReadError::Broken)) => return Err(Ended::ReadFailed),
            Some(Ok(message)) => message,
        };
        self.last_heard = Instant::now();
        match message {
            Message::Text(text) => {
                self.shared.metrics.received();
                if text.len() > self.shared.limits.max_message_bytes {
                    return Err(self.too_big().await);
                }
                self.text(&text, answers).await
            }
            Message::Binary(_) => {
                self.shared.metrics.received();
                Err(self
                    .close(
                        close::UNSUPPORTED_DATA,
                        "send JSON text messages",
                        Ended::Binary,
                    )
                    .await)
            }
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(_) => Err(Ended::ClientClosed),
        }
    }

    async fn too_big(&mut self) -> Ended {
        self.close(close::MESSAGE_TOO_BIG, "message too big", Ended::TooBig)
            .await
    }

    async fn text(
        &mut self,
        text: &str,
        answers: &mut FuturesUnordered<Answer>,
    ) -> Result<(), Ended> {
        let Ok(message) = serde_json::from_str::<ClientMessage>(text) else {
            let message =
                r#"expected {"type":"place","x":<int>,"y":<int>,"color":<int>} or {"type":"undo"}"#;
            return self
                .reject(id_of(text), code::INVALID_MESSAGE, message, None)
                .await;
        };
        let id = message.id();
        // Undos count against the rate too: each is a write to the canvas.
        if let Err(wait) = self.bucket.take(Instant::now()) {
            self.shared.metrics.placement("rate_limited");
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            let message = "too many placements on this connection; slow down";
            return self
                .reject(id, code::RATE_LIMITED, message, Some(wait_ms))
                .await;
        }
        let client_id = match &self.seat {
            Seat::Player(player) if player.ended() => {
                self.shared.metrics.placement("refused");
                let message = "your sign-in has ended: sign in again";
                return self.reject(id, code::SIGN_IN_REQUIRED, message, None).await;
            }
            Seat::Player(player) => player.id.clone(),
            Seat::Watcher(WatchReason::IssueLimit { until }) => {
                self.shared.metrics.placement("refused");
                let left = until.saturating_duration_since(std::time::Instant::now());
                let retry_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
                let message = "this address was given as many identities as it may for now; \
                               keep your cookie, or place again later";
                return self
                    .reject(id, code::IDENTITY_REQUIRED, message, Some(retry_ms))
                    .await;
            }
            Seat::Watcher(WatchReason::SignInRequired) => {
                self.shared.metrics.placement("refused");
                let message = "this canvas takes placements from signed-in people: sign in";
                return self.reject(id, code::SIGN_IN_REQUIRED, message, None).await;
            }
            Seat::Watcher(WatchReason::Unavailable) => {
                // Redis could not count identities at the upgrade: a new connection may
                // get one, so this one says so and closes for the client to reconnect.
                self.shared.metrics.placement("refused");
                let message = "no identity could be given to this connection; reconnecting";
                self.reject(id, code::IDENTITY_REQUIRED, message, None)
                    .await?;
                return Err(self
                    .close(
                        close::TRY_AGAIN_LATER,
                        "reconnect for an identity",
                        Ended::Unavailable,
                    )
                    .await);
            }
        };
        self.strikes = 0;
        let api = self.shared.api.clone();
        let metrics = self.shared.metrics.clone();
        answers.push(
            async move {
                match message {
                    ClientMessage::Place { x, y, color, .. } => {
                        place(&api, &metrics, &client_id, id, (x, y, color)).await
                    }
                    ClientMessage::Undo { .. } => undo(&api, &metrics, &client_id, id).await,
                }
            }
            .boxed(),
        );
        Ok(())
    }

    /// Answers a refused message, or closes with 1008 when the refusals in a row reach the
    /// flood limit.
    async fn reject(
        &mut self,
        id: Option<u64>,
        code: &str,
        message: &str,
        retry_after_ms: Option<u64>,
    ) -> Result<(), Ended> {
        self.strikes += 1;
        if self.strikes >= self.shared.limits.flood_limit {
            return Err(self
                .close(
                    close::POLICY_VIOLATION,
                    "too many refused messages",
                    Ended::Flood,
                )
                .await);
        }
        self.send_json(&ServerMessage::Error {
            id,
            code: code.to_owned(),
            message: message.to_owned(),
            retry_after_ms,
        })
        .await
    }

    /// Sends a broadcast and every one already published after it, in one write: when the
    /// core is busy a connection's turn comes less often and its write grows, so the writes
    /// per second stay bounded by the core's speed instead of growing with the batch rate.
    /// It stops gathering at [`MAX_WRITE_BYTES`] (the rest waits for the next turn), so one
    /// slow client's write buffer stays bounded.
    async fn broadcast(
        &mut self,
        received: Result<Arc<Broadcast>, RecvError>,
        updates: &mut broadcast::Receiver<Arc<Broadcast>>,
    ) -> Result<(), Ended> {
        let mut gathered = Vec::new();
        let mut bytes = 0;
        let mut next = received;
        loop {
            match next {
                Ok(broadcast) => {
                    if let Broadcast::Frame { bytes: frame, .. } = &*broadcast {
                        bytes += frame.len();
                    }
                    gathered.push(broadcast);
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(client = %self.who, missed, "client fell behind; closing it");
                    return Err(self
                        .close(
                            close::TOO_SLOW,
                            "too slow; reconnect with since",
                            Ended::TooSlow,
                        )
                        .await);
                }
                Err(RecvError::Closed) => {
                    return Err(self
                        .close(close::GOING_AWAY, "server shutting down", Ended::Shutdown)
                        .await);
                }
            }
            if bytes >= MAX_WRITE_BYTES {
                break;
            }
            next = match updates.try_recv() {
                Ok(broadcast) => Ok(broadcast),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
        }
        let messages: Vec<Message> = gathered
            .iter()
            .map(|broadcast| match &**broadcast {
                Broadcast::Frame { bytes, .. } => Message::Binary(bytes.clone()),
                Broadcast::Refetch { version } => Message::Text(
                    ServerMessage::Refetch {
                        version: *version,
                        reason: RefetchReason::Gap,
                    }
                    .to_json()
                    .into(),
                ),
            })
            .collect();
        self.send_all(messages).await?;
        let metrics = &self.shared.metrics;
        let mut frames = 0;
        for broadcast in &gathered {
            match &**broadcast {
                Broadcast::Frame { received, .. } => {
                    frames += 1;
                    metrics.fanout_lag(received.elapsed());
                }
                Broadcast::Refetch { .. } => metrics.sent("json"),
            }
        }
        metrics.frames_sent(frames);
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), Ended> {
        if self.last_heard.elapsed() >= self.shared.limits.idle_timeout {
            return Err(self
                .close(close::IDLE_TIMEOUT, "idle timeout", Ended::Idle)
                .await);
        }
        self.send(Message::Ping(bytes::Bytes::new())).await
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The `id` of a message that did not parse as a whole, when it has one.
fn id_of(text: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()?
        .get("id")?
        .as_u64()
}

/// Forwards a placement to canvas-api and turns its answer into the client's.
async fn place(
    api: &ApiClient,
    metrics: &Metrics,
    client_id: &str,
    id: Option<u64>,
    (x, y, color): (i64, i64, i64),
) -> ServerMessage {
    let outcome = api.place(client_id, x, y, color).await;
    answer(metrics, "accepted", id, outcome, |placed| {
        ServerMessage::Placed {
            id,
            version: placed.version,
            placed_at_ms: placed.placed_at_ms,
        }
    })
}

/// Forwards an undo to canvas-api and turns its answer into the client's.
async fn undo(
    api: &ApiClient,
    metrics: &Metrics,
    client_id: &str,
    id: Option<u64>,
) -> ServerMessage {
    let outcome = api.undo(client_id).await;
    answer(metrics, "undone", id, outcome, |undone| {
        ServerMessage::Undone {
            id,
            version: undone.version,
            x: undone.x,
            y: undone.y,
            color: undone.color,
        }
    })
}

/// The client's answer to canvas-api's: `done` when it did it, its refusal relayed, or
/// `unavailable` when it gave no usable answer. Counts the result.
fn answer<T>(
    metrics: &Metrics,
    done_label: &'static str,
    id: Option<u64>,
    outcome: Result<Outcome<T>, ApiError>,
    done: impl FnOnce(T) -> ServerMessage,
) -> ServerMessage {
    match outcome {
        Ok(Outcome::Done(value)) => {
            metrics.placement(done_label);
            done(value)
        }
        Ok(Outcome::Refused {
            code,
            message,
            retry_after_ms,
        }) => {
            metrics.placement("refused");
            ServerMessage::Error {
                id,
                code,
                message,
                retry_after_ms,
            }
        }
        Err(error) => {
            metrics.placement("unavailable");
            if matches!(error, ApiError::Batch(_)) {
                // Its batch's failure is logged once, where the batch failed.
                tracing::debug!(error = %ErrorChain(&error), "cannot forward a placement");
            } else {
                tracing::warn!(error = %ErrorChain(&error), "cannot forward a placement");
            }
            ServerMessage::error(
                id,
                code::UNAVAILABLE,
                "the canvas is unavailable; try again shortly",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fanout::tests::updates, identity::Player};
    use futures_util::stream;
    use pixel_common::wire::UpdateFrame;
    use serde_json::{Value, json};
    use std::{
        pin::Pin,
        sync::atomic::{AtomicUsize, Ordering},
        task::{Context, Poll},
    };
    use tokio::{sync::mpsc, task::JoinHandle};
    use tokio_util::sync::PollSender;

    /// Bound on waiting for the handler; reached only when it hangs.
    const HANG: Duration = Duration::from_secs(10);

    fn limits() -> Limits {
        Limits {
            max_message_bytes: 256,
            placement_rate: 100.0,
            placement_burst: 10,
            flood_limit: 3,
            ping_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3),
            send_timeout: Duration::from_secs(5),
            resync_max: 10,
        }
    }

    struct Harness {
        fanout: Arc<Fanout>,
        online: watch::Sender<u64>,
        stop: CancellationToken,
        to_server: Option<mpsc::Sender<Result<Message, ReadError>>>,
        from_server: mpsc::Receiver<Message>,
        task: JoinHandle<Ended>,
        /// How many times the handler flushed its sink: its writes to the socket.
        flushes: Arc<AtomicUsize>,
    }

    /// A sink that counts its completed flushes.
    struct Flushes<S> {
        inner: S,
        count: Arc<AtomicUsize>,
    }

    impl<S: Sink<Message> + Unpin> Sink<Message> for Flushes<S> {
        type Error = S::Error;

        fn poll_ready(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.inner).poll_ready(cx)
        }

        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            Pin::new(&mut self.inner).start_send(item)
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            let flushed = Pin::new(&mut self.inner).poll_flush(cx);
            if flushed.is_ready() {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            flushed
        }

        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.inner).poll_close(cx)
        }
    }

    /// A connection at fanout version `version`, whose sink holds `sink_capacity` messages
    /// the test has not read. canvas-api is unreachable (a closed port).
    const TEST_IDENTITY: &str = "anon.0123456789abcdef0123456789abcdef";

    fn start(
        limits: Limits,
        version: u64,
        queue: usize,
        sink_capacity: usize,
        since: Option<u64>,
    ) -> Harness {
        let fanout = Arc::new(Fanout::new(queue, 0));
        fanout.start_at(version);
        let (online_tx, online) = watch::channel(2);
        let stop = CancellationToken::new();
        let shared = Shared {
            limits: Arc::new(limits),
            canvas: Arc::new(CanvasInfo {
                width: 16,
                height: 8,
                palette: vec!["#FFFFFF".into(), "#000000".into()],
                cooldown_seconds: 0,
                undo_seconds: 5,
                read_only: false,
                opens_at_ms: None,
                closes_at_ms: None,
            }),
            fanout: Arc::clone(&fanout),
            api: ApiClient::new(
                "http://127.0.0.1:1",
                "0123456789abcdef",
                Duration::from_secs(2),
            )
            .expect("client"),
            online,
            metrics: Metrics::new(),
            stop: stop.clone(),
        };
        let (sink_tx, from_server) = mpsc::channel(sink_capacity);
        let (to_server, mut incoming) = mpsc::channel(16);
        let stream = stream::poll_fn(move |cx| incoming.poll_recv(cx));
        let flushes = Arc::new(AtomicUsize::new(0));
        let sink = Flushes {
            inner: PollSender::new(sink_tx),
            count: Arc::clone(&flushes),
        };
        let served = serve(
            sink,
            stream,
            shared,
            Arrival {
                seat: Seat::Player(Player::new(TEST_IDENTITY.to_owned())),
                timers: Timers {
                    cooldown: Duration::from_millis(1500),
                    undo: Duration::ZERO,
                },
                since,
            },
        );
        let task = tokio::spawn(async move { served.await.0 });
        Harness {
            fanout,
            online: online_tx,
            stop,
            to_server: Some(to_server),
            from_server,
            task,
            flushes,
        }
    }

    impl Harness {
        async fn next(&mut self) -> Message {
            tokio::time::timeout(HANG, self.from_server.recv())
                .await
                .expect("the handler sends instead of hanging")
                .expect("the handler is still sending")
        }

        async fn json(&mut self) -> Value {
            match self.next().await {
                Message::Text(text) => serde_json::from_str(&text).expect("JSON"),
                other => panic!("expected JSON text, got {other:?}"),
            }
        }

        async fn send(&self, message: Message) {
            let to_server = self.to_server.as_ref().expect("open");
            to_server.send(Ok(message)).await.expect("handler reads");
        }

        async fn text(&self, text: &str) {
            self.send(Message::Text(text.into())).await;
        }

        /// Reads until the close frame and returns its code, then the handler's result.
        async fn closed(mut self) -> (u16, Ended) {
            let code = loop {
                if let Message::Close(frame) = self.next().await {
                    break frame.expect("a close frame has a code").code;
                }
            };
            self.to_server = None;
            let ended = tokio::time::timeout(HANG, self.task)
                .await
                .expect("the handler ends")
                .expect("no panic");
            (code, ended)
        }
    }

    fn frame_versions(message: Message) -> (u64, u64) {
        match message {
            Message::Binary(bytes) => UpdateFrame::decode(&bytes).expect("a frame").versions(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn hello_then_frames_and_online_counts() {
        let mut h = start(limits(), 7, 8, 8, None);
        assert_eq!(
            h.json().await,
            json!({"type": "hello", "protocol": 2,
                   "identity": {"kind": "anonymous", "handle": pixel_common::identity::handle_of(TEST_IDENTITY)},
                   "signIn": false, "cooldownMs": 1500, "undoMs": 0, "version": 7, "width": 16, "height": 8,
                   "palette": ["#FFFFFF", "#000000"], "cooldownSeconds": 0, "undoSeconds": 5,
                   "readOnly": false, "opensAtMs": null, "closesAtMs": null, "online": 2})
        );
        h.fanout.publish(&updates(8, 3), std::time::Instant::now());
        assert_eq!(frame_versions(h.next().await), (8, 10));
        h.online.send(5).expect("watched");
        assert_eq!(h.json().await, json!({"type": "online", "count": 5}));
        h.fanout.refetch(20);
        assert_eq!(
            h.json().await,
            json!({"type": "refetch", "version": 20, "reason": "gap"})
        );
        h.stop.cancel();
        assert_eq!(h.closed().await, (close::GOING_AWAY, Ended::Shutdown));
    }

    #[tokio::test]
    async fn frames_waiting_for_a_busy_connection_go_out_in_order_in_one_write() {
        let mut h = start(limits(), 0, 8, 8, None);
        h.json().await;
        // Published before the handler runs again (one test thread): all three wait.
        for version in 1..=3 {
            h.fanout
                .publish(&updates(version, 1), std::time::Instant::now());
        }
        h.fanout.refetch(9);
        let flushed = h.flushes.load(Ordering::Relaxed);
        for version in 1..=3 {
            assert_eq!(frame_versions(h.next().await), (version, version));
        }
        assert_eq!(
            h.json().await,
            json!({"type": "refetch", "version": 9, "reason": "gap"})
        );
        assert_eq!(
            h.flushes.load(Ordering::Relaxed),
            flushed + 1,
            "three frames and a refetch, one write"
        );
    }

    #[tokio::test]
    async fn invalid_messages_are_answered_and_binary_closes() {
        let mut h = start(limits(), 0, 8, 8, None);
        h.json().await;
        h.text("not json").await;
        let error = h.json().await;
        assert_eq!(error["code"], code::INVALID_MESSAGE, "{error}");
        h.text(r#"{"type":"place","x":"one","id":4}"#).await;
        let error = h.json().await;
        assert_eq!(
            (error["code"].clone(), error["id"].clone()),
            (json!(code::INVALID_MESSAGE), json!(4))
        );
        h.send(Message::Binary(vec![1, 2, 3].into())).await;
        assert_eq!(h.closed().await, (close::UNSUPPORTED_DATA, Ended::Binary));
    }

    #[tokio::test]
    async fn an_unreachable_api_is_an_unavailable_answer() {
        let mut h = start(limits(), 0, 8, 8, None);
        h.json().await;
        h.text(r#"{"type":"place","x":1,"y":2,"color":1,"id":9}"#)
            .await;
        let error = h.json().await;
        assert_eq!(error["code"], code::UNAVAILABLE, "{error}");
        assert_eq!(error["id"], 9);
        assert!(
            !error["message"]
                .as_str()
                .unwrap_or_default()
                .contains("127.0.0.1"),
            "no internals: {error}"
        );
    }

    #[tokio::test]
    async fn oversized_messages_close_with_1009() {
        let mut h = start(limits(), 0, 8, 8, None);
        h.json().await;
        h.text(&"x".repeat(257)).await;
        assert_eq!(h.closed().await, (close::MESSAGE_TOO_BIG, Ended::TooBig));

        let mut h = start(limits(), 0, 8, 8, None);
        h.json().await;
        let to_server = h.to_server.as_ref().expect("open");
        to_server
            .send(Err(ReadError::TooLarge))
            .await
            .expect("reads");
        assert_eq!(h.closed().await, (close::MESSAGE_TOO_BIG, Ended::TooBig));
    }

    #[tokio::test]
    async fn a_flood_above_the_rate_is_refused_then_closed() {
        let mut h = start(
            Limits {
                placement_rate: 0.001,
                placement_burst: 1,
                flood_limit: 3,
                ..limits()
            },
            0,
            8,
            8,
            None,
        );
        h.json().await;
        for id in 0..6 {
            h.text(&format!(
                r#"{{"type":"place","x":1,"y":1,"color":1,"id":{id}}}"#
            ))
            .await;
        }
        let mut limited = Vec::new();
        let code = loop {
            match h.next().await {
                Message::Text(text) => {
                    let answer: Value = serde_json::from_str(&text).expect("JSON");
                    if answer["code"] == code::RATE_LIMITED {
                        assert!(
                            answer["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0),
                            "{answer}"
                        );
                        limited.push(answer["id"].as_u64().expect("id"));
                    }
                }
                Message::Close(frame) => break frame.expect("code").code,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(code, close::POLICY_VIOLATION);
        assert_eq!(limited, [1, 2], "two refusals, the third closes");
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_closed_with_4008() {
        // The sink holds one unread message; the fan-out lets a client fall 2 batches behind.
        let mut h = start(limits(), 0, 2, 1, None);
        h.json().await;
        for version in 1..=10 {
            h.fanout
                .publish(&updates(version, 1), std::time::Instant::now());
        }
        assert_eq!(h.closed().await, (close::TOO_SLOW, Ended::TooSlow));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_closed_with_4000() {
        let mut h = start(limits(), 0, 8, 8, None);
        h.json().await;
        assert!(matches!(h.next().await, Message::Ping(_)));
        h.send(Message::Pong(bytes::Bytes::new())).await;
        let mut pings = 0;
        let code = loop {
            match h.next().await {
                Message::Ping(_) => pings += 1,
                Message::Close(frame) => break frame.expect("code").code,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(code, close::IDLE_TIMEOUT);
        assert!(pings >= 1, "pinged before giving up");
    }

    #[tokio::test]
    async fn a_since_beyond_reach_is_told_to_refetch() {
        let mut h = start(limits(), 100, 8, 8, Some(50));
        assert_eq!(h.json().await["type"], "hello");
        assert_eq!(
            h.json().await,
            json!({"type": "refetch", "version": 100, "reason": "too_far_behind"})
        );
        let mut h = start(limits(), 100, 8, 8, Some(95));
        h.json().await;
        assert_eq!(
            h.json().await,
            json!({"type": "refetch", "version": 100, "reason": "history_unavailable"})
        );
        let mut h = start(limits(), 100, 8, 8, Some(100));
        h.json().await;
        h.fanout
            .publish(&updates(101, 1), std::time::Instant::now());
        assert_eq!(
            frame_versions(h.next().await),
            (101, 101),
            "nothing to resync"
        );
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(2.0, 2);
        assert!(bucket.take(start).is_ok());
        assert!(bucket.take(start).is_ok());
        assert_eq!(bucket.take(start), Err(Duration::from_millis(500)));
        assert!(bucket.take(start + Duration::from_millis(500)).is_ok());
        assert!(bucket.take(start + Duration::from_secs(60)).is_ok());
        assert!(bucket.take(start + Duration::from_secs(60)).is_ok());
        assert!(
            bucket.take(start + Duration::from_secs(60)).is_err(),
            "capped at the burst"
        );
    }
}
