//! `gateway-fanout`: one gateway fanning placements out to N WebSocket clients, against
//! Centrifugo with its Redis engine, on the same server cores, with the same clients,
//! placement rate and load generator (`pixel-bench fanout-load`, pinned to the load
//! cores). Beside both, the physical floor (`pixel-bench fanout-floor`, [`crate::fanout_floor`]):
//! the same Redis and canvas-api, and in the gateway's place a writer of the same frames to
//! the same sockets with no protocol work, so the gateway's efficiency has a limit that does
//! not collapse as Centrifugo's does above 5,000 clients. Last, `IDLE_CLIENTS` idle
//! connections on one gateway (and on the floor): memory per connection and accept time.
//!
//! Every run starts fresh servers, so the base and peak memory belong to that run alone:
//! ours is redis-server + canvas-api + gateway, the peer redis-server + Centrifugo. The
//! server CPU time and memory are those of every process of the side.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use pixel_common::ports::{ENV_MAX_CONNECTIONS, READYZ_PATH, WS_PATH};
use pixel_harness::{
    process::{self, free_port},
    redis, toolchain,
};

use crate::{
    fanout_load::{FanoutSummary, Target},
    procfs::raise_open_files,
    report::BenchResult,
    run::{BenchCtx, value_name},
    servers::Servers,
    stats::{med, per_round},
};

/// (clients, placements per second), as the issue lists them.
const SIZES: [(usize, u32); 6] = [
    (1_000, 200),
    (1_000, 1_000),
    (5_000, 200),
    (5_000, 1_000),
    (10_000, 200),
    (10_000, 1_000),
];
/// Rounds per size at most: 6 sizes x 2 sides x 3 rounds keeps the benchmark near ten
/// minutes on two cores.
const MAX_ROUNDS: usize = 3;
/// The size the latency target is stated for, and its bound.
const TARGET_SIZE: (usize, u32) = (10_000, 1_000);
const TARGET_P99_MS: f64 = 100.0;
/// Delivered updates per server CPU-second, ours over Centrifugo's.
const TARGET_EFFICIENCY: f64 = 2.0;
/// The same, ours over the floor's.
const TARGET_FLOOR_EFFICIENCY: f64 = 0.5;
/// Idle connections on one gateway for the memory and accept-time rows.
pub const IDLE_CLIENTS: usize = 50_000;
/// RSS per idle connection, KiB, at most.
const TARGET_IDLE_KIB: f64 = 10.0;

/// Parses a size `CLIENTSxRATE` (`10000x1000`), for `--sizes`.
pub fn parse_size(text: &str) -> Result<(usize, u32), String> {
    let (clients, rate) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?} is not CLIENTSxRATE"))?;
    let clients: usize = clients
        .trim()
        .parse()
        .map_err(|e| format!("{text:?}: {e}"))?;
    let rate: u32 = rate.trim().parse().map_err(|e| format!("{text:?}: {e}"))?;
    if clients == 0 || rate == 0 {
        return Err(format!("{text:?}: clients and rate must be at least 1"));
    }
    Ok((clients, rate))
}

/// Who serves the clients in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Ours,
    /// The floor writer, on our Redis and canvas-api.
    Floor,
    Peer,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Floor => "floor",
            Self::Peer => "Centrifugo",
        }
    }

    /// The protocol the load generator speaks: the floor speaks the gateway's.
    fn target(self) -> Target {
        match self {
            Self::Ours | Self::Floor => Target::Gateway,
            Self::Peer => Target::Centrifugo,
        }
    }
}

/// The processes of one side, stopped when dropped.
struct Procs(process::Group);

impl Procs {
    fn new() -> Self {
        Self(process::Group::new(Duration::from_secs(15)))
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command, log_dir: &Path) -> Result<i32> {
        let pid = self
            .0
            .spawn(name, cmd, &log_dir.join(format!("fanout-{name}.log")))?;
        Ok(i32::try_from(pid)?)
    }

    fn check_running(&mut self) -> Result<()> {
        self.0.check_running()
    }
}

/// Direct children of this process by name (`/proc/<pid>/stat`: pid, (comm), state, ppid).
fn children_named(name: &str) -> Result<Vec<i32>> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if comm == name && ppid == Some(me.as_str()) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// Servers::start's two processes, found among this process's children: the ones not
/// running before it was called.
fn started_pids(before: &[i32], name: &str) -> Result<i32> {
    let mut new: Vec<i32> = children_named(name)?
        .into_iter()
        .filter(|pid| !before.contains(pid))
        .collect();
    match (new.pop(), new.is_empty()) {
        (Some(pid), true) => Ok(pid),
        _ => bail!("cannot tell which {name} the benchmark servers started"),
    }
}

/// Waits until `url` answers 200.
fn wait_http(url: &str, procs: &mut Procs, what: &str) -> Result<()> {
    process::wait_until(what, Duration::from_secs(30), || {
        procs.check_running()?;
        Ok(ureq::get(url).call().is_ok())
    })
}

/// One side's servers, running, and how the load generator reaches them.
struct Side {
    /// Dropped first: the gateway before the canvas-api and Redis it uses.
    procs: Procs,
    /// Ours: canvas-api and Redis.
    _servers: Option<Servers>,
    pids: Vec<i32>,
    ws_url: String,
    publish_url: String,
    api_key: String,
    _data: Option<tempfile::TempDir>,
}

/// Fresh redis-server and canvas-api, and their pids.
fn start_servers(ctx: &BenchCtx) -> Result<(Servers, i32, i32)> {
    let before: Vec<i32> = children_named("redis-server")?
        .into_iter()
        .chain(children_named("canvas-api")?)
        .collect();
    let servers = Servers::start(&ctx.api_bin, &ctx.machine.server_cores, &ctx.log_dir)?;
    let redis = started_pids(&before, "redis-server")?;
    let api = started_pids(&before, "canvas-api")?;
    Ok((servers, redis, api))
}

fn start_ours(ctx: &BenchCtx, gateway_bin: &Path, clients: usize) -> Result<Side> {
    let (servers, redis, api) = start_servers(ctx)?;
    let port = free_port()?;
    let mut procs = Procs::new();
    let gateway = procs.spawn(
        "gateway",
        servers
            .gateway_command(gateway_bin, &ctx.machine.server_cores, port)
            // Room for every client; the default is exactly the largest size.
            .env(ENV_MAX_CONNECTIONS, (clients + 100).to_string()),
        &ctx.log_dir,
    )?;
    wait_http(
        &format!("http://127.0.0.1:{port}{READYZ_PATH}"),
        &mut procs,
        "the gateway to be ready",
    )?;
    Ok(Side {
        publish_url: servers.api_url.clone(),
        _servers: Some(servers),
        procs,
        pids: vec![gateway, api, redis],
        ws_url: format!("ws://127.0.0.1:{port}{WS_PATH}"),
        api_key: String::new(),
        _data: None,
    })
}

fn start_floor(ctx: &BenchCtx) -> Result<Side> {
    let (servers, redis, api) = start_servers(ctx)?;
    let port = free_port()?;
    let mut procs = Procs::new();
    let floor = procs.spawn(
        "floor",
        Command::new("taskset")
            .args(["-c", &ctx.machine.server_cores])
            .arg(&ctx.bench_bin)
            .args(["fanout-floor", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--redis-url",
                &format!("redis://127.0.0.1:{}", servers.redis_port),
            ]),
        &ctx.log_dir,
    )?;
    process::wait_until(
        "the floor writer to listen",
        Duration::from_secs(30),
        || {
            procs.check_running()?;
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        },
    )?;
    Ok(Side {
        publish_url: servers.api_url.clone(),
        _servers: Some(servers),
        procs,
        pids: vec![floor, api, redis],
        ws_url: format!("ws://127.0.0.1:{port}{WS_PATH}"),
        api_key: String::new(),
        _data: None,
    })
}

fn start_centrifugo(ctx: &BenchCtx, centrifugo_bin: &Path) -> Result<Side> {
    let data = tempfile::Builder::new()
        .prefix("pixel-bench-centrifugo")
        .tempdir()
        .context("cannot create a temporary directory for Centrifugo")?;
    let cores = &ctx.machine.server_cores;
    let mut procs = Procs::new();
    let redis_port = free_port()?;
    // The same Redis settings as ours (Servers::start).
    let redis = procs.spawn(
        "redis-server",
        Command::new("taskset")
            .args(["-c", cores, "redis-server"])
            .args(redis::server_args(redis_port, data.path())),
        &ctx.log_dir,
    )?;
    redis::wait_until_answering(redis_port, || procs.check_running())?;
    let port = free_port()?;
    let api_key = format!("bench-{:016x}", rand_key());
    let config = serde_json::json!({
        "http_server": {"address": "127.0.0.1", "port": port},
        "log": {"level": "warn"},
        "engine": {"type": "redis", "redis": {"address": [format!("redis://127.0.0.1:{redis_port}")]}},
        // Anonymous clients may connect and subscribe: our gateway has no auth either.
        "client": {"insecure": true, "allowed_origins": ["*"]},
        "http_api": {"key": api_key},
        "health": {"enabled": true},
        "usage_stats": {"disabled": true},
    });
    let config_path = data.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
    let centrifugo = procs.spawn(
        "centrifugo",
        Command::new("taskset")
            .args(["-c", cores])
            .arg(centrifugo_bin)
            .arg("--config")
            .arg(&config_path),
        &ctx.log_dir,
    )?;
    wait_http(
        &format!("http://127.0.0.1:{port}/health"),
        &mut procs,
        "Centrifugo to be healthy",
    )?;
    Ok(Side {
        _servers: None,
        procs,
        pids: vec![centrifugo, redis],
        ws_url: format!("ws://127.0.0.1:{port}/connection/websocket"),
        publish_url: format!("http://127.0.0.1:{port}"),
        api_key,
        _data: Some(data),
    })
}

/// A key nobody else on the machine guesses: Centrifugo's API listens on loopback only.
fn rand_key() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) ^ (u64::from(std::process::id()) << 32)
}

fn run_load(
    ctx: &BenchCtx,
    side: &mut Side,
    target: Target,
    (clients, rate): (usize, u32),
    idle: bool,
) -> Result<FanoutSummary> {
    let duration_ms = u64::try_from(ctx.duration.as_millis())?;
    let pids = side
        .pids
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &ctx.machine.load_cores])
        .arg(&ctx.bench_bin)
        .args(["fanout-load", "--target", &value_name(target)?])
        .args(["--ws-url", &side.ws_url, "--publish-url", &side.publish_url])
        .args(["--api-key", &side.api_key])
        .args(["--clients", &clients.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--duration-ms", &duration_ms.to_string()])
        .args(["--server-pids", &pids]);
    if idle {
        cmd.arg("--idle");
    }
    let out = process::output(&mut cmd, ctx.duration + Duration::from_secs(180))?;
    side.procs.check_running()?;
    FanoutSummary::parse(&out)
}

fn build_gateway() -> Result<PathBuf> {
    Ok(process::cargo_build(true, &["gateway"])?.join("gateway"))
}

fn describe(s: &FanoutSummary) -> String {
    format!(
        "{:.0} delivered/s ({} of {} expected, {} clients, {} lost), p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms, server CPU {:.2} s, peak RSS {} MiB, load CPU {:.0}%",
        s.delivered_per_s,
        s.updates_delivered,
        s.updates_expected,
        s.clients_connected,
        s.clients_lost,
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        s.server_cpu_s,
        s.rss_peak_kib / 1024,
        100.0 * s.load_cpu_share
    )
}

/// Delivered updates per server CPU-second (every delivery the CPU time paid for).
fn efficiency(s: &FanoutSummary) -> f64 {
    if s.server_cpu_s > 0.0 {
        s.delivered_during_cpu as f64 / s.server_cpu_s
    } else {
        f64::NAN
    }
}

/// RSS per idle connection, KiB: (with every client idle - before any) / clients.
fn idle_kib(s: &FanoutSummary) -> f64 {
    if s.clients_connected == 0 {
        return f64::NAN;
    }
    (s.rss_idle_kib as f64 - s.rss_base_kib as f64) / s.clients_connected as f64
}

fn side_details(label: &str, runs: &[FanoutSummary]) -> String {
    let m = |f: fn(&FanoutSummary) -> f64| med(runs.iter().map(f));
    format!(
        "{label}: {:.0} delivered/s ({:.1}% of expected), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         server CPU {:.2} s, peak RSS {:.0} MiB, {:.1} KiB RSS per idle connection; \
         {:.0} clients connected ({:.1} s), {} lost, {} placement errors; load generator CPU {:.0}%",
        m(|s| s.delivered_per_s),
        m(|s| 100.0 * s.updates_delivered as f64 / s.updates_expected.max(1) as f64),
        m(|s| s.p50_ms),
        m(|s| s.p99_ms),
        m(|s| s.max_ms),
        m(|s| s.server_cpu_s),
        m(|s| s.rss_peak_kib as f64 / 1024.0),
        m(idle_kib),
        m(|s| s.clients_connected as f64),
        m(|s| s.connect_s),
        runs.iter().map(|s| s.clients_lost).sum::<usize>(),
        runs.iter().map(|s| s.placement_errors).sum::<u64>(),
        100.0 * m(|s| s.load_cpu_share),
    )
}

const PEER: &str = "Centrifugo 6.9.1, Redis engine";
const FLOOR: &str = "floor writer (same frames, no protocol work)";

/// Starts `contender`'s side and runs the load generator on it.
fn run_side(
    ctx: &BenchCtx,
    bins: (&Path, &Path),
    contender: Contender,
    size: (usize, u32),
    idle: bool,
) -> Result<FanoutSummary> {
    let (gateway_bin, centrifugo_bin) = bins;
    let mut side = match contender {
        Contender::Ours => start_ours(ctx, gateway_bin, size.0)?,
        Contender::Floor => start_floor(ctx)?,
        Contender::Peer => start_centrifugo(ctx, centrifugo_bin)?,
    };
    run_load(ctx, &mut side, contender.target(), size, idle)
}

/// `cargo xtask bench gateway-fanout`.
pub fn gateway_fanout(ctx: &BenchCtx) -> Result<Vec<BenchResult>> {
    println!("\n== gateway-fanout");
    let centrifugo_bin = toolchain::ensure_centrifugo()?;
    let gateway_bin = build_gateway()?;
    let bins = (gateway_bin.as_path(), centrifugo_bin.as_path());
    raise_open_files()?;
    let rounds = ctx.rounds.min(MAX_ROUNDS);
    let sizes: Vec<(usize, u32)> = if ctx.fanout_sizes.is_empty() {
        SIZES.to_vec()
    } else {
        ctx.fanout_sizes.clone()
    };
    let mut results = Vec::new();
    let mut floor_rows = Vec::new();
    let mut target_row = None;
    for size @ (clients, rate) in sizes {
        let mut runs: [Vec<FanoutSummary>; 3] = Default::default();
        let contenders = [Contender::Ours, Contender::Floor, Contender::Peer];
        for round in 1..=rounds {
            // Rotate which side goes first, so drift on the machine hits every side.
            for turn in 0..contenders.len() {
                let index = (turn + round - 1) % contenders.len();
                let contender = contenders[index];
                let summary = run_side(ctx, bins, contender, size, false)?;
                println!(
                    "gateway-fanout {clients} clients, {rate}/s, round {round}/{rounds}, {}: {}",
                    contender.label(),
                    describe(&summary)
                );
                runs[index].push(summary);
            }
        }
        let [ours, floor, peer] = &runs;
        let name = format!("gateway-fanout {clients}x{rate}/s");
        let mut row = BenchResult::new(
            &name,
            &format!("updates delivered per server CPU-s ({clients} clients, {rate} placements/s)"),
            med(ours.iter().map(efficiency)),
            PEER,
            med(peer.iter().map(efficiency)),
            Some(TARGET_EFFICIENCY),
            rounds,
        );
        row.details = vec![
            side_details("ours", ours),
            side_details("Centrifugo", peer),
            format!(
                "per round, delivered per CPU-s, ours: {}; peer: {}",
                per_round(ours.iter().map(efficiency)),
                per_round(peer.iter().map(efficiency))
            ),
        ];
        let mut floor_row = BenchResult::new(
            &format!("gateway-fanout-floor {clients}x{rate}/s"),
            &format!("updates delivered per server CPU-s ({clients} clients, {rate} placements/s)"),
            med(ours.iter().map(efficiency)),
            FLOOR,
            med(floor.iter().map(efficiency)),
            Some(TARGET_FLOOR_EFFICIENCY),
            rounds,
        );
        floor_row.details = vec![
            side_details("floor", floor),
            format!(
                "per round, delivered per CPU-s, floor: {}",
                per_round(floor.iter().map(efficiency))
            ),
        ];
        if size == TARGET_SIZE {
            let p99 = med(ours.iter().map(|s| s.p99_ms));
            let mut p99_row = BenchResult::new(
                "gateway-fanout-p99",
                &format!("p99 placement-to-delivery, ms ({clients} clients, {rate}/s)"),
                p99,
                &format!("limit {TARGET_P99_MS} ms"),
                TARGET_P99_MS,
                None,
                rounds,
            )
            .at_most(1.0);
            p99_row.details = vec![
                format!(
                    "Centrifugo's p99 at the same size: {:.1} ms",
                    med(peer.iter().map(|s| s.p99_ms))
                ),
                format!(
                    "the floor's p99 at the same size: {:.1} ms",
                    med(floor.iter().map(|s| s.p99_ms))
                ),
            ];
            let mut idle = BenchResult::new(
                "gateway-fanout-idle",
                &format!("KiB RSS per idle connection ({clients} clients, all server processes)"),
                med(ours.iter().map(idle_kib)),
                PEER,
                med(peer.iter().map(idle_kib)),
                None,
                rounds,
            );
            idle.details = vec!["(RSS with every client connected and idle − RSS before any) ÷ clients; lower is better".to_owned()];
            target_row = Some([p99_row, idle]);
        }
        results.push(row);
        floor_rows.push(floor_row);
    }
    results.extend(floor_rows);
    results.extend(target_row.into_iter().flatten());
    if ctx.idle_clients > 0 {
        results.extend(idle_rows(ctx, bins)?);
    }
    Ok(results)
}

/// `ctx.idle_clients` idle connections on one gateway, then on the floor: RSS per
/// connection against its limit, and the time to accept them all against the floor's.
fn idle_rows(ctx: &BenchCtx, bins: (&Path, &Path)) -> Result<Vec<BenchResult>> {
    let clients = idle_clients_allowed(ctx.idle_clients)?;
    let size = (clients, 1);
    let ours = run_side(ctx, bins, Contender::Ours, size, true)?;
    println!(
        "gateway-fanout {clients} idle clients, ours: {}",
        describe_idle(&ours)
    );
    let floor = run_side(ctx, bins, Contender::Floor, size, true)?;
    println!(
        "gateway-fanout {clients} idle clients, floor: {}",
        describe_idle(&floor)
    );
    let mut memory = BenchResult::new(
        &format!("gateway-fanout-idle-{}k", clients / 1000),
        &format!(
            "KiB RSS per idle connection ({clients} clients on one gateway, all server processes)"
        ),
        idle_kib(&ours),
        &format!("limit {TARGET_IDLE_KIB} KiB"),
        TARGET_IDLE_KIB,
        None,
        1,
    )
    .at_most(1.0);
    memory.details = vec![
        format!(
            "the floor writer: {:.1} KiB per connection",
            idle_kib(&floor)
        ),
        format!(
            "ours: {}; floor: {}",
            describe_idle(&ours),
            describe_idle(&floor)
        ),
    ];
    let mut accept = BenchResult::new(
        &format!("gateway-fanout-accept-{}k", clients / 1000),
        &format!("seconds to connect {clients} clients (handshake and hello, 128 at a time)"),
        ours.connect_s,
        FLOOR,
        floor.connect_s,
        None,
        1,
    );
    accept.details = vec![
        "the load generator's clock, from its start to the last hello; lower is better".to_owned(),
    ];
    Ok(vec![memory, accept])
}

/// Raises this process's open-file limit (which the servers and the load generator inherit)
/// to room for `wanted` sockets when it may (as root); otherwise the hard limit bounds
/// the clients, and the run says so.
fn idle_clients_allowed(wanted: usize) -> Result<usize> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = u64::try_from(wanted)? + 1024;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if hard >= needed || setrlimit(Resource::RLIMIT_NOFILE, needed, needed).is_ok() {
        return Ok(wanted);
    }
    let allowed = usize::try_from(hard.saturating_sub(1024))?.min(wanted);
    println!(
        "gateway-fanout: the open-file hard limit ({hard}) allows {allowed} idle clients, not {wanted}"
    );
    Ok(allowed)
}

fn describe_idle(s: &FanoutSummary) -> String {
    format!(
        "{} clients connected in {:.1} s, {} lost, RSS {} MiB before, {} MiB with them",
        s.clients_connected,
        s.connect_s,
        s.clients_lost,
        s.rss_base_kib / 1024,
        s.rss_idle_kib / 1024
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_distinct_and_include_the_target() {
        let mut sizes = SIZES.to_vec();
        sizes.sort_unstable();
        sizes.dedup();
        assert_eq!(sizes.len(), SIZES.len());
        assert!(SIZES.contains(&TARGET_SIZE));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10000x1000"), Ok((10_000, 1_000)));
        assert!(parse_size("10000").is_err());
        assert!(parse_size("0x5").is_err());
        assert!(parse_size("ax5").is_err());
    }

    #[test]
    fn this_process_has_no_child_named_so() {
        assert!(
            children_named("no-such-server")
                .expect("reads /proc")
                .is_empty()
        );
    }
}
