//! The pieces every Pixel Playground binary shares.
//!
//! Ports, environment variable names and probe paths live here so the services and the
//! operator (which writes the pods that run them) cannot disagree about them.

pub mod canvas;
pub mod config;
pub mod error;
pub mod health;
pub mod metrics;
pub mod ports;
pub mod redis_schema;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod wire;

#[cfg(feature = "test-support")]
pub mod testing;

use std::{future::Future, process::ExitCode};

/// The body of every `main`: install logging, run the binary, log a failure with its whole
/// chain of causes and turn it into a non-zero exit code.
pub async fn run_main<E: std::error::Error + 'static>(
    name: &str,
    log: &telemetry::LogArgs,
    run: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    telemetry::init(log);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "{name} starting");
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error::ErrorChain(&error), "{name} failed");
            ExitCode::FAILURE
        }
    }
}
