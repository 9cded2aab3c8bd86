//! `cargo xtask`: everything beyond `cargo build`, in Rust so it runs wherever cargo does.

mod api_fuzz;
mod bench;
mod browser_check;
#[cfg(test)]
mod contract_literals;
mod crd;
mod deny;
mod dev;
mod e2e;
mod fuzz;
mod image;
mod invariants;
mod kube_score;
mod real_pods;
mod scenarios;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Pixel Playground project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: the local cluster, the operator, and the example canvas, Ready.
    Up(up::UpArgs),
    /// The canvas on this machine without Kubernetes: redis-server and the three services;
    /// prints the URL to open. Runs until Ctrl-C.
    Dev,
    /// Every test: `cargo test --workspace`, then the end-to-end suites on a cluster that is
    /// started for the run and removed after it.
    Test(e2e::TestArgs),
    /// The end-to-end suites alone, against the running local cluster.
    E2e(e2e::E2eArgs),
    /// The local Kubernetes cluster (kube-apiserver, etcd, controller-manager, scheduler,
    /// KWOK fake nodes, a real node, an Ingress controller).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Regenerate the PixelCanvas CRD in crds/ from the operator's types.
    Crd,
    /// Build the images without a Docker daemon, as OCI archives in target/images: the app
    /// image (the four release binaries, via config/image/build.sh), Redis from Debian's
    /// redis-server, and the pause image. Prints each reference and archive.
    Image,
    /// cargo-deny's license, ban and source checks of the dependency graph (.ci/deny.toml);
    /// installs the pinned cargo-deny when missing.
    Deny,
    /// Fuzz the snapshot and frame decoders and the gateway's client-message parser
    /// (services/fuzz) for a bounded time each; fails on any crash, naming its input.
    Fuzz(fuzz::FuzzArgs),
    /// Build the pinned Go tools (control plane, KWOK, chainsaw) into the cache, or print
    /// where they are.
    Toolchain,
    /// The benchmarks: each figure beside its peer or limit from the same run, as medians
    /// of repeated rounds; writes target/bench/results.{json,md}. Not tests. Runs a release
    /// build of `pixel-bench run` with these arguments (`cargo xtask bench --help` lists them).
    Bench(bench::BenchArgs),
    /// The peer linter: kube-score (built from its pinned Go module) on the children the
    /// operator renders for every example; fails on a critical finding that
    /// docs/reliability.md does not list as deliberate.
    KubeScore,
    /// Fuzz canvas-api with schemathesis against its OpenAPI document, on a real Redis: at
    /// least 1,000 requests, every check (no 5xx, answers as documented) must pass.
    ApiFuzz,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Create the cluster, or keep the one that is already healthy.
    Up(up::UpArgs),
    /// Remove the cluster, its real node, the Ingress controller and all their data. Does
    /// nothing when there is none.
    Down,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::up(&args),
        Command::Dev => dev::dev(),
        Command::Cluster(ClusterCommand::Up(args)) => up::cluster_up(&args),
        Command::Cluster(ClusterCommand::Down) => pixel_harness::cluster::down_dev(),
        Command::Test(args) => e2e::test_all(&args),
        Command::E2e(args) => e2e::run_suites(&args),
        Command::Crd => crd::generate(),
        Command::Image => image::run(),
        Command::Deny => deny::run(),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Toolchain => pixel_harness::toolchain::ensure().and_then(|tools| {
            tools.print();
            println!(
                "  {}",
                pixel_harness::toolchain::ensure_chainsaw()?.display()
            );
            Ok(())
        }),
        Command::Bench(args) => bench::run(&args),
        Command::ApiFuzz => api_fuzz::run(),
        Command::KubeScore => kube_score::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
