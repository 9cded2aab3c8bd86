use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = frontend::Args::parse();
    // Before `run`, so a SIGTERM that arrives as soon as the port is open is caught.
    let shutdown = pixel_common::shutdown::signal_received();
    pixel_common::run_main("frontend", &args.log.clone(), frontend::run(args, shutdown)).await
}
