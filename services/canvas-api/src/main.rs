use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = canvas_api::Args::parse();
    pixel_common::run_main("canvas-api", &args.log.clone(), canvas_api::run(args)).await
}
