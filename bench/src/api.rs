//! `api-placements` (and its batch-hop row) and `api-snapshot`: canvas-api under our HTTP load generator (`pixel-bench
//! load`, its own process on the load cores) beside `redis-benchmark` running the Redis
//! command each request comes down to, round after round.

use std::{process::Command, time::Duration};

use anyhow::{Result, bail};
use canvas_api::store::{self, Placement, PlacementRate, PlacementRules, ScriptCall};
use pixel_common::redis_schema::{PIXELS_KEY, VERSION_KEY};
use pixel_harness::process;

use crate::{
    commandstats::ScriptTime,
    load::{LoadSummary, Mode},
    redis_bench::{self, RedisFigures},
    report::BenchResult,
    run::{BenchCtx, value_name},
    servers::{
        CANVAS_SIDE, HISTORY_MAX_LEN, LARGEST_CANVAS_SIDE, PLACEMENT_BURST, PLACEMENT_RATE,
        Servers, UNDO_SECONDS,
    },
    stats::{med, per_round},
};

/// Batch requests in flight in `api-placements-batch`: two gateways' worth (each sends up
/// to four at once).
const BATCH_CLIENTS: usize = 8;
/// Placements per batch request there: 256 in flight in all, one full script call's worth.
const BATCH_PLACEMENTS: u16 = 32;

/// Runs our load generator as its own process, pinned to the load cores.
fn run_load(
    ctx: &BenchCtx,
    servers: &mut Servers,
    mode: Mode,
    duration: Duration,
) -> Result<LoadSummary> {
    let duration_ms = u64::try_from(duration.as_millis())?;
    let clients = if mode == Mode::PlaceBatch {
        BATCH_CLIENTS
    } else {
        ctx.clients
    };
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &ctx.machine.load_cores])
        .arg(&ctx.bench_bin)
        .args(["load", "--url", &servers.api_url])
        .args(["--mode", &value_name(mode)?])
        .args(["--clients", &clients.to_string()])
        .args(["--batch", &BATCH_PLACEMENTS.to_string()])
        .args(["--duration-ms", &duration_ms.to_string()]);
    let out = process::output(&mut cmd, duration + Duration::from_secs(120))?;
    servers.check_running()?;
    let summary = LoadSummary::parse(&out)?;
    if summary.ok == 0 {
        bail!(
            "no request of `{}` succeeded: {:?}; see {}",
            process::describe(&cmd),
            summary.statuses,
            ctx.log_dir.display()
        );
    }
    Ok(summary)
}

/// Redis and canvas-api with a `side` x `side` canvas, after a second of placements: the
/// connections, the script cache and the allocator warm, the canvas at a version.
fn warmed_up(ctx: &BenchCtx, side: u32) -> Result<Servers> {
    let mut servers =
        Servers::start_sized(&ctx.api_bin, &ctx.machine.server_cores, &ctx.log_dir, side)?;
    run_load(ctx, &mut servers, Mode::Place, Duration::from_secs(1))?;
    Ok(servers)
}

/// Picks the next `redis-benchmark -n` so a round lasts about as long as ours.
fn next_requests(last: Option<&RedisFigures>, duration: Duration, first: u64, max: u64) -> u64 {
    last.map_or(first, |f| {
        let n = f.requests_per_s * duration.as_secs_f64();
        // Clamped to a sane range, so the cast cannot wrap.
        n.clamp(first as f64, max as f64) as u64
    })
}

/// One side-by-side series: ours and the limits, round after round, interleaved so that
/// noise on the machine hits every side.
struct Series {
    ours: Vec<LoadSummary>,
    /// Per limit command, its figures round after round.
    peers: Vec<Vec<RedisFigures>>,
    /// For placements: where Redis spent ours in the last round.
    script_time: Option<ScriptTime>,
}

fn series(
    ctx: &BenchCtx,
    servers: &mut Servers,
    label: &str,
    mode: Mode,
    peer_commands: &[Vec<String>],
    (first_n, max_n): (u64, u64),
) -> Result<Series> {
    let mut series = Series {
        ours: Vec::new(),
        peers: vec![Vec::new(); peer_commands.len()],
        script_time: None,
    };
    let placing = matches!(mode, Mode::Place | Mode::PlaceBatch);
    for round in 1..=ctx.rounds {
        if placing {
            servers.redis_cli(&["CONFIG", "RESETSTAT"])?;
        }
        let ours = run_load(ctx, servers, mode, ctx.duration)?;
        if placing {
            let info = servers.redis_cli(&["INFO", "commandstats"])?;
            series.script_time = ScriptTime::of(&info, ours.ok);
        }
        println!(
            "{label} round {round}/{}: ours {:.0}/s (p50 {:.2} ms, p99 {:.2} ms, {} errors, \
             load CPU {:.0}%)",
            ctx.rounds,
            ours.ok_per_s,
            ours.p50_ms,
            ours.p99_ms,
            ours.errors,
            100.0 * ours.cpu_share,
        );
        series.ours.push(ours);
        for (command, figures) in peer_commands.iter().zip(&mut series.peers) {
            let n = next_requests(figures.last(), ctx.duration, first_n, max_n);
            let command: Vec<&str> = command.iter().map(String::as_str).collect();
            let peer = redis_bench::run(
                &ctx.machine.load_cores,
                servers.redis_port,
                ctx.clients,
                n,
                &command,
                &ctx.log_dir,
            )?;
            servers.check_running()?;
            println!(
                "{label} round {round}/{}: redis-benchmark {} {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
                ctx.rounds, command[0], peer.requests_per_s, peer.p50_ms, peer.p99_ms
            );
            figures.push(peer);
        }
    }
    Ok(series)
}

/// A limit command from its words.
fn command(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| (*word).to_owned()).collect()
}

impl Series {
    /// Ours against the limit `peer` (an index into the commands the series ran).
    fn result(
        &self,
        name: &str,
        metric: &str,
        (peer, peer_name): (usize, &str),
        target: Option<f64>,
    ) -> BenchResult {
        let figures = &self.peers[peer];
        let mut result = BenchResult::new(
            name,
            metric,
            med(self.ours.iter().map(|s| s.ok_per_s)),
            peer_name,
            med(figures.iter().map(|p| p.requests_per_s)),
            target,
            self.ours.len(),
        );
        let errors: u64 = self.ours.iter().map(|s| s.errors).sum();
        let requests: u64 = self.ours.iter().map(|s| s.ok + s.errors).sum();
        result.details = vec![
            format!(
                "ours: p50 {:.2} ms, p99 {:.2} ms; {errors} unexpected answers of {requests} requests",
                med(self.ours.iter().map(|s| s.p50_ms)),
                med(self.ours.iter().map(|s| s.p99_ms)),
            ),
            format!(
                "our load generator's CPU share of its core(s): {:.0}% (near 100%: it, not the server, was the bottleneck)",
                100.0 * med(self.ours.iter().map(|s| s.cpu_share)),
            ),
            format!(
                "{peer_name}: p50 {:.2} ms, p99 {:.2} ms",
                med(figures.iter().map(|p| p.p50_ms)),
                med(figures.iter().map(|p| p.p99_ms)),
            ),
            format!(
                "per round, ours: {}; peer: {}",
                per_round(self.ours.iter().map(|s| s.ok_per_s)),
                per_round(figures.iter().map(|p| p.requests_per_s)),
            ),
        ];
        result
            .details
            .extend(self.script_time.as_ref().map(ScriptTime::describe));
        result
    }
}

/// The pixel `redis-benchmark` writes. Its `__rand_int__` is replaced by 12 zero-padded
/// digits, which Redis rejects as a BITFIELD offset (`#000000123456`: "bit offset is not an
/// integer"), so the limit writes one fixed pixel of the full-size key; `BITFIELD SET` on an
/// existing string costs the same at every offset.
const LIMIT_PIXEL: &str = "#500500";

/// Ours against raw `BITFIELD SET` (the target), and against the placement script alone
/// (`EVALSHA` of a batch of one, what a placement arriving alone costs Redis): the second
/// row shows how much of the gap is the script and how much the HTTP hop. Then placements
/// through the gateway's hop (`POST /api/v1/pixels/batch`) against `BITFIELD SET` again.
pub fn api_placements(ctx: &BenchCtx) -> Result<Vec<BenchResult>> {
    println!("\n== api-placements");
    let mut servers = warmed_up(ctx, CANVAS_SIDE)?;
    let bitfield = command(&["BITFIELD", PIXELS_KEY, "SET", "u8", LIMIT_PIXEL, "5"]);
    let limits = [bitfield.clone(), script_floor_command(&servers)?];
    let series_single = series(
        ctx,
        &mut servers,
        "api-placements",
        Mode::Place,
        &limits,
        (20_000, 5_000_000),
    )?;
    let series_batch = series(
        ctx,
        &mut servers,
        "api-placements-batch",
        Mode::PlaceBatch,
        &[bitfield],
        (20_000, 5_000_000),
    )?;
    Ok(vec![
        series_single.result(
            "api-placements",
            "placements/s",
            (0, "redis-benchmark BITFIELD SET u8"),
            Some(0.5),
        ),
        series_single.result(
            "api-placements-vs-script",
            "placements/s",
            (1, "redis-benchmark EVALSHA placement script, batch of one"),
            None,
        ),
        series_batch.result(
            "api-placements-batch",
            &format!(
                "placements/s ({BATCH_CLIENTS} connections x {BATCH_PLACEMENTS} placements a batch request)"
            ),
            (0, "redis-benchmark BITFIELD SET u8"),
            Some(0.5),
        ),
    ])
}

/// `EVALSHA` of canvas-api's placement script with the call canvas-api makes for one
/// person placing one pixel alone (a batch of one), under the benchmark canvas-api's
/// settings.
fn script_floor_command(servers: &Servers) -> Result<Vec<String>> {
    let sha = servers.redis_cli(&["SCRIPT", "LOAD", store::PLACE_SCRIPT])?;
    let side = u16::try_from(CANVAS_SIDE / 2)?;
    let rules = PlacementRules {
        cooldown: Duration::ZERO,
        undo_window: Duration::from_secs(UNDO_SECONDS.into()),
        rate: PlacementRate {
            interval: Duration::from_secs(1) / PLACEMENT_RATE,
            burst: PLACEMENT_BURST,
        },
        history_max_len: HISTORY_MAX_LEN,
    };
    let call = ScriptCall::of_batch(
        &rules,
        &[Placement {
            index: usize::from(side) * CANVAS_SIDE as usize + usize::from(side),
            x: side,
            y: side,
            color: 5,
            client_id: "bench-floor".to_owned(),
            idempotency_key: None,
        }],
    );
    let mut words = vec![
        "EVALSHA".to_owned(),
        sha.trim().to_owned(),
        call.keys.len().to_string(),
    ];
    words.extend(call.keys);
    words.extend(call.args);
    Ok(words)
}

pub fn api_snapshot(ctx: &BenchCtx) -> Result<Vec<BenchResult>> {
    println!("\n== api-snapshot");
    let mut servers = warmed_up(ctx, CANVAS_SIDE)?;
    let full = series(
        ctx,
        &mut servers,
        "api-snapshot",
        Mode::Snapshot,
        &[command(&["GET", PIXELS_KEY])],
        (500, 1_000_000),
    )?;
    // What a browser asks for: the same snapshot, compressed once per version by the API.
    let browser = series(
        ctx,
        &mut servers,
        "api-snapshot-br",
        Mode::SnapshotBrowser,
        &[command(&["GET", PIXELS_KEY])],
        (500, 1_000_000),
    )?;
    let not_modified = series(
        ctx,
        &mut servers,
        "api-snapshot-304",
        Mode::Snapshot304,
        &[command(&["GET", VERSION_KEY])],
        (20_000, 5_000_000),
    )?;
    drop(servers);
    // The largest canvas: 16 MiB a snapshot.
    let side = LARGEST_CANVAS_SIDE;
    let mut servers = warmed_up(ctx, side)?;
    let largest = series(
        ctx,
        &mut servers,
        "api-snapshot-largest",
        Mode::Snapshot,
        &[command(&["GET", PIXELS_KEY])],
        (20, 100_000),
    )?;
    Ok(vec![
        full.result(
            "api-snapshot",
            "snapshots/s (200, 1000x1000)",
            (0, &format!("redis-benchmark GET {PIXELS_KEY}")),
            Some(2.0),
        ),
        browser.result(
            "api-snapshot-br",
            "snapshots/s (200, br, Accept-Encoding of a browser)",
            (0, &format!("redis-benchmark GET {PIXELS_KEY}")),
            None,
        ),
        not_modified.result(
            "api-snapshot-304",
            "304 answers/s (If-None-Match)",
            (0, &format!("redis-benchmark GET {VERSION_KEY}")),
            None,
        ),
        largest.result(
            &format!("api-snapshot {side}x{side}"),
            &format!("snapshots/s (200, {side}x{side})"),
            (0, &format!("redis-benchmark GET {PIXELS_KEY}")),
            None,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_rounds_follow_the_last_rate() {
        let d = Duration::from_secs(5);
        assert_eq!(next_requests(None, d, 500, 10_000), 500);
        let fast = RedisFigures {
            requests_per_s: 30_000.0,
            p50_ms: 1.0,
            p99_ms: 2.0,
        };
        assert_eq!(next_requests(Some(&fast), d, 500, 1_000_000), 150_000);
        assert_eq!(next_requests(Some(&fast), d, 500, 10_000), 10_000);
        let slow = RedisFigures {
            requests_per_s: 10.0,
            ..fast
        };
        assert_eq!(next_requests(Some(&slow), d, 500, 10_000), 500);
    }
}
