//! frontend: Serves the canvas page and its assets.
//!
//! Everything the browser loads from here is embedded in the binary ([`assets`]); the page
//! learns where canvas-api and the gateway are from `/config.json` ([`config`]), which by
//! default names paths on its own origin, so one Ingress routes `/`, `/api/v1` and `/ws`.
//! The page's code is in `assets/` (plain ES modules, no build step).

pub mod assets;
pub mod config;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    http::{
        HeaderMap, HeaderName, HeaderValue, StatusCode,
        header::{CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS},
    },
    response::IntoResponse,
    routing::get,
};
use clap::Parser;
use pixel_common::{
    error::ErrorChain,
    health,
    metrics::{self, HttpMetrics},
    ports,
    serve::{ServeError, serve},
    telemetry::LogArgs,
};
use prometheus_client::registry::Registry;
use tower_http::{compression::CompressionLayer, set_header::SetResponseHeaderLayer};

use crate::{
    assets::{ASSETS, Static},
    config::{PublicConfig, PublicUrl, content_security_policy},
};

/// The path of the page's configuration document.
pub const CONFIG_PATH: &str = "/config.json";

/// Configuration, from flags or the environment the operator sets on the pod.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "frontend",
    version,
    about = "Serves the canvas page and its assets.",
    args_override_self = true
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = ports::ENV_LISTEN_ADDR, default_value_t = ports::listen_any(ports::FRONTEND))]
    pub listen_addr: SocketAddr,

    /// canvas-api's base as the browser reaches it: a path on this origin or an
    /// http(s):// URL (which then needs CORS on canvas-api).
    #[arg(long, env = ports::ENV_PUBLIC_API_URL, default_value = "/api/v1", value_parser = PublicUrl::api)]
    pub public_api_url: PublicUrl,

    /// The gateway's WebSocket as the browser reaches it: a path on this origin or a
    /// ws(s):// URL (whose origin the gateway must allow).
    #[arg(long, env = ports::ENV_PUBLIC_WS_URL, default_value = "/ws", value_parser = PublicUrl::websocket)]
    pub public_ws_url: PublicUrl,

    #[command(flatten)]
    pub log: LogArgs,
}

/// The HTTP application: the page and its assets, `/config.json`, probes and `/metrics`,
/// with security headers on every answer.
pub fn app(args: &Args) -> Router {
    let mut registry = Registry::default();
    let http = HttpMetrics::register(&mut registry);

    let mut routes = Router::new();
    for asset in ASSETS {
        let file = Arc::new(Static::new(
            asset.content_type,
            Bytes::from_static(asset.body),
        ));
        routes = routes.route(
            asset.path,
            get(move |headers: HeaderMap| async move { file.respond(&headers) }),
        );
    }
    let config = Arc::new(config_document(args));
    routes = routes
        .route(
            CONFIG_PATH,
            get(move |headers: HeaderMap| async move { config.respond(&headers) }),
        )
        // Nothing to depend on: serving at all is being ready.
        .route(ports::READYZ_PATH, get(|| async { "ready" }));

    let csp = HeaderValue::from_str(&content_security_policy(
        &args.public_api_url,
        &args.public_ws_url,
    ))
    .unwrap_or_else(|error| {
        // PublicUrl refuses every character a header cannot hold; keep a safe policy anyway.
        tracing::error!(error = %ErrorChain(&error), "invalid Content-Security-Policy; using the strictest");
        HeaderValue::from_static("default-src 'self'")
    });
    http.instrument(routes)
        .merge(health::router())
        .merge(metrics::router(Arc::new(registry)))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found").into_response() })
        .layer(CompressionLayer::new())
        .layer(header(CONTENT_SECURITY_POLICY, csp))
        .layer(header(
            X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(header(
            REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
}

fn header(name: HeaderName, value: HeaderValue) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, value)
}

/// `/config.json`, serialized once: it only changes with the flags.
fn config_document(args: &Args) -> Static {
    let document = PublicConfig::new(&args.public_api_url, &args.public_ws_url);
    let body = serde_json::to_vec(&document).unwrap_or_else(|error| {
        tracing::error!(error = %ErrorChain(&error), "cannot serialize /config.json; serving the defaults");
        br#"{"apiBase":"/api/v1","wsUrl":"/ws"}"#.to_vec()
    });
    Static::new("application/json", Bytes::from(body))
}

/// Serves until `shutdown` resolves (`main` passes
/// [`pixel_common::shutdown::signal_received`]), then drains in-flight requests.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    tracing::info!(
        api = %args.public_api_url,
        ws = %args.public_ws_url,
        "the page will use these locations"
    );
    serve(args.listen_addr, app(&args), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_serves_until_its_shutdown_resolves() {
        let args =
            Args::try_parse_from(["frontend", "--listen-addr", "127.0.0.1:0"]).expect("flags");
        pixel_common::testing::assert_runs_until_shutdown(|shutdown| run(args, shutdown)).await;
    }
}
