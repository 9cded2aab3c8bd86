//! `pixel-bench run [NAME]` (what `cargo xtask bench` runs): every speed claim against a
//! peer or a limit measured in the same run, as medians of repeated rounds, never absolute
//! times alone. Benchmarks are not tests: nothing here fails because a target is missed; the
//! table says so.
//!
//! The servers run pinned to one set of cores and the load generators (ours, and
//! `redis-benchmark` for the limit) to another, with `taskset`.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use clap::ValueEnum;
use pixel_harness::{deps, paths};

use crate::{
    api, fanout, frontend, machine, operator,
    report::{self, Machine, Report},
    servers,
};

/// The benchmarks, by the name `pixel-bench run NAME` (and `cargo xtask bench NAME`) takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Benchmark {
    /// canvas-api POST /api/v1/pixels (and /pixels/batch, the gateway's hop) vs redis-benchmark BITFIELD SET
    ApiPlacements,
    /// canvas-api GET /api/v1/canvas (200 and 304) vs redis-benchmark GET
    ApiSnapshot,
    /// gateway WebSocket fan-out to 1,000-10,000 clients vs Centrifugo (Redis engine)
    GatewayFanout,
    /// the page in headless Chromium at 1000x1000 and 4096x4096: first full paint, busy share at 1,000 updates/s
    Frontend,
    /// kubectl apply of examples/canvas.yaml to every child applied vs server-side apply of them
    OperatorApply,
    /// 500 canvases at once: time to all Ready, operator peak RSS, writes in a resync
    OperatorScale,
}

impl Benchmark {
    /// The operator benchmarks need a cluster.
    fn needs_cluster(self) -> bool {
        matches!(self, Self::OperatorApply | Self::OperatorScale)
    }
}

/// The name clap gives a value (`snapshot-browser`), for a child process's command line.
pub fn value_name(value: impl ValueEnum) -> Result<String> {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .context("a skipped clap value has no name")
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Run only this benchmark; all when omitted.
    #[arg(value_enum)]
    pub name: Option<Benchmark>,
    /// Rounds per benchmark; the figures are their medians.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Length of one load round of ours, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub seconds: u64,
    /// Concurrent clients, on both sides.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub clients: u32,
    /// gateway-fanout only: the sizes to run, as CLIENTSxRATE, comma-separated (e.g.
    /// `--sizes 1000x1000,10000x1000`); every size the benchmark lists when omitted.
    #[arg(long, value_delimiter = ',', value_parser = fanout::parse_size)]
    pub sizes: Vec<(usize, u32)>,
    /// gateway-fanout only: the idle connections of the memory and accept-time rows
    /// (0 skips them).
    #[arg(long, default_value_t = fanout::IDLE_CLIENTS)]
    pub idle_clients: usize,
}

/// Everything a benchmark needs to run.
#[derive(Debug)]
pub struct BenchCtx {
    pub api_bin: PathBuf,
    /// This binary, whose `load` and `fanout-load` subcommands are the load generators.
    pub bench_bin: PathBuf,
    pub machine: Machine,
    pub log_dir: PathBuf,
    pub rounds: usize,
    pub duration: Duration,
    pub clients: usize,
    /// gateway-fanout's sizes (clients, placements/s); empty for all.
    pub fanout_sizes: Vec<(usize, u32)>,
    /// gateway-fanout's idle connections (0: none).
    pub idle_clients: usize,
}

fn out_dir() -> PathBuf {
    paths::repo_root().join("target/bench")
}

/// `pixel-bench run`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let selected: Vec<Benchmark> = match args.name {
        None => Benchmark::value_variants().to_vec(),
        Some(name) => vec![name],
    };
    if cfg!(debug_assertions) {
        println!(
            "warning: this is a debug build of pixel-bench, so its load generators are too; \
             `cargo xtask bench` runs a release build"
        );
    }
    deps::ensure_debian_packages(&["redis-server", "redis-tools", "util-linux"])?;
    let log_dir = out_dir().join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let ctx = BenchCtx {
        api_bin: servers::build_release()?,
        bench_bin: std::env::current_exe().context("cannot tell where pixel-bench runs from")?,
        machine: machine::detect()?,
        log_dir,
        rounds: usize::try_from(args.rounds)?,
        duration: Duration::from_secs(args.seconds),
        clients: usize::try_from(args.clients)?,
        fanout_sizes: args.sizes.clone(),
        idle_clients: args.idle_clients,
    };
    println!(
        "Servers on core(s) {}, load generators on core(s) {}; {} rounds of {} s, {} clients.",
        ctx.machine.server_cores, ctx.machine.load_cores, ctx.rounds, args.seconds, ctx.clients
    );
    let mut results = Vec::new();
    // The operator benchmarks share one cluster, started for the first and removed after
    // the last.
    let mut cluster: Option<operator::Stage> = None;
    for benchmark in selected {
        if benchmark.needs_cluster() && cluster.is_none() {
            cluster = Some(operator::Stage::start(&ctx.log_dir)?);
        }
        match benchmark {
            Benchmark::ApiPlacements => results.extend(api::api_placements(&ctx)?),
            Benchmark::ApiSnapshot => results.extend(api::api_snapshot(&ctx)?),
            Benchmark::GatewayFanout => results.extend(fanout::gateway_fanout(&ctx)?),
            Benchmark::Frontend => results.extend(frontend::frontend(&ctx)?),
            Benchmark::OperatorApply => {
                results.push(operator::operator_apply(&ctx, stage(cluster.as_ref())?)?);
            }
            Benchmark::OperatorScale => {
                results.extend(operator::operator_scale(stage(cluster.as_ref())?)?);
            }
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

fn stage(cluster: Option<&operator::Stage>) -> Result<&operator::Stage> {
    cluster.context("the operator benchmarks' cluster is not up")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_benchmark_has_a_unique_name() {
        let mut names: Vec<String> = Benchmark::value_variants()
            .iter()
            .map(|b| value_name(*b).expect("named"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Benchmark::value_variants().len());
        assert!(names.contains(&"api-placements".to_owned()), "{names:?}");
    }
}
