//! Group commit: the placements that reach this replica together go to Redis in one call of
//! the placement script ([`crate::store::PLACE_SCRIPT`]), so Redis and this process pay one
//! round trip, one script run and one reply per batch rather than per placement.
//!
//! One task owns the Redis side. It waits for a placement; then takes every placement
//! already waiting (up to [`MAX_BATCH`]) and runs them as one batch; placements arriving
//! meanwhile wait in a bounded queue for the next. When idle, a placement goes at once: no
//! batch waits to fill. Each placement gets its own answer; a Redis error fails the batch's
//! placements (each caller answers 503); a placement Redis failed fails alone, or with the
//! rest of its batch when it failed part-written (see the script).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Placed, Placement, PlacementRules, Store, StoreError};

/// The most placements one script call carries: Redis runs nothing else while a script
/// runs, so this bounds how long a batch holds it (a few ms at most).
pub const MAX_BATCH: usize = pixel_common::ports::PLACEMENT_BATCH_MAX;
/// Placements waiting for a batch at most; past it, handlers wait for room (back-pressure
/// on the HTTP connections rather than memory without bound).
const QUEUE: usize = 4 * MAX_BATCH;

type Answer = pixel_common::batch::Answer<Placed, StoreError>;

/// The sending side of the queue; cheap to clone. The task stops when every clone is gone.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<(Placement, Answer)>,
}

impl GroupCommit {
    /// Starts the batching task on the current Tokio runtime.
    pub fn start(store: Arc<Store>, rules: PlacementRules) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, rules, waiting));
        Self { queue }
    }

    /// Applies `placement` in the next batch.
    pub async fn place(&self, placement: Placement) -> Result<Placed, StoreError> {
        self.enqueue(placement)
            .await?
            .await
            .map_err(|_| StoreError::QueueClosed)?
    }

    /// Applies `placements` in order (in one batch when they fit), one answer each.
    pub async fn place_all(&self, placements: Vec<Placement>) -> Vec<Result<Placed, StoreError>> {
        let mut answers = Vec::with_capacity(placements.len());
        for placement in placements {
            answers.push(self.enqueue(placement).await);
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(match answer {
                Ok(answer) => answer.await.unwrap_or(Err(StoreError::QueueClosed)),
                Err(error) => Err(error),
            });
        }
        results
    }

    async fn enqueue(
        &self,
        placement: Placement,
    ) -> Result<oneshot::Receiver<Result<Placed, StoreError>>, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send((placement, answer))
            .await
            .map_err(|_| StoreError::QueueClosed)?;
        Ok(answered)
    }
}

/// Runs batches until every sender is gone.
async fn run(
    store: Arc<Store>,
    rules: PlacementRules,
    mut waiting: mpsc::Receiver<(Placement, Answer)>,
) {
    let mut taken = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut taken, MAX_BATCH).await > 0 {
        let (batch, answers): (Vec<Placement>, Vec<Answer>) = taken.drain(..).unzip();
        let results = store.place_batch(&rules, &batch).await;
        pixel_common::batch::answer_each(answers, results, StoreError::Batch);
    }
}
