//! Graceful shutdown on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

use crate::error::ErrorChain;

/// Resolves when the process is asked to stop. Passed to servers as a parameter so tests
/// can substitute their own trigger.
///
/// The handlers are installed when this is called, not when the future is first polled:
/// call it before binding, so a SIGTERM that arrives as soon as the port is open is caught
/// rather than killing the process.
pub fn signal_received() -> impl Future<Output = ()> + Send + 'static {
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
                _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
            },
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(error = %ErrorChain(&error), "cannot listen for SIGTERM/SIGINT; stopping only when killed");
                std::future::pending::<()>().await;
            }
        }
    }
}
