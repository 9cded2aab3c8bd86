//! Following the update channel: one subscription at a time, reconnected with backoff,
//! each delivery and PONG handed to the cache's [`SyncState`](super::sync::SyncState).

use std::{
    sync::Weak,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use pixel_common::{error::ErrorChain, redis_schema::parse_update_message};
use redis::aio::{PubSubSink, PubSubStream};

use super::SnapshotCache;
use crate::store::{Store, StoreError};

/// Keeps `cache` subscribed to the update channel until the cache is dropped: reconnects
/// with backoff, and pings every `ping_every` (which also detects a dead connection).
pub async fn follow_updates(cache: Weak<SnapshotCache>, store: Store, ping_every: Duration) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.subscribe().await {
            Ok((sink, stream)) => {
                let Some(epoch) = cache.upgrade().map(|c| c.lock().subscribed()) else {
                    return;
                };
                tracing::debug!(epoch, "subscribed to canvas updates");
                backoff = Duration::from_millis(50);
                let ended = follow(&cache, &store, epoch, sink, stream, ping_every).await;
                match cache.upgrade() {
                    Some(cache) => cache.lock().unsubscribed(),
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
                cache.lock().pong(epoch, sent);
                cache.delivered.notify_waiters();
            }
        }
    }
}

fn handle(cache: &SnapshotCache, payload: &[u8]) {
    match parse_update_message(payload) {
        Ok(update) => {
            let kept = cache.lock().delivered(update);
            if kept {
                cache.delivered.notify_waiters();
            }
        }
        Err(error) => {
            // An update that cannot be read is a lost update.
            tracing::warn!(error = %ErrorChain(&error), "unreadable update message");
            cache.lock().unreadable_update();
        }
    }
}
