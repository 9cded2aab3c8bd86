//! A placement driver at a fixed rate: `POST /api/v1/pixels` with random valid pixels,
//! request `n` sent at `n / rate` seconds after the start, whatever the answers' latency
//! (up to a bound on requests in flight). Unlike `pixel-bench load`, which sends as fast as the
//! server answers, it models a steady stream of other people's placements.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, bail};
use pixel_common::ports::{API_PIXELS_PATH, CLIENT_ID_HEADER};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

/// Requests in flight at most; past it the driver waits and its achieved rate falls, which
/// the summary shows.
const MAX_IN_FLIGHT: usize = 64;
/// How often the driver wakes to send what has fallen due.
const TICK: Duration = Duration::from_millis(5);
/// Bound on one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What one driver run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacerSummary {
    pub sent: u64,
    /// `200` answers.
    pub accepted: u64,
    /// Other answers and transport errors.
    pub failed: u64,
    /// Seconds from the first request to the last answer.
    pub elapsed_s: f64,
}

/// Sends `rate` placements per second to canvas-api at `api_url` for `duration` on a
/// canvas of `width` x `height` with `colours` palette entries.
pub async fn run(
    api_url: &str,
    (width, height, colours): (u32, u32, u32),
    rate: u32,
    duration: Duration,
) -> Result<PlacerSummary> {
    if rate == 0 || width == 0 || height == 0 || colours == 0 {
        bail!("the placement driver needs a positive rate, canvas size and palette");
    }
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build()?;
    let url = format!("{}{API_PIXELS_PATH}", api_url.trim_end_matches('/'));
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut random = fastrand::Rng::with_seed(u64::from(rate) ^ duration.as_secs());
    let total = u64::from(rate) * duration.as_millis() as u64 / 1000;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while sent < total {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due.min(total) {
            let permit = Arc::clone(&slots).acquire_owned().await?;
            let body = serde_json::json!({
                "x": random.u32(..width),
                "y": random.u32(..height),
                "color": random.u32(..colours),
            });
            let request = client
                .post(&url)
                .header(CLIENT_ID_HEADER, "bench-frontend")
                .bearer_auth(crate::servers::API_TOKEN)
                .json(&body);
            let (accepted, failed) = (Arc::clone(&accepted), Arc::clone(&failed));
            tasks.spawn(async move {
                let ok = request
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
                let counter = if ok { accepted } else { failed };
                counter.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
            sent += 1;
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(PlacerSummary {
        sent,
        accepted: accepted.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_a_zero_rate() {
        let error = run("http://127.0.0.1:1", (10, 10, 2), 0, Duration::from_secs(1))
            .await
            .expect_err("zero rate");
        assert!(error.to_string().contains("positive rate"), "{error}");
    }
}
