use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = frontend::Args::parse();
    pixel_common::run_main("frontend", &args.log.clone(), frontend::run(args)).await
}
