//! A placement driver at a fixed rate: `POST /api/v1/pixels` with random valid pixels,
//! request `n` sent at `n / rate` seconds after the start, whatever the answers' latency
//! (up to a bound on requests in flight). Unlike `bench-load`, which sends as fast as the
//! server answers, it models a steady stream of other people's placements.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, bail};
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
    let url = format!("{}/api/v1/pixels", api_url.trim_end_matches('/'));
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut random = XorShift::new(u64::from(rate) ^ duration.as_secs());
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
                "x": random.below(width),
                "y": random.below(height),
                "color": random.below(colours),
            });
            let request = client
                .post(&url)
                .header("X-Client-Id", "bench-frontend")
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

/// A small xorshift generator: random enough for picking pixels, and reproducible.
#[derive(Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // The all-zero state would stay zero.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `bound` (which must be positive).
    pub fn below(&mut self, bound: u32) -> u32 {
        // The remainder is below a u32, so it fits.
        (self.next() % u64::from(bound.max(1))) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_numbers_stay_below_the_bound() {
        let mut random = XorShift::new(7);
        let mut seen = [false; 16];
        for _ in 0..10_000 {
            let n = random.below(16);
            assert!(n < 16);
            seen[n as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "every colour comes up: {seen:?}");
    }

    #[tokio::test]
    async fn refuses_a_zero_rate() {
        let error = run("http://127.0.0.1:1", (10, 10, 2), 0, Duration::from_secs(1))
            .await
            .expect_err("zero rate");
        assert!(error.to_string().contains("positive rate"), "{error}");
    }
}
