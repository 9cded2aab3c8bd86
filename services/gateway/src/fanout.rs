//! The fan-out inside one gateway: the subscription task ([`crate::subscriber`]) publishes
//! batches here, every connection reads them from a bounded broadcast channel. A
//! connection's backlog is bounded by the channel's capacity: one that falls further behind
//! sees `Lagged` and is closed (4008), so a slow client never grows memory.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use bytes::Bytes;
use pixel_common::{
    error::ErrorChain,
    wire::{MAX_FRAME_UPDATES, PixelUpdate, UpdateFrame},
};
use tokio::sync::broadcast;

/// What every connection of this process is sent.
#[derive(Debug)]
pub enum Broadcast {
    /// One encoded update frame covering `first..=last`. `received` is when the oldest of
    /// its updates arrived from Redis (for the fan-out lag metric).
    Frame {
        first: u64,
        last: u64,
        bytes: Bytes,
        received: Instant,
    },
    /// Updates up to `version` were lost and could not be recovered: refetch the snapshot.
    Refetch { version: u64 },
}

/// The sending side, shared by the subscription task and the connections.
#[derive(Debug)]
pub struct Fanout {
    tx: broadcast::Sender<Arc<Broadcast>>,
    /// The version of the last update published; `None` until the subscription has
    /// learnt the canvas version once.
    version: Mutex<Option<u64>>,
    /// The last updates published, for reconnecting clients: a gateway restart sends all
    /// its clients to the others at once, and reading each one's missed updates from
    /// canvas-api's history made that a burst of history reads (which timed placements out).
    recent: Mutex<Recent>,
}

/// The updates `after + 1 ..= after + updates.len()`, at most `capacity` of them.
#[derive(Debug)]
struct Recent {
    after: u64,
    updates: VecDeque<PixelUpdate>,
    capacity: usize,
}

impl Recent {
    fn reset(&mut self, version: u64) {
        self.after = version;
        self.updates.clear();
    }

    fn push(&mut self, updates: &[PixelUpdate]) {
        for update in updates {
            if update.version != self.after + self.updates.len() as u64 + 1 {
                // Not contiguous (cannot happen: the subscriber publishes runs in order);
                // start over rather than serve a gap.
                self.reset(update.version.saturating_sub(1));
            }
            if self.updates.len() == self.capacity {
                self.updates.pop_front();
                self.after += 1;
            }
            self.updates.push_back(*update);
        }
    }
}

/// How a newly received version relates to the last one published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// The next one.
    Next,
    /// Already published (it arrived around a (re)subscription).
    Duplicate,
    /// Versions `after + 1 .. version` are missing.
    Gap { after: u64 },
}

/// Where `version` stands after `last`.
pub fn sequence(last: u64, version: u64) -> Sequence {
    if version <= last {
        Sequence::Duplicate
    } else if version == last + 1 {
        Sequence::Next
    } else {
        Sequence::Gap { after: last }
    }
}

/// Contiguous updates as frames of at most [`MAX_FRAME_UPDATES`] each.
pub fn frames(updates: &[PixelUpdate]) -> Vec<UpdateFrame> {
    updates
        .chunks(MAX_FRAME_UPDATES)
        .filter_map(|chunk| match UpdateFrame::new(chunk.to_vec()) {
            Ok(frame) => Some(frame),
            Err(error) => {
                // Callers only pass contiguous runs; a failure here is a bug, logged.
                tracing::error!(error = %ErrorChain(&error), "cannot form an update frame");
                None
            }
        })
        .collect()
}

impl Fanout {
    /// A fan-out whose connections may each fall `capacity` broadcasts behind, keeping the
    /// last `recent` updates for reconnecting clients.
    pub fn new(capacity: usize, recent: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            version: Mutex::new(None),
            recent: Mutex::new(Recent {
                after: 0,
                updates: VecDeque::new(),
                capacity: recent,
            }),
        }
    }

    fn recent_lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The updates `since + 1 ..= upto` when they are all still kept in memory.
    pub fn recent(&self, since: u64, upto: u64) -> Option<Vec<PixelUpdate>> {
        let recent = self.recent_lock();
        let kept_upto = recent.after + recent.updates.len() as u64;
        if since < recent.after || upto > kept_upto || since > upto {
            return None;
        }
        let skip = usize::try_from(since - recent.after).ok()?;
        let take = usize::try_from(upto - since).ok()?;
        Some(
            recent
                .updates
                .iter()
                .skip(skip)
                .take(take)
                .copied()
                .collect(),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.version.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The version of the last update published, once known.
    pub fn version(&self) -> Option<u64> {
        *self.lock()
    }

    /// Sets the starting version, before anything was published.
    pub fn start_at(&self, version: u64) {
        let mut current = self.lock();
        if current.is_none() {
            *current = Some(version);
            self.recent_lock().reset(version);
        }
    }

    /// Subscribes a connection: every update after the returned version will be in the
    /// receiver (or the receiver lags). `None` until the version is known.
    pub fn subscribe(&self) -> Option<(u64, broadcast::Receiver<Arc<Broadcast>>)> {
        let current = self.lock();
        current.map(|version| (version, self.tx.subscribe()))
    }

    /// Publishes contiguous updates following the current version, as frames.
    pub fn publish(&self, updates: &[PixelUpdate], received: Instant) {
        let mut current = self.lock();
        self.recent_lock().push(updates);
        for frame in frames(updates) {
            let (first, last) = frame.versions();
            *current = Some(last);
            // No receivers is fine: nobody is connected.
            let _ = self.tx.send(Arc::new(Broadcast::Frame {
                first,
                last,
                bytes: Bytes::from(frame.encode()),
                received,
            }));
        }
    }

    /// Tells every connection to refetch the snapshot; updates continue after `version`.
    pub fn refetch(&self, version: u64) {
        let mut current = self.lock();
        *current = Some(version);
        self.recent_lock().reset(version);
        let _ = self.tx.send(Arc::new(Broadcast::Refetch { version }));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `count` updates from version `first` on, all at (1, 2) in colour 3.
    pub(crate) fn updates(first: u64, count: u64) -> Vec<PixelUpdate> {
        (first..first + count)
            .map(|version| PixelUpdate {
                version,
                x: 1,
                y: 2,
                color: 3,
            })
            .collect()
    }

    #[test]
    fn recent_updates_are_kept_for_resyncs_until_evicted_or_a_gap() {
        let fanout = Fanout::new(8, 5);
        fanout.start_at(10);
        assert_eq!(fanout.recent(10, 10), Some(vec![]), "nothing missed");
        assert_eq!(fanout.recent(9, 10), None, "before this gateway started");
        fanout.publish(&updates(11, 3), Instant::now());
        assert_eq!(fanout.recent(10, 13), Some(updates(11, 3)));
        assert_eq!(fanout.recent(11, 12), Some(updates(12, 1)));
        assert_eq!(fanout.recent(12, 14), None, "not published yet");
        fanout.publish(&updates(14, 4), Instant::now());
        assert_eq!(fanout.recent(12, 17), Some(updates(13, 5)), "the last five");
        assert_eq!(fanout.recent(11, 17), None, "evicted");
        fanout.refetch(30);
        assert_eq!(fanout.recent(16, 17), None, "forgotten at a gap");
        fanout.publish(&updates(31, 1), Instant::now());
        assert_eq!(fanout.recent(30, 31), Some(updates(31, 1)));
        let none = Fanout::new(8, 0);
        none.start_at(0);
        none.publish(&updates(1, 2), Instant::now());
        assert_eq!(none.recent(0, 2), None, "keeps nothing");
    }

    #[test]
    fn versions_are_sequenced() {
        assert_eq!(sequence(5, 6), Sequence::Next);
        assert_eq!(sequence(5, 5), Sequence::Duplicate);
        assert_eq!(sequence(5, 2), Sequence::Duplicate);
        assert_eq!(sequence(5, 9), Sequence::Gap { after: 5 });
        assert_eq!(sequence(0, 1), Sequence::Next);
    }

    #[test]
    fn long_runs_are_split_into_full_frames() {
        let run = updates(10, MAX_FRAME_UPDATES as u64 + 3);
        let frames = frames(&run);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].versions(), (10, 9 + MAX_FRAME_UPDATES as u64));
        assert_eq!(frames[1].updates().len(), 3);
        assert!(super::frames(&[]).is_empty());
    }

    #[tokio::test]
    async fn subscribers_get_what_follows_their_version() {
        let fanout = Fanout::new(8, 16);
        assert!(fanout.subscribe().is_none(), "no version yet");
        fanout.start_at(4);
        fanout.start_at(99);
        let (version, mut rx) = fanout.subscribe().expect("version known");
        assert_eq!(version, 4);
        fanout.publish(&updates(5, 2), Instant::now());
        fanout.refetch(20);
        assert_eq!(fanout.version(), Some(20));
        match &*rx.recv().await.expect("frame") {
            Broadcast::Frame {
                first, last, bytes, ..
            } => {
                assert_eq!((*first, *last), (5, 6));
                assert_eq!(
                    UpdateFrame::decode(bytes).map(|f| f.updates().to_vec()),
                    Ok(updates(5, 2))
                );
            }
            other => panic!("expected a frame, got {other:?}"),
        }
        assert!(matches!(
            &*rx.recv().await.expect("refetch"),
            Broadcast::Refetch { version: 20 }
        ));
    }
}
