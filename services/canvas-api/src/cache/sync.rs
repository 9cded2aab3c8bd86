//! What the cache knows about the canvas, and when memory may answer for it: the state
//! machine behind [`SnapshotCache`](super::SnapshotCache), free of I/O and of the clock
//! (every method that needs the time is given it), so its rules are tested with made-up
//! instants.
//!
//! Read your writes: every version this replica acknowledged or served is `known`, and
//! memory never answers with anything older. Staleness: memory answers only while Redis's
//! last word that nothing newer exists (`confirmed`) is younger than `max_age`. Monotonicity:
//! what memory serves only moves forward, unless Redis itself went back.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use pixel_common::wire::PixelUpdate;

use super::snapshot::CachedSnapshot;

/// Updates kept for a snapshot nobody asked for yet; past that, a full read is cheaper.
const MAX_PENDING: usize = 1 << 16;

/// The cache's knowledge; kept behind one short-held lock.
#[derive(Debug)]
pub(super) struct SyncState {
    max_age: Duration,
    palette_len: u8,
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

/// What a refresh from Redis started from; handed back when it ends.
#[derive(Debug)]
pub(super) struct RefreshStart {
    epoch: u64,
    known: u64,
    /// The snapshot held when the refresh began: a version check can only vouch for it.
    pub(super) current: Option<Arc<CachedSnapshot>>,
}

impl SyncState {
    pub(super) fn new(max_age: Duration, palette_len: u8) -> Self {
        Self {
            max_age,
            palette_len,
            current: None,
            confirmed: None,
            pending: Vec::new(),
            known: 0,
            epoch: 0,
            live: false,
            synced: false,
            last_delivered: 0,
        }
    }

    /// Records a version this replica acknowledged (a placement's answer): no later
    /// snapshot from here is older.
    pub(super) fn acknowledged(&mut self, version: u64) {
        self.known = self.known.max(version);
    }

    /// Redis vouched for the canvas less than `max_age` before `now`.
    fn confirmed_recently(&self, now: Instant) -> bool {
        self.confirmed
            .is_some_and(|confirmed| now.saturating_duration_since(confirmed) < self.max_age)
    }

    /// The snapshot to serve at `now` when memory suffices: recent evidence, nothing newer
    /// known.
    pub(super) fn served_from_memory(&mut self, now: Instant) -> Option<Arc<CachedSnapshot>> {
        self.catch_up();
        let current = self.current.as_ref()?;
        (self.confirmed_recently(now) && current.version() >= self.known)
            .then(|| Arc::clone(current))
    }

    /// Memory cannot answer at `now`, but the subscription will bring what is missing (an
    /// acknowledged version still on its way), so waiting for it beats asking Redis.
    pub(super) fn worth_waiting(&self, now: Instant) -> bool {
        self.synced && self.live && self.current.is_some() && self.confirmed_recently(now)
    }

    /// Notes what a refresh from Redis starts from.
    pub(super) fn refresh_started(&self) -> RefreshStart {
        RefreshStart {
            epoch: self.epoch,
            known: self.known,
            current: self.current.clone(),
        }
    }

    /// A version check begun at `started` found Redis at `version`: when that is still the
    /// snapshot held since `start`, and not older than anything known then, Redis vouched
    /// for it and it is served. `None`: the canvas must be read.
    pub(super) fn version_checked(
        &mut self,
        start: &RefreshStart,
        version: u64,
        started: Instant,
    ) -> Option<Arc<CachedSnapshot>> {
        let held = start.current.as_ref()?;
        let unchanged = self
            .current
            .as_ref()
            .is_some_and(|c| c.version() == version && Arc::ptr_eq(c, held));
        if !(unchanged && version >= start.known) {
            return None;
        }
        self.settle(started, start.epoch);
        Some(Arc::clone(held))
    }

    /// A full read begun at `started` brought `snapshot`: it becomes the current one, with
    /// whatever the subscription delivered since applied. Returns what to serve.
    pub(super) fn canvas_read(
        &mut self,
        start: &RefreshStart,
        snapshot: Arc<CachedSnapshot>,
        started: Instant,
    ) -> Arc<CachedSnapshot> {
        let version = snapshot.version();
        if version < start.known {
            // Redis lost acknowledged placements (a crash between fsyncs, a restore): follow
            // it, there is no newer canvas to serve.
            tracing::warn!(
                version,
                known = start.known,
                "Redis's canvas version went back; serving what it holds"
            );
            self.known = version;
        }
        self.current = Some(Arc::clone(&snapshot));
        self.settle(started, start.epoch);
        self.catch_up();
        let current = self.current.clone().unwrap_or(snapshot);
        self.known = self.known.max(current.version());
        current
    }

    /// After Redis vouched for `current` at `started`: it is confirmed then, and in sync when
    /// the same subscription was open all along (so every later update reaches `pending`).
    fn settle(&mut self, started: Instant, epoch: u64) {
        self.confirmed = Some(started);
        let Some(version) = self.current.as_ref().map(|c| c.version()) else {
            return;
        };
        self.pending.retain(|update| update.version > version);
        let contiguous = self
            .pending
            .first()
            .is_none_or(|first| Some(first.version) == version.checked_add(1));
        self.synced = self.live && self.epoch == epoch && contiguous;
        if !self.synced {
            self.pending.clear();
        }
    }

    /// A subscription opened; returns its epoch. What it missed while none was open is
    /// unknown, so memory answers again only after Redis vouches anew.
    pub(super) fn subscribed(&mut self) -> u64 {
        self.epoch += 1;
        self.live = true;
        self.last_delivered = 0;
        self.lose_sync("resubscribed", true);
        self.epoch
    }

    /// The subscription ended.
    pub(super) fn unsubscribed(&mut self) {
        self.epoch += 1;
        self.live = false;
        self.lose_sync("subscription lost", false);
    }

    /// The subscription delivered `update`. True when it was kept, for a waiting request
    /// to look again.
    pub(super) fn delivered(&mut self, update: PixelUpdate) -> bool {
        if self.last_delivered != 0 && update.version <= self.last_delivered {
            // One subscription delivers versions in order: going back means Redis did.
            self.last_delivered = update.version;
            self.lose_sync("versions went back", true);
            return false;
        }
        self.last_delivered = update.version;
        self.known = self.known.max(update.version);
        let current = self.current.as_ref().map_or(0, |c| c.version());
        let expected = self
            .pending
            .last()
            .map_or(current, |last| last.version)
            .saturating_add(1);
        if update.version <= current {
            // Already in the snapshot (published before it was read, delivered after).
            return false;
        }
        if self.synced && update.version != expected {
            self.lose_sync("gap in versions", true);
            return false;
        }
        if self.pending.len() >= MAX_PENDING {
            self.lose_sync("too many updates pending", true);
            return false;
        }
        self.pending.push(update);
        true
    }

    /// The subscription delivered something unreadable: a lost update.
    pub(super) fn unreadable_update(&mut self) {
        self.lose_sync("unreadable update", true);
    }

    /// The subscription of `epoch` answered a PING sent at `sent`: every update published
    /// before then has been delivered.
    pub(super) fn pong(&mut self, epoch: u64, sent: Instant) {
        if self.synced && self.epoch == epoch {
            self.confirmed = Some(self.confirmed.map_or(sent, |c| c.max(sent)));
        }
    }

    /// Applies the pending updates, so `current` is everything the subscription brought.
    fn catch_up(&mut self) {
        if !self.synced || self.pending.is_empty() {
            return;
        }
        if let Some(current) = &self.current {
            let next = Arc::new(current.with_updates(&self.pending, self.palette_len));
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

#[cfg(test)]
mod tests {
    use pixel_common::canvas::Palette;

    use super::*;
    use crate::cache::snapshot::tests::snapshot;

    const MAX_AGE: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn update(version: u64) -> PixelUpdate {
        PixelUpdate {
            version,
            x: 0,
            y: 0,
            color: 3,
        }
    }

    fn state(max_age: Duration) -> SyncState {
        SyncState::new(max_age, Palette::default().len())
    }

    /// Subscribed, then Redis read at `t0` with the canvas at `version`: in sync.
    fn synced_at(version: u64, t0: Instant) -> (SyncState, u64) {
        let mut state = state(MAX_AGE);
        let epoch = state.subscribed();
        let start = state.refresh_started();
        state.canvas_read(&start, Arc::new(snapshot(version)), t0);
        assert!(state.synced);
        (state, epoch)
    }

    fn served(state: &mut SyncState, now: Instant) -> Option<u64> {
        state.served_from_memory(now).map(|s| s.version())
    }

    #[test]
    fn a_gap_or_a_step_back_loses_sync() {
        let mut state = state(Duration::from_secs(60));
        let now = Instant::now();
        let epoch = state.subscribed();
        state.current = Some(Arc::new(snapshot(5)));
        state.settle(now, epoch);
        assert!(state.synced);
        state.delivered(update(5));
        state.delivered(update(6));
        assert!(state.synced, "a duplicate of the snapshot is harmless");
        let served = state.served_from_memory(now).expect("in memory");
        assert_eq!(served.version(), 6);
        state.delivered(update(8));
        assert!(!state.synced, "version 7 went missing");
        assert!(state.served_from_memory(now).is_none());

        let epoch = state.subscribed();
        state.settle(now, epoch);
        state.delivered(update(7));
        state.delivered(update(7));
        assert!(!state.synced, "a version delivered twice");
    }

    #[test]
    fn an_acknowledged_version_is_never_undercut() {
        let t0 = Instant::now();
        let (mut state, _) = synced_at(5, t0);
        assert_eq!(served(&mut state, t0), Some(5));

        // A placement answered with version 7 before the subscription brought it: memory
        // holds 5, so it may not answer, but the subscription will bring 7.
        state.acknowledged(7);
        assert_eq!(served(&mut state, t0 + MS), None);
        assert!(state.worth_waiting(t0 + MS));
        assert!(state.delivered(update(6)));
        assert_eq!(served(&mut state, t0 + MS), None, "6 is still older than 7");
        assert!(state.delivered(update(7)));
        assert_eq!(served(&mut state, t0 + MS), Some(7));

        // A version check that finds Redis behind what was acknowledged vouches for nothing.
        state.acknowledged(9);
        let start = state.refresh_started();
        assert!(state.version_checked(&start, 7, t0 + 2 * MS).is_none());
    }

    #[test]
    fn without_a_subscription_an_acknowledged_version_needs_redis() {
        let t0 = Instant::now();
        let (mut state, _) = synced_at(5, t0);
        state.unsubscribed();
        assert_eq!(served(&mut state, t0 + MS), Some(5), "the evidence stands");
        state.acknowledged(6);
        assert_eq!(served(&mut state, t0 + MS), None);
        assert!(!state.worth_waiting(t0 + MS), "nothing will bring 6");
    }

    #[test]
    fn memory_answers_only_within_the_max_age_of_the_last_evidence() {
        let t0 = Instant::now();
        let (mut state, epoch) = synced_at(5, t0);
        assert_eq!(served(&mut state, t0 + MAX_AGE - MS), Some(5));
        assert_eq!(served(&mut state, t0 + MAX_AGE), None, "stale");
        assert!(!state.worth_waiting(t0 + MAX_AGE));

        // A PONG vouches from when its PING was sent, never moving the evidence back.
        state.pong(epoch, t0 + 800 * MS);
        assert_eq!(served(&mut state, t0 + MAX_AGE), Some(5));
        assert_eq!(served(&mut state, t0 + 800 * MS + MAX_AGE - MS), Some(5));
        state.pong(epoch, t0 + 100 * MS);
        assert_eq!(served(&mut state, t0 + 800 * MS + MAX_AGE - MS), Some(5));
        assert_eq!(served(&mut state, t0 + 800 * MS + MAX_AGE), None);

        // A PONG from an earlier subscription vouches for nothing.
        let later = t0 + 10 * MAX_AGE;
        state.pong(epoch - 1, later);
        assert_eq!(served(&mut state, later), None);

        // Nor does one when the cache is out of sync.
        state.unreadable_update();
        assert!(!state.synced);
        state.pong(epoch, later);
        assert_eq!(served(&mut state, later), None);

        // Redis answering a version check is fresh evidence again.
        let start = state.refresh_started();
        assert_eq!(
            state.version_checked(&start, 5, later).map(|s| s.version()),
            Some(5)
        );
        assert_eq!(served(&mut state, later + MAX_AGE - MS), Some(5));
    }

    #[test]
    fn without_a_max_age_memory_never_answers() {
        let t0 = Instant::now();
        let mut state = state(Duration::ZERO);
        let epoch = state.subscribed();
        let start = state.refresh_started();
        let read = state.canvas_read(&start, Arc::new(snapshot(5)), t0);
        assert_eq!(read.version(), 5, "the read itself is served");
        state.pong(epoch, t0);
        assert_eq!(served(&mut state, t0), None);
    }

    #[test]
    fn served_versions_never_go_back() {
        let t0 = Instant::now();
        let (mut state, _) = synced_at(5, t0);
        assert!(state.delivered(update(6)));
        assert!(state.delivered(update(7)));
        assert_eq!(served(&mut state, t0), Some(7));

        // An acknowledgement of an older version lowers nothing.
        state.acknowledged(3);
        assert_eq!(served(&mut state, t0), Some(7));

        // A full read that raced the subscription brings an older canvas: what the
        // subscription delivered since it began is applied on top, and is what is served.
        let start = state.refresh_started();
        assert!(state.delivered(update(8)));
        let served_now = state.canvas_read(&start, Arc::new(snapshot(7)), t0 + MS);
        assert_eq!(served_now.version(), 8);
        assert_eq!(served(&mut state, t0 + MS), Some(8));

        // Updates already in the snapshot, delivered late, change nothing.
        let (mut state, _) = synced_at(5, t0);
        assert!(!state.delivered(update(4)));
        assert!(!state.delivered(update(5)));
        assert!(state.synced);
        assert_eq!(served(&mut state, t0), Some(5));
    }

    #[test]
    fn only_redis_going_back_moves_the_canvas_back() {
        let t0 = Instant::now();
        let (mut state, _) = synced_at(9, t0);
        state.unsubscribed();
        // Redis restarted from an older AOF: the read is all there is.
        state.subscribed();
        let start = state.refresh_started();
        let read = state.canvas_read(&start, Arc::new(snapshot(6)), t0 + MS);
        assert_eq!(read.version(), 6);
        assert_eq!(served(&mut state, t0 + MS), Some(6));
        // And from there on forward only.
        state.acknowledged(5);
        assert_eq!(served(&mut state, t0 + MS), Some(6));
    }
}
