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
//!
//! By job: [`snapshot`] holds one version and its encodings, [`sync`] decides when memory
//! may answer (no I/O, no clock), [`subscription`] follows the update channel, and this
//! module asks Redis when memory may not.

mod snapshot;
mod subscription;
mod sync;

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use pixel_common::{
    canvas::{CanvasSize, Palette},
    wire::Snapshot,
};
use tokio::sync::Notify;

use self::sync::SyncState;
pub use self::{
    snapshot::{CachedSnapshot, EncodeError, Encoding},
    subscription::follow_updates,
};
use crate::store::{Store, StoreError};

/// How long a request waits for the subscription to bring a version this replica already
/// acknowledged, before it reads Redis instead.
const CATCH_UP_WAIT: Duration = Duration::from_millis(50);

/// The cache; share it through an `Arc`.
#[derive(Debug)]
pub struct SnapshotCache {
    size: CanvasSize,
    palette: Palette,
    state: Mutex<SyncState>,
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
            state: Mutex::new(SyncState::new(max_age, palette.len())),
            refresh: tokio::sync::Mutex::new(()),
            delivered: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a version this replica acknowledged (a placement's answer): no later
    /// snapshot from here is older.
    pub fn acknowledged(&self, version: u64) {
        self.lock().acknowledged(version);
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
                let now = Instant::now();
                if let Some(snapshot) = state.served_from_memory(now) {
                    return Ok(snapshot);
                }
                if !state.worth_waiting(now) || now >= deadline {
                    break;
                }
            }
            let _ = tokio::time::timeout_at(deadline.into(), delivered).await;
        }
        let _refreshing = self.refresh.lock().await;
        if let Some(snapshot) = self.lock().served_from_memory(Instant::now()) {
            return Ok(snapshot);
        }
        self.refresh(store).await
    }

    /// Asks Redis; called by one request at a time.
    async fn refresh(&self, store: &Store) -> Result<Arc<CachedSnapshot>, StoreError> {
        let started = Instant::now();
        let start = self.lock().refresh_started();
        if start.current.is_some() {
            let version = store.version().await?;
            if let Some(current) = self.lock().version_checked(&start, version, started) {
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
        Ok(self.lock().canvas_read(&start, snapshot, started))
    }
}
