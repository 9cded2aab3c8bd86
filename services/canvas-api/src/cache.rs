//! The versioned snapshot, cached in the process so serving the canvas does not cost Redis
//! a full read per request (the lesson of r/place 2017).
//!
//! The cache follows the canvas through the update channel the placement script publishes
//! to: one subscription per process, opened before the snapshot it extends is read, so every
//! placement after that read arrives, in order, and is applied in memory. A PING on the
//! subscription, answered after every message published before it, tells that nothing newer
//! exists; while such evidence is younger than `max_age` a request costs Redis nothing.
//! Without it (subscription down, a gap in the versions, no recent PONG) a request falls back
//! to asking Redis for the version, and reads the whole canvas only when it moved.
//!
//! Read your writes: every version this replica acknowledged (a placement's answer, a snapshot
//! served) is remembered, and no snapshot older than that is served. Each encoding of a
//! version (identity, gzip, br, PNG) is made once, on first request.

use std::{
    io::Write,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use pixel_common::{
    canvas::{CanvasSize, Palette},
    redis_schema::parse_update_message,
    error::ErrorChain,
    wire::{PixelUpdate, SNAPSHOT_HEADER_LEN, Snapshot},
};
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{Notify, OnceCell};

use crate::store::{Store, StoreError};

/// Byte offset of the version in an encoded snapshot (docs/protocol.md, binary snapshot).
const VERSION_OFFSET: usize = 10;
/// Updates kept for a snapshot nobody asked for yet; past that, a full read is cheaper.
const MAX_PENDING: usize = 1 << 16;
/// How long a request waits for the subscription to bring a version this replica already
/// acknowledged, before it reads Redis instead.
const CATCH_UP_WAIT: Duration = Duration::from_millis(50);

/// How a snapshot body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    /// The `Content-Encoding` value; `None` for identity.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some("gzip"),
            Self::Brotli => Some("br"),
        }
    }
}

/// One version of the canvas, encoded once; its compressed forms and PNG are made on first
/// request.
#[derive(Debug)]
pub struct CachedSnapshot {
    version: u64,
    size: CanvasSize,
    /// The binary snapshot: header, then one byte per pixel.
    encoded: Bytes,
    gzip: OnceCell<Bytes>,
    brotli: OnceCell<Bytes>,
    pub png: OnceCell<Bytes>,
}

impl CachedSnapshot {
    fn new(snapshot: &Snapshot) -> Self {
        Self {
            version: snapshot.version(),
            size: snapshot.size(),
            encoded: Bytes::from(snapshot.encode()),
            gzip: OnceCell::new(),
            brotli: OnceCell::new(),
            png: OnceCell::new(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn size(&self) -> CanvasSize {
        self.size
    }

    /// One palette index per pixel, row-major.
    pub fn pixels(&self) -> &[u8] {
        &self.encoded[SNAPSHOT_HEADER_LEN..]
    }

    /// The binary snapshot in `encoding`, compressed on first request (off the async
    /// workers; concurrent requests share one compression).
    pub async fn body(self: &Arc<Self>, encoding: Encoding) -> Result<Bytes, CompressError> {
        let cell = match encoding {
            Encoding::Identity => return Ok(self.encoded.clone()),
            Encoding::Gzip => &self.gzip,
            Encoding::Brotli => &self.brotli,
        };
        let body = cell
            .get_or_try_init(|| {
                let snapshot = Arc::clone(self);
                async move {
                    tokio::task::spawn_blocking(move || compress(&snapshot.encoded, encoding))
                        .await
                        .map_err(|_| CompressError::Aborted)?
                }
            })
            .await?;
        Ok(body.clone())
    }

    /// This snapshot with `updates` (contiguous, starting right after its version) applied.
    fn with_updates(&self, updates: &[PixelUpdate], palette_len: u8) -> Self {
        let mut encoded = self.encoded.to_vec();
        let width = usize::from(self.size.width());
        let height = usize::from(self.size.height());
        let mut version = self.version;
        for update in updates {
            let (x, y) = (usize::from(update.x), usize::from(update.y));
            if x < width && y < height {
                // Like a stored byte outside the palette, an unknown colour reads as 0.
                let color = if update.color < palette_len {
                    update.color
                } else {
                    0
                };
                encoded[SNAPSHOT_HEADER_LEN + y * width + x] = color;
            }
            version = update.version;
        }
        encoded[VERSION_OFFSET..SNAPSHOT_HEADER_LEN].copy_from_slice(&version.to_be_bytes());
        Self {
            version,
            size: self.size,
            encoded: Bytes::from(encoded),
            gzip: OnceCell::new(),
            brotli: OnceCell::new(),
            png: OnceCell::new(),
        }
    }
}

/// Why a compressed body could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("compression failed")]
    Io(#[from] std::io::Error),
    #[error("the compression task was aborted")]
    Aborted,
}

/// Fast settings: a canvas is long runs of few colours, so even these shrink it tenfold,
/// and they are paid once per version, not per request.
fn compress(data: &[u8], encoding: Encoding) -> Result<Bytes, CompressError> {
    let out = match encoding {
        Encoding::Identity => data.to_vec(),
        Encoding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 8),
                flate2::Compression::fast(),
            );
            encoder.write_all(data)?;
            encoder.finish()?
        }
        Encoding::Brotli => {
            let mut out = Vec::with_capacity(data.len() / 8);
            {
                let mut writer = brotli::CompressorWriter::new(&mut out, 64 << 10, 4, 22);
                writer.write_all(data)?;
                writer.flush()?;
            }
            out
        }
    };
    Ok(Bytes::from(out))
}

/// What the cache knows; behind one short-held lock.
#[derive(Debug, Default)]
struct State {
    current: Option<Arc<CachedSnapshot>>,
    /// When Redis last vouched that nothing newer than `current` plus `pending` existed:
    /// the start of a version check or full read, or the sending of a PING the subscription
    /// answered while in sync.
    confirmed: Option<Instant>,
    /// Updates from the subscription newer than `current`, oldest first. While `synced`,
    /// contiguous from `current.version + 1`.
    pending: Vec<PixelUpdate>,
    /// The newest version this replica knows exists: acknowledged to a client, served, or
    /// received from the subscription. Never served anything older.
    known: u64,
    /// Bumped whenever a subscription starts or ends.
    epoch: u64,
    /// A subscription is open (since `epoch` began).
    live: bool,
    /// `current` was read (or checked) while this epoch's subscription was open, and no
    /// update went missing since: `current` plus `pending` is the canvas.
    synced: bool,
    /// The newest version this epoch's subscription delivered.
    last_delivered: u64,
}

impl State {
    /// Applies the pending updates, so `current` is everything the subscription brought.
    fn catch_up(&mut self, palette_len: u8) {
        if !self.synced || self.pending.is_empty() {
            return;
        }
        if let Some(current) = &self.current {
            let next = Arc::new(current.with_updates(&self.pending, palette_len));
            self.current = Some(next);
        }
        self.pending.clear();
    }

    /// Stops trusting the subscription. When updates are known to be missing, the last
    /// evidence is void too: the next request asks Redis. A connection merely lost leaves
    /// it standing, so the snapshot is served for the rest of the max age as without one.
    fn lose_sync(&mut self, why: &'static str, missed_updates: bool) {
        if self.synced {
            tracing::info!(
                reason = why,
                "snapshot cache out of sync; reading Redis again"
            );
        }
        self.synced = false;
        self.pending.clear();
        if missed_updates {
            self.confirmed = None;
        }
    }
}

/// The cache; share it through an `Arc`.
#[derive(Debug)]
pub struct SnapshotCache {
    size: CanvasSize,
    palette: Palette,
    max_age: Duration,
    state: Mutex<State>,
    /// One Redis refresh at a time; the others wait and use its result.
    refresh: tokio::sync::Mutex<()>,
    /// Signalled when the subscription delivers.
    delivered: Notify,
}

impl SnapshotCache {
    pub fn new(size: CanvasSize, palette: &Palette, max_age: Duration) -> Self {
        Self {
            size,
            palette: palette.clone(),
            max_age,
            state: Mutex::new(State::default()),
            refresh: tokio::sync::Mutex::new(()),
            delivered: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a version this replica acknowledged (a placement's answer): no later
    /// snapshot from here is older.
    pub fn acknowledged(&self, version: u64) {
        let mut state = self.lock();
        state.known = state.known.max(version);
    }

    /// The snapshot to serve when memory suffices: recent evidence, nothing newer known.
    fn served_from_memory(&self, state: &mut State) -> Option<Arc<CachedSnapshot>> {
        state.catch_up(self.palette.len());
        let current = state.current.as_ref()?;
        let recent = state
            .confirmed
            .is_some_and(|confirmed| confirmed.elapsed() < self.max_age);
        (recent && current.version >= state.known).then(|| Arc::clone(current))
    }

    /// The current snapshot: from memory when it is known to be current, else after asking
    /// Redis (for the version, and for the canvas when the version moved).
    pub async fn get(&self, store: &Store) -> Result<Arc<CachedSnapshot>, StoreError> {
        let deadline = Instant::now() + CATCH_UP_WAIT;
        loop {
            // Registered before looking, so a delivery in between is not missed.
            let delivered = self.delivered.notified();
            {
                let mut state = self.lock();
                if let Some(snapshot) = self.served_from_memory(&mut state) {
                    return Ok(snapshot);
                }
                // Only an acknowledged version still on its way through the subscription
                // is worth waiting for; anything else needs Redis.
                let waiting_helps = state.synced
                    && state.live
                    && state.current.is_some()
                    && state
                        .confirmed
                        .is_some_and(|confirmed| confirmed.elapsed() < self.max_age);
                if !waiting_helps || Instant::now() >= deadline {
                    break;
                }
            }
            let _ = tokio::time::timeout_at(deadline.into(), delivered).await;
        }
        let _refreshing = self.refresh.lock().await;
        if let Some(snapshot) = self.served_from_memory(&mut self.lock()) {
            return Ok(snapshot);
        }
        self.refresh(store).await
    }

    /// Asks Redis; called by one request at a time.
    async fn refresh(&self, store: &Store) -> Result<Arc<CachedSnapshot>, StoreError> {
        let started = Instant::now();
        let (epoch, known, current) = {
            let state = self.lock();
            (state.epoch, state.known, state.current.clone())
        };
        if let Some(current) = current {
            let version = store.version().await?;
            let mut state = self.lock();
            let unchanged = state
                .current
                .as_ref()
                .is_some_and(|c| c.version == version && Arc::ptr_eq(c, &current));
            if unchanged && version >= known {
                self.settle(&mut state, started, epoch);
                return Ok(current);
            }
        }
        let (version, raw) = store.read_canvas().await?;
        let snapshot = Arc::new(CachedSnapshot::new(&Snapshot::from_stored(
            version,
            self.size,
            &self.palette,
            raw,
        )));
        let mut state = self.lock();
        if version < known {
            // Redis lost acknowledged placements (a crash between fsyncs, a restore): follow
            // it, there is no newer canvas to serve.
            tracing::warn!(
                version,
                known,
                "Redis's canvas version went back; serving what it holds"
            );
            state.known = version;
        }
        state.current = Some(Arc::clone(&snapshot));
        self.settle(&mut state, started, epoch);
        state.catch_up(self.palette.len());
        let current = state.current.clone().unwrap_or(snapshot);
        state.known = state.known.max(current.version);
        Ok(current)
    }

    /// After Redis vouched for `current` at `started`: it is confirmed then, and in sync when
    /// the same subscription was open all along (so every later update reaches `pending`).
    fn settle(&self, state: &mut State, started: Instant, epoch: u64) {
        state.confirmed = Some(started);
        let Some(version) = state.current.as_ref().map(|c| c.version) else {
            return;
        };
        state.pending.retain(|update| update.version > version);
        let contiguous = state
            .pending
            .first()
            .is_none_or(|first| Some(first.version) == version.checked_add(1));
        state.synced = state.live && state.epoch == epoch && contiguous;
        if !state.synced {
            state.pending.clear();
        }
    }

    fn subscribed(&self) -> u64 {
        let mut state = self.lock();
        state.epoch += 1;
        state.live = true;
        state.last_delivered = 0;
        state.lose_sync("resubscribed", true);
        state.epoch
    }

    fn unsubscribed(&self) {
        let mut state = self.lock();
        state.epoch += 1;
        state.live = false;
        state.lose_sync("subscription lost", false);
    }

    fn deliver(&self, update: PixelUpdate) {
        let mut state = self.lock();
        if state.last_delivered != 0 && update.version <= state.last_delivered {
            // One subscription delivers versions in order: going back means Redis did.
            state.last_delivered = update.version;
            state.lose_sync("versions went back", true);
            return;
        }
        state.last_delivered = update.version;
        state.known = state.known.max(update.version);
        let current = state.current.as_ref().map_or(0, |c| c.version);
        let expected = state
            .pending
            .last()
            .map_or(current, |last| last.version)
            .saturating_add(1);
        if update.version <= current {
            // Already in the snapshot (published before it was read, delivered after).
            return;
        }
        if state.synced && update.version != expected {
            state.lose_sync("gap in versions", true);
            return;
        }
        if state.pending.len() >= MAX_PENDING {
            state.lose_sync("too many updates pending", true);
            return;
        }
        state.pending.push(update);
        drop(state);
        self.delivered.notify_waiters();
    }

    /// The subscription answered a PING sent at `sent`: every update published before then
    /// has been delivered.
    fn pong(&self, epoch: u64, sent: Instant) {
        let mut state = self.lock();
        if state.synced && state.epoch == epoch {
            state.confirmed = Some(state.confirmed.map_or(sent, |c| c.max(sent)));
        }
        drop(state);
        self.delivered.notify_waiters();
    }
}

/// Keeps `cache` subscribed to the update channel until the cache is dropped: reconnects
/// with backoff, and pings every `ping_every` (which also detects a dead connection).
pub async fn follow_updates(cache: Weak<SnapshotCache>, store: Store, ping_every: Duration) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.subscribe().await {
            Ok((sink, stream)) => {
                let Some(epoch) = cache.upgrade().map(|c| c.subscribed()) else {
                    return;
                };
                tracing::debug!(epoch, "subscribed to canvas updates");
                backoff = Duration::from_millis(50);
                let ended = follow(&cache, &store, epoch, sink, stream, ping_every).await;
                match cache.upgrade() {
                    Some(cache) => cache.unsubscribed(),
                    None => return,
                }
                if let Err(error) = ended {
                    tracing::warn!(error = %ErrorChain(&error), "canvas update subscription lost");
                }
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "cannot subscribe to canvas updates");
            }
        }
        if cache.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One subscription, until it fails or the cache is gone.
async fn follow(
    cache: &Weak<SnapshotCache>,
    store: &Store,
    epoch: u64,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    ping_every: Duration,
) -> Result<(), StoreError> {
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else {
                    return Err(StoreError::Corrupt("the subscription was closed".to_owned()));
                };
                let Some(cache) = cache.upgrade() else { return Ok(()) };
                handle(&cache, message.get_payload_bytes());
            }
            _ = ping.tick() => {
                let sent = Instant::now();
                store.ping_subscription(&mut sink).await?;
                let Some(cache) = cache.upgrade() else { return Ok(()) };
                // Messages read before the PONG may still sit in the stream's queue.
                while let Some(Some(message)) = stream.next().now_or_never() {
                    handle(&cache, message.get_payload_bytes());
                }
                cache.pong(epoch, sent);
            }
        }
    }
}

fn handle(cache: &SnapshotCache, payload: &[u8]) {
    match parse_update_message(payload) {
        Ok(update) => cache.deliver(update),
        Err(error) => {
            // An update that cannot be read is a lost update.
            tracing::warn!(error = %ErrorChain(&error), "unreadable update message");
            cache.lock().lose_sync("unreadable update", true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64) -> CachedSnapshot {
        let size = CanvasSize::new(4, 2).expect("size");
        let palette = Palette::default();
        CachedSnapshot::new(&Snapshot::from_stored(version, size, &palette, vec![1; 8]))
    }

    #[test]
    fn updates_are_applied_to_a_copy_with_the_new_version() {
        let base = snapshot(5);
        let updates = [
            PixelUpdate {
                version: 6,
                x: 3,
                y: 1,
                color: 2,
            },
            PixelUpdate {
                version: 7,
                x: 9,
                y: 0,
                color: 2,
            },
            PixelUpdate {
                version: 8,
                x: 0,
                y: 0,
                color: 200,
            },
        ];
        let next = base.with_updates(&updates, 16);
        assert_eq!(next.version(), 8);
        assert_eq!(next.pixels(), [0, 1, 1, 1, 1, 1, 1, 2]);
        let decoded = Snapshot::decode(&next.encoded).expect("valid snapshot");
        assert_eq!(decoded.version(), 8);
        assert_eq!(base.pixels(), [1; 8], "the old version is unchanged");
    }

    #[tokio::test]
    async fn each_encoding_decodes_to_the_snapshot() {
        let cached = Arc::new(snapshot(3));
        let gzip = cached.body(Encoding::Gzip).await.expect("gzip");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gzip[..]), &mut plain)
            .expect("gunzip");
        assert_eq!(plain, cached.encoded);
        let br = cached.body(Encoding::Brotli).await.expect("br");
        let mut plain = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut plain).expect("unbrotli");
        assert_eq!(plain, cached.encoded);
        // Made once: the same bytes come back.
        assert_eq!(
            cached.body(Encoding::Gzip).await.expect("gzip").as_ptr(),
            gzip.as_ptr()
        );
    }

    #[test]
    fn a_gap_or_a_step_back_loses_sync() {
        let cache = SnapshotCache::new(
            CanvasSize::new(4, 2).expect("size"),
            &Palette::default(),
            Duration::from_secs(60),
        );
        let epoch = cache.subscribed();
        {
            let mut state = cache.lock();
            state.current = Some(Arc::new(snapshot(5)));
            cache.settle(&mut state, Instant::now(), epoch);
            assert!(state.synced);
        }
        let update = |version| PixelUpdate {
            version,
            x: 0,
            y: 0,
            color: 3,
        };
        cache.deliver(update(5));
        cache.deliver(update(6));
        assert!(
            cache.lock().synced,
            "a duplicate of the snapshot is harmless"
        );
        let served = cache
            .served_from_memory(&mut cache.lock())
            .expect("in memory");
        assert_eq!(served.version(), 6);
        cache.deliver(update(8));
        assert!(!cache.lock().synced, "version 7 went missing");
        assert!(cache.served_from_memory(&mut cache.lock()).is_none());

        let epoch = cache.subscribed();
        let mut state = cache.lock();
        cache.settle(&mut state, Instant::now(), epoch);
        drop(state);
        cache.deliver(update(7));
        cache.deliver(update(7));
        assert!(!cache.lock().synced, "a version delivered twice");
    }
}
