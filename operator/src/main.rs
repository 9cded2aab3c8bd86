use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = pixel_operator::Args::parse();
    pixel_common::run_main(
        "pixel-operator",
        &args.log.clone(),
        pixel_operator::run(args),
    )
    .await
}
