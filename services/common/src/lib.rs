//! The pieces every Pixel Playground binary shares.
//!
//! Ports, environment variable names and probe paths live here so the services and the
//! operator (which writes the pods that run them) cannot disagree about them.
//!
//! The contract modules (`ports`, `canvas`, `wire`, `redis_schema`, `operator_contract`, `backup`,
//! `error`) need only std, serde and thiserror, so the tooling uses them too; everything a
//! running binary needs is behind the default `runtime` feature.

pub mod backup;
pub mod canvas;
pub mod error;
pub mod operator_contract;
pub mod ports;
pub mod redis_schema;
pub mod wire;

#[cfg(feature = "runtime")]
pub mod batch;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod health;
#[cfg(feature = "runtime")]
pub mod identity;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod opening;
#[cfg(feature = "runtime")]
pub mod serve;
#[cfg(feature = "runtime")]
pub mod shutdown;
#[cfg(feature = "runtime")]
pub mod telemetry;

#[cfg(feature = "test-support")]
pub mod testing;

#[cfg(feature = "runtime")]
use std::{future::Future, process::ExitCode};

/// The body of every `main`: install logging, run the binary, log a failure with its whole
/// chain of causes and turn it into a non-zero exit code.
#[cfg(feature = "runtime")]
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
