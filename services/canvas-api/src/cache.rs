//! The versioned snapshot, cached in the process so serving the canvas does not cost Redis
//! a full read per request (the lesson of r/place 2017). A cached snapshot younger than the
//! configured age is served as is; an older one costs one `GET` of the version, and a full
//! read only when the version moved. Concurrent refreshes wait for one another instead of
//! all reading the canvas.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use pixel_common::{
    canvas::{CanvasSize, Palette},
    wire::Snapshot,
};
use tokio::sync::OnceCell;

use crate::store::{Store, StoreError};

/// One version of the canvas, encoded once; its PNG is made on first request.
#[derive(Debug)]
pub struct CachedSnapshot {
    pub snapshot: Snapshot,
    pub encoded: Bytes,
    pub png: OnceCell<Bytes>,
}

impl CachedSnapshot {
    pub fn version(&self) -> u64 {
        self.snapshot.version()
    }
}

/// The cache; share it through an `Arc`.
#[derive(Debug)]
pub struct SnapshotCache {
    size: CanvasSize,
    palette: Palette,
    max_age: Duration,
    current: Mutex<Option<(Arc<CachedSnapshot>, Instant)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl SnapshotCache {
    pub fn new(size: CanvasSize, palette: &Palette, max_age: Duration) -> Self {
        Self {
            size,
            palette: palette.clone(),
            max_age,
            current: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Arc<CachedSnapshot>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .filter(|(_, checked)| checked.elapsed() < self.max_age)
            .map(|(snapshot, _)| Arc::clone(snapshot))
    }

    fn remember(&self, snapshot: &Arc<CachedSnapshot>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        *current = Some((Arc::clone(snapshot), Instant::now()));
    }

    fn cached(&self) -> Option<Arc<CachedSnapshot>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|(snapshot, _)| Arc::clone(snapshot))
    }

    /// The current snapshot, from the cache when it is recent enough or still current.
    pub async fn get(&self, store: &Store) -> Result<Arc<CachedSnapshot>, StoreError> {
        if let Some(snapshot) = self.fresh() {
            return Ok(snapshot);
        }
        let _refreshing = self.refresh.lock().await;
        if let Some(snapshot) = self.fresh() {
            return Ok(snapshot);
        }
        if let Some(snapshot) = self.cached()
            && store.version().await? == snapshot.version()
        {
            self.remember(&snapshot);
            return Ok(snapshot);
        }
        let (version, raw) = store.read_canvas().await?;
        let snapshot = Arc::new(self.build(version, raw));
        self.remember(&snapshot);
        Ok(snapshot)
    }

    fn build(&self, version: u64, raw: Vec<u8>) -> CachedSnapshot {
        let snapshot = Snapshot::from_stored(version, self.size, &self.palette, raw);
        let encoded = Bytes::from(snapshot.encode());
        CachedSnapshot {
            snapshot,
            encoded,
            png: OnceCell::new(),
        }
    }
}
