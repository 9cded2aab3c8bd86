//! The HTTP load generator, run as its own process (`pixel-bench load`) so it
//! can be pinned to other cores than the server. N clients, each with its own keep-alive
//! connection and its own client id, send requests back to back for a fixed time; it prints
//! one JSON [`LoadSummary`] on stdout.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use pixel_common::ports::{
    API_CANVAS_PATH, API_INFO_PATH, API_PIXELS_BATCH_PATH, API_PIXELS_PATH, CLIENT_ID_HEADER,
};

use crate::{
    procfs::own_cpu_seconds,
    stats,
    summary::{last_json_line, run_and_print},
};

/// What the clients ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `POST /api/v1/pixels` with random valid pixels.
    Place,
    /// `POST /api/v1/pixels/batch` (the gateway's hop) with `--batch` random valid pixels
    /// a request, each by a client id of its own; counts accepted placements.
    PlaceBatch,
    /// `GET /api/v1/canvas`, reading the whole body.
    Snapshot,
    /// `GET /api/v1/canvas` with a browser's `Accept-Encoding` (gzip, deflate, br), reading
    /// the whole (compressed) body.
    SnapshotBrowser,
    /// `GET /api/v1/canvas` with `If-None-Match` naming the current ETag (expects 304).
    Snapshot304,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// canvas-api's base URL, e.g. http://127.0.0.1:<port>
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    #[arg(long, default_value_t = 5000)]
    pub duration_ms: u64,
    /// Bound on one request.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Placements per request, with `--mode place-batch`.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch: u16,
}

/// What one load run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Answers with the expected status (200 for place and snapshot, 304 for snapshot-304);
    /// for place-batch, placements answered 200 in a 200 answer.
    pub ok: u64,
    /// Everything else: other statuses, transport errors, timeouts.
    pub errors: u64,
    /// Answers by status code; `error` for requests that got none.
    pub statuses: BTreeMap<String, u64>,
    /// Seconds from the first request to the last answer.
    pub elapsed_s: f64,
    /// `ok / elapsed_s`.
    pub ok_per_s: f64,
    /// Latencies of the expected answers, in milliseconds (0 when there were none).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU time this process used over its wall time, per core it may use: near 1.0 means
    /// the load generator itself was the bottleneck.
    #[serde(default)]
    pub cpu_share: f64,
}

impl LoadSummary {
    /// Parses the load generator's stdout.
    pub fn parse(stdout: &str) -> Result<Self> {
        last_json_line(stdout, "the load generator")
    }
}

#[derive(Debug, Deserialize)]
struct Info {
    width: u64,
    height: u64,
    palette: Vec<String>,
}

#[derive(Debug, Default)]
struct ClientTally {
    latencies_us: Vec<u64>,
    statuses: BTreeMap<String, u64>,
    ok: u64,
    errors: u64,
}

/// `pixel-bench load`: runs the load and prints the summary as one JSON line.
pub fn main(args: &LoadArgs) -> Result<()> {
    run_and_print(run(args))
}

async fn run(args: &LoadArgs) -> Result<LoadSummary> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let base = args.url.trim_end_matches('/').to_owned();
    let setup = reqwest::Client::builder().timeout(timeout).build()?;
    let info: Info = setup
        .get(format!("{base}{API_INFO_PATH}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
        .context("cannot read /api/v1/info")?;
    let etag = if args.mode == Mode::Snapshot304 {
        let response = setup
            .get(format!("{base}{API_CANVAS_PATH}"))
            .send()
            .await?
            .error_for_status()?;
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .context("the snapshot carries no ETag")?
            .to_str()
            .context("the ETag is not text")?
            .to_owned();
        drop(response.bytes().await?);
        Some(etag)
    } else {
        None
    };

    let duration = Duration::from_millis(args.duration_ms);
    let cpu_before = own_cpu_seconds();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        // One client per simulated user: its own pool, so its own keep-alive connection.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(1)
            .build()?;
        let job = Job {
            client,
            base: base.clone(),
            mode: args.mode,
            etag: etag.clone(),
            client_id: format!("bench-{index}"),
            batch: usize::from(args.batch),
            width: info.width,
            height: info.height,
            colors: info.palette.len() as u64,
            rng: fastrand::Rng::with_seed(index as u64 + 1),
        };
        tasks.spawn(job.run(deadline));
    }
    let mut total = ClientTally::default();
    // The tasks stop at the deadline, each request bounded by its timeout; this bound
    // only catches a wedged runtime.
    let join_bound = duration + timeout + Duration::from_secs(30);
    let joined = tokio::time::timeout(join_bound, async {
        while let Some(tally) = tasks.join_next().await {
            let tally = tally.context("a load client panicked")?;
            total.ok += tally.ok;
            total.errors += tally.errors;
            total.latencies_us.extend(tally.latencies_us);
            for (status, count) in tally.statuses {
                *total.statuses.entry(status).or_default() += count;
            }
        }
        anyhow::Ok(())
    })
    .await;
    match joined {
        Ok(result) => result?,
        Err(_) => bail!("the load clients did not stop within {join_bound:?}"),
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let cpu_share = (own_cpu_seconds() - cpu_before) / elapsed_s / cores;
    total.latencies_us.sort_unstable();
    let ms =
        |p: f64| stats::percentile_sorted(&total.latencies_us, p).map_or(0.0, |us| us as f64 / 1e3);
    Ok(LoadSummary {
        ok: total.ok,
        errors: total.errors,
        statuses: total.statuses,
        elapsed_s,
        ok_per_s: total.ok as f64 / elapsed_s,
        p50_ms: ms(50.0),
        p99_ms: ms(99.0),
        max_ms: ms(100.0),
        cpu_share: if cpu_share.is_finite() {
            cpu_share
        } else {
            0.0
        },
    })
}

#[derive(Debug)]
struct Job {
    client: reqwest::Client,
    base: String,
    mode: Mode,
    etag: Option<String>,
    client_id: String,
    batch: usize,
    width: u64,
    height: u64,
    colors: u64,
    rng: fastrand::Rng,
}

impl Job {
    async fn run(mut self, deadline: tokio::time::Instant) -> ClientTally {
        let mut tally = ClientTally::default();
        let expected = match self.mode {
            Mode::Place | Mode::PlaceBatch | Mode::Snapshot | Mode::SnapshotBrowser => {
                reqwest::StatusCode::OK
            }
            Mode::Snapshot304 => reqwest::StatusCode::NOT_MODIFIED,
        };
        while tokio::time::Instant::now() < deadline {
            let sent = Instant::now();
            let (status, placed) = self.request().await;
            let took = sent.elapsed();
            let key = status.map_or_else(|| "error".to_owned(), |s| s.as_u16().to_string());
            *tally.statuses.entry(key).or_default() += 1;
            if status == Some(expected) {
                tally.ok += placed;
                tally.errors += self.requested() - placed;
                // Each placement of a batch waited as long as its request.
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                tally.latencies_us.extend(std::iter::repeat_n(
                    us,
                    usize::try_from(placed).unwrap_or(0),
                ));
            } else {
                tally.errors += 1;
                if status.is_none() {
                    // Do not spin on a refused connection.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        tally
    }

    /// What one request asks for: placements, or one read.
    fn requested(&self) -> u64 {
        match self.mode {
            Mode::PlaceBatch => self.batch as u64,
            _ => 1,
        }
    }

    /// A random valid placement.
    fn pixel(&mut self) -> (u64, u64, u64) {
        (
            self.rng.u64(..self.width),
            self.rng.u64(..self.height),
            self.rng.u64(..self.colors),
        )
    }

    /// Sends one request and reads the whole answer: its status (`None` when none came)
    /// and what it did ([`Self::requested`], or the placements of a batch answered 200).
    async fn request(&mut self) -> (Option<reqwest::StatusCode>, u64) {
        if self.mode == Mode::PlaceBatch {
            return self.place_batch().await;
        }
        let request = match self.mode {
            Mode::Place | Mode::PlaceBatch => {
                let (x, y, color) = self.pixel();
                let body = serde_json::json!({"x": x, "y": y, "color": color});
                self.client
                    .post(format!("{}{API_PIXELS_PATH}", self.base))
                    .header(CLIENT_ID_HEADER, &self.client_id)
                    .bearer_auth(crate::servers::API_TOKEN)
                    .json(&body)
            }
            Mode::Snapshot => self.client.get(format!("{}{API_CANVAS_PATH}", self.base)),
            Mode::SnapshotBrowser => self
                .client
                .get(format!("{}{API_CANVAS_PATH}", self.base))
                .header(reqwest::header::ACCEPT_ENCODING, "gzip, deflate, br"),
            Mode::Snapshot304 => {
                let request = self.client.get(format!("{}{API_CANVAS_PATH}", self.base));
                match &self.etag {
                    Some(etag) => request.header(reqwest::header::IF_NONE_MATCH, etag),
                    None => request,
                }
            }
        };
        let Ok(response) = request.send().await else {
            return (None, 0);
        };
        let status = response.status();
        // Read to the end so the connection is reused.
        if response.bytes().await.is_err() {
            return (None, 0);
        }
        (Some(status), 1)
    }

    /// `POST /api/v1/pixels/batch` of [`Self::batch`] placements, each by a client of its
    /// own (`bench-<n>-<k>`), as a gateway sends its clients' placements.
    async fn place_batch(&mut self) -> (Option<reqwest::StatusCode>, u64) {
        let placements: Vec<serde_json::Value> = (0..self.batch)
            .map(|k| {
                let (x, y, color) = self.pixel();
                serde_json::json!({
                    "clientId": format!("{}-{k}", self.client_id),
                    "x": x, "y": y, "color": color,
                })
            })
            .collect();
        let request = self
            .client
            .post(format!("{}{API_PIXELS_BATCH_PATH}", self.base))
            .bearer_auth(crate::servers::API_TOKEN)
            .json(&serde_json::json!({ "placements": placements }));
        let Ok(response) = request.send().await else {
            return (None, 0);
        };
        let status = response.status();
        let Ok(answer) = response.json::<serde_json::Value>().await else {
            return (None, 0);
        };
        let placed = answer["results"].as_array().map_or(0, |results| {
            results.iter().filter(|r| r["status"] == 200).count()
        });
        (Some(status), placed as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_parsed_from_the_last_json_line() {
        let stdout = "warming up\n\
            {\"ok\":10,\"errors\":1,\"statuses\":{\"200\":10,\"error\":1},\"elapsed_s\":2.0,\
             \"ok_per_s\":5.0,\"p50_ms\":1.5,\"p99_ms\":4.0,\"max_ms\":9.0}\n";
        let summary = LoadSummary::parse(stdout).expect("parses");
        assert_eq!(summary.ok, 10);
        assert_eq!(summary.errors, 1);
        assert_eq!(summary.statuses.get("error"), Some(&1));
        assert_eq!(summary.ok_per_s, 5.0);
        assert_eq!(summary.p99_ms, 4.0);
    }

    #[test]
    fn summary_without_json_is_an_error() {
        let error = LoadSummary::parse("nothing here\n").expect_err("no JSON");
        assert!(error.to_string().contains("no JSON summary"), "{error}");
        assert!(LoadSummary::parse("{\"ok\": 1}\n").is_err());
    }
}
