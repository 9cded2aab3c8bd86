//! Graceful shutdown on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).

use tokio::signal::unix::{SignalKind, signal};

/// Resolves when the process is asked to stop. Passed to servers as a parameter so tests
/// can substitute their own trigger.
pub async fn signal_received() {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
    }
}
