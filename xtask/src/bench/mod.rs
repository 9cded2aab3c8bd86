//! `cargo xtask bench [NAME]`: every speed claim against a peer or a limit measured in the
//! same run, as medians of repeated rounds, never absolute times alone. Benchmarks are not
//! tests: nothing here fails because a target is missed; the table says so.
//!
//! The servers run pinned to one set of cores and the load generators (ours, and
//! `redis-benchmark` for the limit) to another, with `taskset`.

mod fanout;
pub mod fanout_load;
mod frontend;
mod histogram;
pub mod load;
mod operator;
mod placer;
mod redis_bench;
mod report;
mod servers;
mod stats;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

use self::{
    load::LoadSummary,
    redis_bench::RedisFigures,
    report::{BenchResult, Machine, Report},
    servers::{PIXELS_KEY, Servers, VERSION_KEY},
};
use crate::{deps, paths, process};

/// The benchmarks, by the name `cargo xtask bench NAME` takes.
const BENCHMARKS: [(&str, &str); 6] = [
    (
        "api-placements",
        "canvas-api POST /api/v1/pixels vs redis-benchmark BITFIELD SET",
    ),
    (
        "api-snapshot",
        "canvas-api GET /api/v1/canvas (200 and 304) vs redis-benchmark GET",
    ),
    (
        "gateway-fanout",
        "gateway WebSocket fan-out to 1,000-10,000 clients vs Centrifugo (Redis engine)",
    ),
    (
        "frontend",
        "the page in headless Chromium: first full paint of 1000x1000, busy share at 1,000 updates/s",
    ),
    (
        "operator-apply",
        "kubectl apply of examples/canvas.yaml to every child applied vs server-side apply of them",
    ),
    (
        "operator-scale",
        "500 canvases at once: time to all Ready, operator peak RSS, writes in a resync",
    ),
];

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Run only this benchmark (api-placements, api-snapshot, gateway-fanout, frontend,
    /// operator-apply, operator-scale); all when omitted.
    pub name: Option<String>,
    /// Rounds per benchmark; the figures are their medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Length of one load round of ours, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub seconds: u64,
    /// Concurrent clients, on both sides.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub clients: u32,
}

/// Everything a benchmark needs to run.
#[derive(Debug)]
struct BenchCtx {
    api_bin: PathBuf,
    xtask_bin: PathBuf,
    machine: Machine,
    log_dir: PathBuf,
    rounds: usize,
    duration: Duration,
    clients: usize,
}

fn out_dir() -> PathBuf {
    paths::repo_root().join("target/bench")
}

/// `cargo xtask bench`.
pub fn bench(args: &BenchArgs) -> Result<()> {
    let selected: Vec<&str> = match &args.name {
        None => BENCHMARKS.iter().map(|(name, _)| *name).collect(),
        Some(name) => match BENCHMARKS.iter().find(|(known, _)| known == name) {
            Some((known, _)) => vec![*known],
            None => bail!(
                "no benchmark `{name}`; there are: {}",
                BENCHMARKS
                    .iter()
                    .map(|(name, what)| format!("\n  {name}: {what}"))
                    .collect::<String>()
            ),
        },
    };
    deps::ensure_debian_packages(&["redis-server", "redis-tools", "util-linux"])?;
    let log_dir = out_dir().join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let (api_bin, xtask_bin) = servers::build_release()?;
    let ctx = BenchCtx {
        api_bin,
        xtask_bin,
        machine: machine()?,
        log_dir,
        rounds: usize::try_from(args.rounds)?,
        duration: Duration::from_secs(args.seconds),
        clients: usize::try_from(args.clients)?,
    };
    println!(
        "Servers on core(s) {}, load generators on core(s) {}; {} rounds of {} s, {} clients.",
        ctx.machine.server_cores, ctx.machine.load_cores, ctx.rounds, args.seconds, ctx.clients
    );
    let mut results = Vec::new();
    // The operator benchmarks share one cluster, started for the first and removed after
    // the last.
    let mut cluster: Option<operator::Stage> = None;
    for name in selected {
        if name.starts_with("operator-") && cluster.is_none() {
            cluster = Some(operator::Stage::start(&ctx.log_dir)?);
        }
        match name {
            "api-placements" => results.push(api_placements(&ctx)?),
            "api-snapshot" => results.extend(api_snapshot(&ctx)?),
            "gateway-fanout" => results.extend(fanout::gateway_fanout(&ctx)?),
            "frontend" => results.extend(frontend::frontend(&ctx)?),
            "operator-apply" => {
                results.push(operator::operator_apply(&ctx, stage(&cluster)?)?);
            }
            "operator-scale" => results.extend(operator::operator_scale(stage(&cluster)?)?),
            other => bail!("benchmark `{other}` is listed but has no runner"),
        }
    }
    if let Some(cluster) = cluster {
        cluster.stop()?;
    }
    let report = Report {
        finished_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: ctx.machine,
        results,
    };
    let markdown = report::markdown(&report);
    let dir = out_dir();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    std::fs::write(dir.join("results.md"), &markdown)?;
    println!("\n{markdown}");
    println!(
        "Written to {} and {}.",
        dir.join("results.json").display(),
        dir.join("results.md").display()
    );
    Ok(())
}

fn stage(cluster: &Option<operator::Stage>) -> Result<&operator::Stage> {
    cluster
        .as_ref()
        .context("the operator benchmarks' cluster is not up")
}

/// Expands a Linux CPU list (`0-3,6`) into core numbers.
fn parse_cpu_list(list: &str) -> Result<Vec<u32>> {
    let mut cores = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (first.parse()?, last.parse()?);
                if last < first || last - first > 4096 {
                    bail!("bad CPU range `{part}`");
                }
                cores.extend(first..=last);
            }
            None => cores.push(part.parse()?),
        }
    }
    if cores.is_empty() {
        bail!("empty CPU list `{list}`");
    }
    Ok(cores)
}

/// Splits the cores this process may use: the first half for the servers, the rest for
/// the load generators. With one core both share it.
fn split_cores(cores: &[u32]) -> (String, String) {
    let join = |part: &[u32]| {
        part.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if cores.len() < 2 {
        return (join(cores), join(cores));
    }
    let (server, load) = cores.split_at(cores.len() / 2);
    (join(server), join(load))
}

fn machine() -> Result<Machine> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let allowed = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?;
    let cores = parse_cpu_list(allowed)?;
    let (server_cores, load_cores) = split_cores(&cores);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Ok(Machine {
        cores: cores.len(),
        cpu_model: report::cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".to_owned()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
        server_cores,
        load_cores,
    })
}

/// Runs our load generator as its own process, pinned to the load cores.
fn run_load(
    ctx: &BenchCtx,
    servers: &mut Servers,
    mode: &str,
    duration: Duration,
) -> Result<LoadSummary> {
    let duration_ms = u64::try_from(duration.as_millis())?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &ctx.machine.load_cores])
        .arg(&ctx.xtask_bin)
        .args(["bench-load", "--url", &servers.api_url, "--mode", mode])
        .args(["--clients", &ctx.clients.to_string()])
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

/// Picks the next `redis-benchmark -n` so a round lasts about as long as ours.
fn next_requests(last: Option<&RedisFigures>, duration: Duration, first: u64, max: u64) -> u64 {
    last.map_or(first, |f| {
        let n = f.requests_per_s * duration.as_secs_f64();
        // Clamped to a sane range, so the cast cannot wrap.
        n.clamp(first as f64, max as f64) as u64
    })
}

fn med(values: impl Iterator<Item = f64>) -> f64 {
    stats::median(&values.collect::<Vec<_>>()).unwrap_or(f64::NAN)
}

fn per_round(values: impl Iterator<Item = f64>) -> String {
    values
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One side-by-side series: ours and the limit, round after round, interleaved so that
/// noise on the machine hits both.
struct Series {
    ours: Vec<LoadSummary>,
    peer: Vec<RedisFigures>,
}

fn series(
    ctx: &BenchCtx,
    servers: &mut Servers,
    label: &str,
    mode: &str,
    peer_command: &[&str],
    (first_n, max_n): (u64, u64),
) -> Result<Series> {
    let mut series = Series {
        ours: Vec::new(),
        peer: Vec::new(),
    };
    for round in 1..=ctx.rounds {
        let ours = run_load(ctx, servers, mode, ctx.duration)?;
        let n = next_requests(series.peer.last(), ctx.duration, first_n, max_n);
        let peer = redis_bench::run(
            &ctx.machine.load_cores,
            servers.redis_port,
            ctx.clients,
            n,
            peer_command,
            &ctx.log_dir,
        )?;
        servers.check_running()?;
        println!(
            "{label} round {round}/{}: ours {:.0}/s (p50 {:.2} ms, p99 {:.2} ms, {} errors, \
             load CPU {:.0}%), redis-benchmark {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            ctx.rounds,
            ours.ok_per_s,
            ours.p50_ms,
            ours.p99_ms,
            ours.errors,
            100.0 * ours.cpu_share,
            peer.requests_per_s,
            peer.p50_ms,
            peer.p99_ms
        );
        series.ours.push(ours);
        series.peer.push(peer);
    }
    Ok(series)
}

impl Series {
    fn result(
        &self,
        name: &str,
        metric: &str,
        peer_name: &str,
        target: Option<f64>,
    ) -> BenchResult {
        let mut result = BenchResult::new(
            name,
            metric,
            med(self.ours.iter().map(|s| s.ok_per_s)),
            peer_name,
            med(self.peer.iter().map(|p| p.requests_per_s)),
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
                med(self.peer.iter().map(|p| p.p50_ms)),
                med(self.peer.iter().map(|p| p.p99_ms)),
            ),
            format!(
                "per round, ours: {}; peer: {}",
                per_round(self.ours.iter().map(|s| s.ok_per_s)),
                per_round(self.peer.iter().map(|p| p.requests_per_s)),
            ),
        ];
        result
    }
}

/// The pixel `redis-benchmark` writes. Its `__rand_int__` is replaced by 12 zero-padded
/// digits, which Redis rejects as a BITFIELD offset (`#000000123456`: "bit offset is not an
/// integer"), so the limit writes one fixed pixel of the full-size key; `BITFIELD SET` on an
/// existing string costs the same at every offset.
const LIMIT_PIXEL: &str = "#500500";

fn api_placements(ctx: &BenchCtx) -> Result<BenchResult> {
    println!("\n== api-placements");
    let mut servers = Servers::start(&ctx.api_bin, &ctx.machine.server_cores, &ctx.log_dir)?;
    // Warm-up: connections, the script cache, the allocator.
    run_load(ctx, &mut servers, "place", Duration::from_secs(1))?;
    let series = series(
        ctx,
        &mut servers,
        "api-placements",
        "place",
        &["BITFIELD", PIXELS_KEY, "SET", "u8", LIMIT_PIXEL, "5"],
        (20_000, 5_000_000),
    )?;
    Ok(series.result(
        "api-placements",
        "placements/s",
        "redis-benchmark BITFIELD SET u8",
        Some(0.5),
    ))
}

fn api_snapshot(ctx: &BenchCtx) -> Result<Vec<BenchResult>> {
    println!("\n== api-snapshot");
    let mut servers = Servers::start(&ctx.api_bin, &ctx.machine.server_cores, &ctx.log_dir)?;
    // Some placements, so the canvas has a version and its key exists, then quiet.
    run_load(ctx, &mut servers, "place", Duration::from_secs(1))?;
    let full = series(
        ctx,
        &mut servers,
        "api-snapshot",
        "snapshot",
        &["GET", PIXELS_KEY],
        (500, 1_000_000),
    )?;
    // What a browser asks for: the same snapshot, compressed once per version by the API.
    let browser = series(
        ctx,
        &mut servers,
        "api-snapshot-br",
        "snapshot-browser",
        &["GET", PIXELS_KEY],
        (500, 1_000_000),
    )?;
    let not_modified = series(
        ctx,
        &mut servers,
        "api-snapshot-304",
        "snapshot304",
        &["GET", VERSION_KEY],
        (20_000, 5_000_000),
    )?;
    Ok(vec![
        full.result(
            "api-snapshot",
            "snapshots/s (200, 1000x1000)",
            "redis-benchmark GET canvas:pixels",
            Some(2.0),
        ),
        browser.result(
            "api-snapshot-br",
            "snapshots/s (200, br, Accept-Encoding of a browser)",
            "redis-benchmark GET canvas:pixels",
            None,
        ),
        not_modified.result(
            "api-snapshot-304",
            "304 answers/s (If-None-Match)",
            "redis-benchmark GET canvas:version",
            None,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_expand() {
        assert_eq!(parse_cpu_list("0-1\n").expect("parses"), [0, 1]);
        assert_eq!(parse_cpu_list("0,2-4,7").expect("parses"), [0, 2, 3, 4, 7]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }

    #[test]
    fn cores_are_split_between_servers_and_load() {
        assert_eq!(split_cores(&[0, 1]), ("0".to_owned(), "1".to_owned()));
        assert_eq!(
            split_cores(&[0, 1, 2, 3]),
            ("0,1".to_owned(), "2,3".to_owned())
        );
        assert_eq!(split_cores(&[5]), ("5".to_owned(), "5".to_owned()));
    }

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

    #[test]
    fn every_benchmark_has_a_unique_name() {
        let mut names: Vec<_> = BENCHMARKS.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BENCHMARKS.len());
    }
}
