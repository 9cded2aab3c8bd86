//! gateway: The WebSocket gateway that fans pixel updates out to browsers.

use std::net::SocketAddr;

use axum::Router;
use clap::Parser;
use pixel_common::{
    health, ports,
    serve::{ServeError, serve},
    shutdown,
    telemetry::LogArgs,
};

/// Configuration, from flags or the environment the operator sets on the pod.
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "The WebSocket gateway that fans pixel updates out to browsers."
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = ports::ENV_LISTEN_ADDR, default_value_t = SocketAddr::from(([0, 0, 0, 0], ports::GATEWAY)))]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub log: LogArgs,
}

/// The HTTP application.
pub fn app() -> Router {
    health::router()
}

/// Serves until SIGTERM.
pub async fn run(args: Args) -> Result<(), ServeError> {
    serve(args.listen_addr, app(), shutdown::signal_received()).await
}
