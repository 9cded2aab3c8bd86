//! The one Redis subscription of a gateway process, and its online-count heartbeat.
//!
//! The subscription task orders what Redis publishes by version: duplicates (around a
//! resubscription) are dropped, a gap (updates published while the subscription was down)
//! is filled from canvas-api's history, or, when that is impossible, every connection is
//! told to refetch the snapshot. Updates are gathered for one batch tick and published to
//! the [`Fanout`] as frames; at the tick, every update already waiting joins the batch, so
//! batches grow when the core is busy.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use pixel_common::{
    error::ErrorChain, redis_schema::parse_update_message, wire::MAX_FRAME_UPDATES,
    wire::PixelUpdate,
};
use tokio::{sync::watch, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::{
    api::ApiClient,
    fanout::{Fanout, Sequence, sequence},
    metrics::Metrics,
    redis_link::{LinkError, RedisLink},
};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The subscription task's settings and handles.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub redis: RedisLink,
    pub api: ApiClient,
    pub fanout: Arc<Fanout>,
    pub metrics: Metrics,
    /// True while the subscription is live (for `/readyz`).
    pub live: Arc<AtomicBool>,
    /// How long updates are gathered into one frame.
    pub batch: Duration,
    /// How often the subscription connection is pinged.
    pub ping_every: Duration,
    /// The largest gap filled from history; past it, clients refetch the snapshot.
    pub resync_max: u64,
}

enum Ended {
    Stopped,
    Lost,
}

/// Updates received and not yet published.
struct Pending {
    updates: Vec<PixelUpdate>,
    since: Option<Instant>,
}

impl Subscriber {
    /// Subscribes, and resubscribes with backoff whenever the subscription is lost, until
    /// `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.session(&stop).await {
                Ok(Ended::Stopped) => return,
                Ok(Ended::Lost) => backoff = MIN_BACKOFF,
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), retry_in = ?backoff, "cannot subscribe to canvas updates");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        self.metrics.subscription(live);
    }

    async fn session(&self, stop: &CancellationToken) -> Result<Ended, LinkError> {
        let (mut sink, mut stream) = self.redis.subscribe().await?;
        // Subscribed first, then the version: anything published in between arrives as a
        // duplicate and is dropped.
        let current = self.redis.version().await?;
        match self.fanout.version() {
            None => self.fanout.start_at(current),
            Some(last) if current > last => self.catch_up(last, current, Instant::now()).await,
            Some(last) if current < last => {
                // Redis came back without its newest writes (killed between fsyncs, or
                // restored): those versions will be issued again for other pixels, so what
                // clients hold past `current` is wrong. Start over from Redis's canvas.
                tracing::warn!(
                    last,
                    current,
                    "the canvas version went back; clients refetch the snapshot"
                );
                self.fanout.refetch(current);
            }
            Some(_) => {}
        }
        self.set_live(true);
        tracing::info!(version = current, "subscribed to canvas updates");

        let mut pending = Pending {
            updates: Vec::new(),
            since: None,
        };
        let mut tick = tokio::time::interval(self.batch);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ping = tokio::time::interval(self.ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        let ended = loop {
            tokio::select! {
                () = stop.cancelled() => break Ended::Stopped,
                message = stream.next() => match message {
                    Some(message) => {
                        self.receive(message.get_payload_bytes(), &mut pending).await;
                        if pending.updates.len() >= MAX_FRAME_UPDATES {
                            self.flush(&mut pending);
                        }
                    }
                    None => {
                        tracing::warn!("Redis subscription lost");
                        break Ended::Lost;
                    }
                },
                _ = tick.tick() => {
                    if !self.take_arrived(&mut stream, &mut pending).await {
                        tracing::warn!("Redis subscription lost");
                        break Ended::Lost;
                    }
                    self.flush(&mut pending);
                }
                _ = ping.tick() => {
                    if let Err(error) = self.redis.bounded(sink.ping::<redis::Value>()).await {
                        tracing::warn!(error = %ErrorChain(&error), "Redis subscription does not answer PING");
                        break Ended::Lost;
                    }
                }
            }
        };
        self.flush(&mut pending);
        self.set_live(false);
        Ok(ended)
    }

    /// Takes into `pending` every update that has already arrived. When the core is busy
    /// this task runs late, with many updates waiting: they belong in this batch, not in
    /// batches of one or two, each costing a write to every client. False when the
    /// subscription ended.
    async fn take_arrived<S>(&self, stream: &mut S, pending: &mut Pending) -> bool
    where
        S: futures_util::Stream<Item = redis::Msg> + Unpin,
    {
        // Lets the Redis connection's task, woken with this one, read what its socket holds.
        tokio::task::yield_now().await;
        loop {
            match stream.next().now_or_never() {
                Some(Some(message)) => self.receive(message.get_payload_bytes(), pending).await,
                Some(None) => return false,
                None => return true,
            }
        }
    }

    async fn receive(&self, payload: &[u8], pending: &mut Pending) {
        let update = match parse_update_message(payload) {
            Ok(update) => update,
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "ignoring a malformed update message");
                return;
            }
        };
        self.metrics.update_received();
        let received = Instant::now();
        let last = pending
            .updates
            .last()
            .map(|u| u.version)
            .or_else(|| self.fanout.version())
            .unwrap_or(0);
        match sequence(last, update.version) {
            Sequence::Duplicate => return,
            Sequence::Next => {}
            Sequence::Gap { after } => {
                self.flush(pending);
                self.catch_up(after, update.version - 1, received).await;
            }
        }
        pending.since.get_or_insert(received);
        pending.updates.push(update);
    }

    fn flush(&self, pending: &mut Pending) {
        if let Some(since) = pending.since.take() {
            self.fanout.publish(&pending.updates, since);
            pending.updates.clear();
        }
    }

    /// Publishes versions `after + 1 ..= upto` from history, or tells clients to refetch.
    async fn catch_up(&self, after: u64, upto: u64, received: Instant) {
        if upto - after > self.resync_max {
            tracing::warn!(
                after,
                upto,
                "too many updates missed; clients refetch the snapshot"
            );
            self.fanout.refetch(upto);
            return;
        }
        match self.api.history(after, upto).await {
            Ok(updates) => {
                tracing::info!(after, upto, "filled a gap in the subscription from history");
                self.fanout.publish(&updates, received);
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), after, upto, "cannot fill a gap from history; clients refetch the snapshot");
                self.fanout.refetch(upto);
            }
        }
    }
}

/// Reports this gateway's connection count every `every` (valid for three periods) and
/// publishes the cluster-wide count to `online`, until `stop`; then removes its entry.
pub async fn report_online(
    redis: RedisLink,
    gateway: String,
    connections: Arc<AtomicUsize>,
    online: watch::Sender<u64>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let count = connections.load(Ordering::Acquire);
        match redis.report_online(&gateway, count, every * 3).await {
            Ok(total) => {
                failing = false;
                online.send_if_modified(|current| std::mem::replace(current, total) != total);
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(error = %ErrorChain(&error), "cannot report the online count");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    if let Err(error) = redis.forget_online(&gateway).await {
        tracing::debug!(error = %ErrorChain(&error), "cannot remove this gateway from the online count");
    }
}
