use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = pixel_operator::Args::parse();
    // Handlers installed before `run` starts, so a SIGTERM as soon as the port opens is
    // caught.
    let shutdown = pixel_common::shutdown::signal_received();
    pixel_common::run_main(
        "pixel-operator",
        &args.log.clone(),
        pixel_operator::run(args, shutdown),
    )
    .await
}
