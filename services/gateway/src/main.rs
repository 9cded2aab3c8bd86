use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = gateway::Args::parse();
    pixel_common::run_main("gateway", &args.log.clone(), gateway::run(args)).await
}
