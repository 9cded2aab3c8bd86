use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = backup::Args::parse();
    let shutdown = pixel_common::shutdown::signal_received();
    pixel_common::run_main("backup", &args.log.clone(), backup::run(args, shutdown)).await
}
