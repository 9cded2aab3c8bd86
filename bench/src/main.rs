//! `pixel-bench`: the benchmarks (`run`, what `cargo xtask bench` runs) and the load
//! generators they start as their own processes, pinned to other cores than the servers
//! (`load`, `fanout-load`, and the fan-out's floor `fanout-floor`: this binary re-executed).

mod api;
mod commandstats;
mod fanout;
mod fanout_floor;
mod fanout_load;
mod frontend;
mod histogram;
mod load;
mod machine;
mod operator;
mod placer;
mod procfs;
mod redis_bench;
mod report;
mod run;
mod servers;
mod stats;
mod summary;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pixel-bench",
    about = "Pixel Playground benchmarks: each figure beside its peer or limit from the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The benchmarks: medians of repeated rounds; writes target/bench/results.{json,md}.
    /// Not tests.
    Run(run::BenchArgs),
    /// The HTTP load generator `run` starts for the canvas-api benchmarks; prints one JSON
    /// summary.
    Load(load::LoadArgs),
    /// The WebSocket fan-out load generator `run` starts for `gateway-fanout`; prints one
    /// JSON summary.
    FanoutLoad(fanout_load::FanoutLoadArgs),
    /// The fan-out's physical floor `run` starts for `gateway-fanout` in place of the gateway:
    /// the same frames to the same sockets with no protocol work; serves until killed.
    FanoutFloor(fanout_floor::FanoutFloorArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run::run(&args),
        Command::Load(args) => load::main(&args),
        Command::FanoutLoad(args) => fanout_load::main(&args),
        Command::FanoutFloor(args) => fanout_floor::main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
