//! The fan-out inside one gateway: the subscription task ([`crate::subscriber`]) publishes
//! batches here, every connection reads them from a bounded broadcast channel. A
//! connection's backlog is bounded by the channel's capacity: one that falls further behind
//! sees `Lagged` and is closed (4008), so a slow client never grows memory.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use bytes::Bytes;
use pixel_common::wire::{MAX_FRAME_UPDATES, PixelUpdate, UpdateFrame};
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
                tracing::error!(%error, "cannot form an update frame");
                None
            }
        })
        .collect()
}

impl Fanout {
    /// A fan-out whose connections may each fall `capacity` broadcasts behind.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            version: Mutex::new(None),
        }
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
        let fanout = Fanout::new(8);
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
