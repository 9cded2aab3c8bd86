//! pixel-operator: reconciles `PixelCanvas` resources into running canvases.
//!
//! At this stage it connects to the API server and serves its probes; reconciliation
//! arrives with the PixelCanvas API.

pub mod api;
pub mod children;
pub mod crd;
pub mod status;

use std::net::SocketAddr;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use clap::Parser;
use pixel_common::{health, ports, serve, shutdown, telemetry::LogArgs};

/// Configuration, from flags or the environment of the operator's pod.
#[derive(Debug, Parser)]
#[command(
    name = "pixel-operator",
    version,
    about = "Runs PixelCanvas resources on Kubernetes."
)]
pub struct Args {
    /// Address of the health endpoint.
    #[arg(long, env = ports::ENV_LISTEN_ADDR, default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::OPERATOR_HEALTH)))]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Kubernetes client configuration (set KUBECONFIG or run in a pod): {0}")]
    Config(#[source] kube::Error),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
}

/// Probes: liveness is the process itself; readiness needs the API server to answer.
pub fn app(client: kube::Client) -> Router {
    Router::new()
        .route(ports::READYZ_PATH, get(readyz))
        .with_state(client)
        .merge(health::router())
}

async fn readyz(State(client): State<kube::Client>) -> (StatusCode, String) {
    match client.apiserver_version().await {
        Ok(version) => (
            StatusCode::OK,
            format!("ok: API server {}", version.git_version),
        ),
        Err(error) => {
            tracing::warn!(%error, "API server unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "API server unreachable".to_owned(),
            )
        }
    }
}

/// Connects and serves until SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let client = kube::Client::try_default().await.map_err(Error::Config)?;
    serve::serve(args.listen_addr, app(client), shutdown::signal_received()).await?;
    Ok(())
}
