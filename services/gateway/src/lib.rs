//! gateway: the WebSocket gateway that fans pixel updates out to browsers.
//!
//! One Redis subscription per process ([`subscriber`]) feeds a bounded broadcast
//! ([`fanout`]) that every connection ([`socket`], behind `GET /ws` in [`ws`]) reads;
//! placements are forwarded to canvas-api ([`api`]). The protocol is in
//! `docs/protocol.md` ([`protocol`]).

pub mod address;
pub mod api;
pub mod fanout;
pub mod identity;
pub mod metrics;
pub mod protocol;
pub mod redis_link;
pub mod sign_in;
pub mod socket;
pub mod subscriber;
pub mod ws;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{any, get, post},
};
use clap::Parser;
use pixel_common::{
    canvas::GeometryError,
    config::{ApiTokenArgs, CanvasArgs, RedisArgs},
    error::ErrorChain,
    health, metrics as common_metrics, ports,
    serve::ServeError,
    telemetry::LogArgs,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    address::{AddressLimits, Cidr},
    api::{ApiClient, ApiError},
    fanout::Fanout,
    identity::{IdentityArgs, Issuer},
    metrics::Metrics,
    protocol::CanvasInfo,
    redis_link::{LinkError, RedisLink},
    sign_in::{SignIn, SignInArgs},
    socket::{Limits, Shared},
    subscriber::Subscriber,
    ws::Origins,
};

/// The most recent updates a gateway keeps in memory for reconnecting clients (16 bytes
/// each), when `--resync-max` is larger.
pub const RECENT_MAX: u64 = 10_000;

fn positive_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{value:?} is not a positive number")),
    }
}

/// Configuration, from flags or the environment the operator sets on the pod.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gateway",
    version,
    about = "The WebSocket gateway that fans pixel updates out to browsers.",
    args_override_self = true
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = ports::ENV_LISTEN_ADDR, default_value_t = ports::listen_any(ports::GATEWAY))]
    pub listen_addr: SocketAddr,

    /// canvas-api's base URL.
    #[arg(long, env = ports::ENV_API_URL, default_value = ports::LOCAL_API_URL)]
    pub api_url: String,

    /// How long one call to canvas-api may take, in ms.
    #[arg(long, env = ports::ENV_API_TIMEOUT_MS, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub api_timeout_ms: u64,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub canvas: CanvasArgs,

    #[command(flatten)]
    pub token: ApiTokenArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,

    #[command(flatten)]
    pub sign_in: SignInArgs,

    /// WebSocket connections this gateway accepts; more are closed with 1013.
    #[arg(long, env = ports::ENV_MAX_CONNECTIONS, default_value_t = 10_000)]
    pub max_connections: usize,

    /// WebSocket connections one remote address may hold on this gateway (0: no limit);
    /// more are refused with 429 before the upgrade.
    #[arg(long, env = ports::ENV_WS_MAX_CONNECTIONS_PER_ADDRESS, default_value_t = 100)]
    pub max_connections_per_address: usize,

    /// Proxies (addresses or ranges, comma-separated) whose `X-Forwarded-For` names the
    /// client: the Ingress controller. Empty: the peer address is the client's.
    #[arg(long, env = ports::ENV_WS_TRUSTED_PROXIES, value_delimiter = ',', default_value = address::DEFAULT_TRUSTED_PROXIES)]
    pub trusted_proxies: Vec<Cidr>,

    /// The largest message (and frame) a client may send, in bytes; larger closes with 1009.
    #[arg(long, env = ports::ENV_WS_MAX_MESSAGE_BYTES, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub max_message_bytes: u32,

    /// Placements per second one connection may sustain.
    #[arg(long, env = ports::ENV_WS_PLACEMENT_RATE, default_value_t = 5.0, value_parser = positive_rate)]
    pub placement_rate: f64,

    /// Placements one connection may send at once.
    #[arg(long, env = ports::ENV_WS_PLACEMENT_BURST, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub placement_burst: u32,

    /// Refused messages in a row after which a connection is closed with 1008.
    #[arg(long, env = ports::ENV_WS_FLOOD_LIMIT, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub flood_limit: u32,

    /// Origins allowed besides the gateway's own host, comma-separated; `*` allows any.
    #[arg(long, env = ports::ENV_WS_ALLOWED_ORIGINS, value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// How often each client is pinged, in ms.
    #[arg(long, env = ports::ENV_WS_PING_INTERVAL_MS, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub ping_interval_ms: u64,

    /// How long a client may stay silent (no message, no pong) before it is closed with
    /// 4000, in ms.
    #[arg(long, env = ports::ENV_WS_IDLE_TIMEOUT_MS, default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub idle_timeout_ms: u64,

    /// How long one write to a client may block before the connection is dropped, in ms.
    #[arg(long, env = ports::ENV_WS_SEND_TIMEOUT_MS, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub send_timeout_ms: u64,

    /// Update batches a client may fall behind before it is closed with 4008.
    #[arg(long, env = ports::ENV_WS_CLIENT_QUEUE, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub client_queue: u32,

    /// How long updates are gathered into one frame, in ms.
    #[arg(long, env = ports::ENV_WS_BATCH_MS, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub batch_ms: u64,

    /// The most missed updates sent from history to a reconnecting client (and filled
    /// after a lost subscription); past it, the client is told to refetch the snapshot.
    #[arg(long, env = ports::ENV_WS_RESYNC_MAX, default_value_t = 10_000)]
    pub resync_max: u64,

    /// How often this gateway reports its connection count to Redis, in ms.
    #[arg(long, env = ports::ENV_ONLINE_INTERVAL_MS, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..))]
    pub online_interval_ms: u64,

    /// How long a stopping gateway waits for its connections to close, in ms.
    #[arg(long, env = ports::ENV_SHUTDOWN_GRACE_MS, default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Why the gateway cannot start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid canvas size")]
    Size(#[from] GeometryError),
    #[error(transparent)]
    Schedule(#[from] pixel_common::opening::ScheduleError),
    #[error("cannot set up the Redis client")]
    Redis(#[from] LinkError),
    #[error("cannot set up the canvas-api client")]
    Api(#[from] ApiError),
    #[error(transparent)]
    ApiToken(#[from] pixel_common::config::ApiTokenError),
    #[error(transparent)]
    IdentityKey(#[from] identity::KeyError),
    #[error("invalid sign-in configuration")]
    SignIn(#[from] sign_in::SignInConfigError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("the server task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// What the routes share; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub shared: Shared,
    pub redis: RedisLink,
    /// True while the Redis subscription is live.
    pub live: Arc<AtomicBool>,
    /// Connections holding a slot.
    pub connections: Arc<AtomicUsize>,
    pub max_connections: usize,
    /// Connections per remote address.
    pub addresses: Arc<AddressLimits>,
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[Cidr]>,
    pub origins: Arc<Origins>,
    /// Verifies and issues identities.
    pub issuer: Arc<Issuer>,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The subscription and online-count tasks.
    background: TaskTracker,
}

impl Gateway {
    /// Checks the configuration and starts the subscription and online-count tasks.
    /// Must be called inside a Tokio runtime; Redis and canvas-api may still be down.
    pub fn start(args: &Args) -> Result<Self, RunError> {
        let size = args.canvas.size()?;
        let opening = args.canvas.opening()?;
        let redis = RedisLink::new(&args.redis)?;
        let identity = &args.identity;
        let keys = [
            Some(identity.identity_key.as_str()),
            identity.identity_key_previous.as_deref(),
            identity.identity_key_next.as_deref(),
        ];
        let sign_in = SignIn::new(
            &args.sign_in,
            &keys.into_iter().flatten().collect::<Vec<_>>(),
            identity.identity_cookie_secure,
        )?;
        let issuer = Arc::new(Issuer::with_sign_in(&args.identity, sign_in)?);
        let api = ApiClient::new(
            &args.api_url,
            args.token.check()?,
            Duration::from_millis(args.api_timeout_ms),
        )?;
        let metrics = Metrics::new();
        let recent = usize::try_from(args.resync_max.min(RECENT_MAX)).unwrap_or(0);
        let fanout = Arc::new(Fanout::new(args.client_queue as usize, recent));
        let (online_tx, online) = watch::channel(0);
        let stop = CancellationToken::new();
        let live = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            limits: Arc::new(Limits {
                max_message_bytes: args.max_message_bytes as usize,
                placement_rate: args.placement_rate,
                placement_burst: args.placement_burst,
                flood_limit: args.flood_limit,
                ping_interval: Duration::from_millis(args.ping_interval_ms),
                idle_timeout: Duration::from_millis(args.idle_timeout_ms),
                send_timeout: Duration::from_millis(args.send_timeout_ms),
                resync_max: args.resync_max,
            }),
            canvas: Arc::new(CanvasInfo {
                width: size.width(),
                height: size.height(),
                palette: args.canvas.canvas_palette.to_strings(),
                cooldown_seconds: args.canvas.canvas_cooldown_seconds,
                undo_seconds: args.canvas.canvas_undo_seconds,
                read_only: opening.read_only,
                opens_at_ms: opening.opens_at_ms,
                closes_at_ms: opening.closes_at_ms,
            }),
            fanout: Arc::clone(&fanout),
            api: api.clone(),
            online,
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        let background = TaskTracker::new();
        let subscriber = Subscriber {
            redis: redis.clone(),
            api,
            fanout,
            metrics,
            live: Arc::clone(&live),
            batch: Duration::from_millis(args.batch_ms),
            ping_every: Duration::from_millis(args.online_interval_ms),
            resync_max: args.resync_max,
        };
        background.spawn(subscriber.run(stop.clone()));
        let gateway_id = format!("gw-{:016x}", rand::random::<u64>());
        tracing::info!(gateway = %gateway_id, "gateway id for the online count");
        background.spawn(subscriber::report_online(
            redis.clone(),
            gateway_id,
            Arc::clone(&connections),
            online_tx,
            Duration::from_millis(args.online_interval_ms),
            stop,
        ));
        background.close();
        Ok(Self {
            shared,
            redis,
            live,
            connections,
            max_connections: args.max_connections,
            addresses: Arc::new(AddressLimits::new(args.max_connections_per_address)),
            trusted_proxies: args.trusted_proxies.clone().into(),
            origins: Arc::new(Origins::new(&args.allowed_origins)),
            issuer,
            tracker: TaskTracker::new(),
            background,
        })
    }

    /// Stops accepting, closes every socket with 1001 and waits for the connection and
    /// background tasks, at most `grace`.
    pub async fn stop(&self, grace: Duration) {
        self.shared.stop.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(grace, async {
            self.tracker.wait().await;
            self.background.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                connections = self.tracker.len(),
                "connections still open after the grace period; dropping them"
            );
        }
    }
}

/// `/readyz`: ready when the subscription is live and Redis answers PING.
async fn readyz(State(gateway): State<Gateway>) -> (StatusCode, &'static str) {
    if !gateway.live.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not subscribed to updates");
    }
    match gateway.redis.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable")
        }
    }
}

/// The HTTP application: `/ws`, probes and `/metrics`.
pub fn app(gateway: Gateway) -> Router {
    let metrics = gateway.shared.metrics.clone();
    let routes = Router::new()
        .route(ports::WS_PATH, get(ws::upgrade))
        .route(ports::AUTH_LOGIN_PATH, get(sign_in::login))
        .route(ports::AUTH_CALLBACK_PATH, get(sign_in::callback))
        .route(ports::AUTH_LOGOUT_PATH, post(sign_in::logout))
        .route(
            &format!("{}/{{*rest}}", ports::AUTH_MODERATION_PATH),
            any(sign_in::moderate),
        )
        .route(ports::READYZ_PATH, get(readyz))
        .with_state(gateway);
    metrics
        .http
        .instrument(routes)
        .merge(health::router())
        .merge(common_metrics::router(metrics.registry))
}

/// Serves on `listener` until `shutdown` resolves, then closes every socket with 1001 and
/// returns within the grace period.
pub async fn serve(
    listener: TcpListener,
    args: &Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let gateway = Gateway::start(args)?;
    let stop = gateway.shared.stop.clone();
    let mut server = tokio::spawn(pixel_common::serve::serve_listener(
        listener,
        app(gateway.clone()),
        stop.clone().cancelled_owned(),
    ));
    let early = tokio::select! {
        () = shutdown => None,
        served = &mut server => Some(served),
    };
    gateway
        .stop(Duration::from_millis(args.shutdown_grace_ms))
        .await;
    let served = match early {
        Some(served) => served,
        None => server.await,
    };
    served.map_err(RunError::Task)??;
    Ok(())
}

/// Binds `args.listen_addr` and [`serve`]s on it until `shutdown` resolves (`main` passes
/// [`pixel_common::shutdown::signal_received`]).
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listener = pixel_common::serve::bind(args.listen_addr)?;
    serve(listener, &args, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_serves_until_its_shutdown_resolves() {
        // Redis refuses connections: the gateway serves (not ready) and keeps retrying.
        let args = Args::try_parse_from([
            "gateway",
            "--listen-addr",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:0",
            "--api-token",
            "0123456789abcdef",
            "--identity-key",
            "an identity key of thirty-two or more bytes",
        ])
        .expect("flags");
        pixel_common::testing::assert_runs_until_shutdown(|shutdown| run(args, shutdown)).await;
    }
}
