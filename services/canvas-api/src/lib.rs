//! canvas-api: the canvas REST API, on Redis.
//!
//! Reads are served from an in-process snapshot cache that follows the update channel
//! ([`cache`]); placements are applied by one atomic Lua script in Redis ([`store`]), the
//! placements that arrive together in one call of it ([`commit`]); handlers and the OpenAPI document come from one
//! source ([`api`], through `utoipa-axum`).

pub mod api;
pub mod cache;
pub mod caller;
pub mod commit;
pub mod error;
pub mod moderation;
pub mod rollback;
pub mod store;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::http::{
    HeaderName, HeaderValue, Method,
    header::{ETAG, IF_NONE_MATCH},
};
use axum::{Extension, Router, extract::DefaultBodyLimit};
use bytes::Bytes;
use clap::Parser;
use pixel_common::{
    canvas::{CanvasSize, GeometryError, Palette},
    config::{ApiTokenArgs, CanvasArgs, RedisArgs},
    error::ErrorChain,
    health,
    metrics::{self, HttpMetrics},
    opening::{Opening, ScheduleError},
    ports,
    serve::{ServeError, serve},
    telemetry::LogArgs,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tower_http::{
    compression::CompressionLayer,
    cors::{AllowOrigin, CorsLayer},
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    cache::SnapshotCache,
    commit::GroupCommit,
    store::{PlacementRate, PlacementRules, RedisConfig, Store, StoreError},
};

/// Configuration, from flags or the environment the operator sets on the pod.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "canvas-api",
    version,
    about = "The canvas REST API, on Redis.",
    args_override_self = true
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = ports::ENV_LISTEN_ADDR, default_value_t = ports::listen_any(ports::CANVAS_API))]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub canvas: CanvasArgs,

    #[command(flatten)]
    pub token: ApiTokenArgs,

    /// The token moderators present (`Authorization: Bearer <token>`) on the moderation
    /// API, at least 16 printable ASCII characters. Unset: moderation is off.
    #[arg(long, env = ports::ENV_MODERATOR_TOKEN, hide_env_values = true)]
    pub moderator_token: Option<String>,

    /// Placements per second one person (client id) may sustain, across every connection,
    /// gateway and API replica; 0: no limit.
    #[arg(long, env = ports::ENV_PLACEMENT_RATE, default_value_t = 5.0, value_parser = placement_rate)]
    pub placement_rate: f64,

    /// Placements one person may make at once.
    #[arg(long, env = ports::ENV_PLACEMENT_BURST, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub placement_burst: u32,

    /// How many placements the history stream keeps.
    #[arg(long, env = ports::ENV_HISTORY_MAX_LEN, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub history_max_len: u32,

    /// The most placements one history answer carries.
    #[arg(long, env = ports::ENV_HISTORY_PAGE_MAX, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub history_page_max: u32,

    /// How long a cached snapshot is served without fresh evidence from Redis (a version
    /// check, or an answered PING on the update subscription) that it is current, in ms.
    #[arg(long, env = ports::ENV_SNAPSHOT_MAX_AGE_MS, default_value_t = 1000)]
    pub snapshot_max_age_ms: u64,

    /// The largest request body read, in bytes.
    #[arg(long, env = ports::ENV_MAX_BODY_BYTES, default_value_t = 1024)]
    pub max_body_bytes: usize,

    /// Origins (`scheme://host:port`, comma-separated) whose pages may call the API from a
    /// browser (CORS). Empty: same-origin only, as behind the Ingress.
    #[arg(long, env = ports::ENV_CORS_ALLOWED_ORIGINS, value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,

    #[command(flatten)]
    pub log: LogArgs,
}

/// The moderator token, checked like the internal token, from which it must differ (the
/// gateway's credential must not moderate, nor a moderator's place).
fn moderator_token(args: &Args) -> Result<Option<caller::BearerToken>, RunError> {
    let Some(token) = &args.moderator_token else {
        return Ok(None);
    };
    let printable = token.bytes().all(|b| b.is_ascii_graphic());
    if token.len() < ports::API_TOKEN_MIN_LEN || !printable || *token == args.token.api_token {
        return Err(RunError::ModeratorToken);
    }
    Ok(Some(caller::BearerToken::new(token)))
}

/// A placement rate: 0 (no limit) or 0.001 to 1,000,000 per second.
fn placement_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if rate == 0.0 || (0.001..=1_000_000.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("expected 0 (no limit) or 0.001 to 1000000 placements per second".to_owned())
    }
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid canvas size")]
    Size(#[from] GeometryError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("cannot set up the Redis client")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("invalid CORS origin {0:?}: expected scheme://host[:port]")]
    CorsOrigin(String),
    #[error(transparent)]
    ApiToken(#[from] pixel_common::config::ApiTokenError),
    #[error(
        "{} must be at least {} printable ASCII characters, and not the internal token",
        ports::ENV_MODERATOR_TOKEN,
        ports::API_TOKEN_MIN_LEN
    )]
    ModeratorToken,
}

/// The canvas's settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub size: CanvasSize,
    pub palette: Palette,
    pub cooldown_seconds: u32,
    pub cooldown: Duration,
    pub undo_seconds: u32,
    pub opening: Opening,
    pub rate: PlacementRate,
    pub history_max_len: u32,
    pub history_page_max: u32,
    /// What a placement's caller must present.
    pub api_token: caller::BearerToken,
    /// What a moderator must present; `None`: moderation is off.
    pub moderator_token: Option<caller::BearerToken>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlacementLabels {
    result: &'static str,
}

/// Metrics beyond the HTTP ones every service has.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    http: HttpMetrics,
    placements: Family<PlacementLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let placements = Family::<PlacementLabels, Counter>::default();
        registry.register(
            "pixel_placements",
            "Placement requests, by result (accepted, cooldown, rejected, unauthorized, unavailable)",
            placements.clone(),
        );
        Self {
            registry: Arc::new(registry),
            http,
            placements,
        }
    }

    /// Counts one placement request with its result.
    pub fn placed(&self, result: &'static str) {
        self.placements
            .get_or_create(&PlacementLabels { result })
            .inc();
    }
}

/// What the handlers share; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    /// Shared, not cloned per request: it holds the scripts' source and the client's
    /// configuration.
    pub store: Arc<Store>,
    pub cache: Arc<SnapshotCache>,
    /// Where placements go: batched into one script call (see [`commit`]).
    pub placements: GroupCommit,
    pub metrics: Metrics,
}

impl Settings {
    /// The rules the placement script holds every placement to.
    pub fn placement_rules(&self) -> PlacementRules {
        PlacementRules {
            cooldown: self.cooldown,
            undo_window: Duration::from_secs(self.undo_seconds.into()),
            rate: self.rate,
            history_max_len: self.history_max_len,
        }
    }
}

impl AppState {
    /// Checks the configuration and sets up the (lazily connecting) Redis client. Must be
    /// called inside a Tokio runtime.
    pub fn new(args: &Args) -> Result<Self, RunError> {
        let settings = Settings {
            size: args.canvas.size()?,
            palette: args.canvas.canvas_palette.clone(),
            cooldown_seconds: args.canvas.canvas_cooldown_seconds,
            cooldown: Duration::from_secs(args.canvas.canvas_cooldown_seconds.into()),
            undo_seconds: args.canvas.canvas_undo_seconds,
            opening: args.canvas.opening()?,
            rate: PlacementRate {
                interval: if args.placement_rate > 0.0 {
                    Duration::from_secs_f64(1.0 / args.placement_rate).max(Duration::from_micros(1))
                } else {
                    Duration::ZERO
                },
                burst: args.placement_burst,
            },
            history_max_len: args.history_max_len,
            history_page_max: args.history_page_max,
            api_token: caller::BearerToken::new(args.token.check()?),
            moderator_token: moderator_token(args)?,
        };
        let store = Store::new(&RedisConfig {
            url: args.redis.redis_url.clone(),
            password: args.redis.redis_password.clone(),
            timeout: args.redis.timeout(),
        })?;
        let max_age = Duration::from_millis(args.snapshot_max_age_ms);
        let cache = Arc::new(SnapshotCache::new(
            settings.size,
            &settings.palette,
            max_age,
        ));
        // PINGs at half the max age keep the evidence fresh; with no max age they only
        // watch the connection.
        let ping_every = if max_age.is_zero() {
            Duration::from_secs(1)
        } else {
            (max_age / 2).clamp(Duration::from_millis(20), Duration::from_secs(1))
        };
        tokio::spawn(cache::follow_updates(
            Arc::downgrade(&cache),
            store.clone(),
            ping_every,
        ));
        let store = Arc::new(store);
        let placements = GroupCommit::start(Arc::clone(&store), settings.placement_rules());
        Ok(Self {
            settings: Arc::new(settings),
            store,
            cache,
            placements,
            metrics: Metrics::new(),
        })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Pixel Playground canvas API",
        description = "Read the canvas, place pixels. See docs/protocol.md."
    ),
    modifiers(&BearerTokenScheme)
)]
struct ApiDoc;

/// The name of the placement endpoint's security scheme in the OpenAPI document.
pub const INTERNAL_TOKEN_SCHEME: &str = "internalToken";
/// The name of the moderation API's security scheme in the OpenAPI document.
pub const MODERATOR_TOKEN_SCHEME: &str = "moderatorToken";

/// Declares the internal and the moderator token as HTTP bearer schemes.
struct BearerTokenScheme;

impl utoipa::Modify for BearerTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let schemes = [
            (
                INTERNAL_TOKEN_SCHEME,
                "The canvas's internal token (PIXEL_API_TOKEN): only its gateway holds it",
            ),
            (
                MODERATOR_TOKEN_SCHEME,
                "The canvas's moderator token (PIXEL_MODERATOR_TOKEN), from its <name>-moderator Secret",
            ),
        ];
        for (name, description) in schemes {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(description))
                        .build(),
                ),
            );
        }
    }
}

/// The API routes and their OpenAPI document, from the same annotated handlers.
pub fn api_router() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::info))
        .routes(routes!(api::canvas))
        .routes(routes!(api::canvas_png))
        .routes(routes!(api::place))
        .merge(
            // Many placements a body: a limit of its own, whatever PIXEL_MAX_BODY_BYTES says.
            OpenApiRouter::new()
                .routes(routes!(api::place_batch))
                .layer(DefaultBodyLimit::max(api::BATCH_BODY_MAX_BYTES)),
        )
        .routes(routes!(api::undo))
        .routes(routes!(moderation::bans))
        .routes(routes!(moderation::ban, moderation::unban))
        .routes(routes!(moderation::roll_back))
        .routes(routes!(moderation::audit))
        .routes(routes!(api::pixel))
        .routes(routes!(api::history))
        .routes(routes!(api::openapi_json))
        .routes(routes!(api::readyz))
        .split_for_parts()
}

/// The OpenAPI document of this canvas: [`api_router`]'s, with the bounds the settings put
/// on coordinates and colours, so that a request the document allows is one the API accepts.
pub fn openapi_document(settings: &Settings) -> serde_json::Value {
    let (_, doc) = api_router();
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    let bounds = [
        ("x", u64::from(settings.size.width()) - 1),
        ("y", u64::from(settings.size.height()) - 1),
        ("color", u64::from(settings.palette.len()).saturating_sub(1)),
    ];
    for (name, max) in bounds {
        if let Some(property) = doc.pointer_mut(&format!(
            "/components/schemas/PlaceRequest/properties/{name}"
        )) {
            property["minimum"] = 0.into();
            property["maximum"] = max.into();
        }
        // An area's corner and size on this canvas.
        let area_bound = match name {
            "x" => Some(("x", "width")),
            "y" => Some(("y", "height")),
            _ => None,
        };
        if let Some((corner, extent)) = area_bound {
            let area = "/components/schemas/AreaRequest/properties";
            if let Some(property) = doc.pointer_mut(&format!("{area}/{corner}")) {
                property["maximum"] = max.into();
            }
            if let Some(property) = doc.pointer_mut(&format!("{area}/{extent}")) {
                property["maximum"] = (max + 1).into();
            }
        }
        let parameters = doc
            .pointer_mut("/paths/~1api~1v1~1pixels~1{x}~1{y}/get/parameters")
            .and_then(serde_json::Value::as_array_mut);
        for parameter in parameters.into_iter().flatten() {
            if parameter["name"] == name {
                parameter["schema"]["maximum"] = max.into();
            }
        }
    }
    doc
}

/// The HTTP application: the API, `/openapi.json`, probes and `/metrics`, compressed when
/// the client accepts it, with bodies limited to `max_body_bytes`.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    let (api, _) = api_router();
    let doc = serde_json::to_vec(&openapi_document(&state.settings))
        .map(Bytes::from)
        .unwrap_or_else(|error| {
            tracing::error!(error = %ErrorChain(&error), "cannot serialize the OpenAPI document");
            Bytes::new()
        });
    let metrics = state.metrics.clone();
    metrics
        .http
        .instrument(api.with_state(state))
        .layer(Extension(api::OpenApiJson(doc)))
        .merge(health::router())
        .merge(metrics::router(metrics.registry))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CompressionLayer::new())
}

/// CORS for pages served from `origins` (another host or port than the API's): reads only,
/// and the headers a snapshot client needs. `None` when no origin is allowed.
pub fn cors(origins: &[String]) -> Result<Option<CorsLayer>, RunError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|origin| cors_origin(origin).ok_or_else(|| RunError::CorsOrigin(origin.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET])
            .allow_headers([IF_NONE_MATCH])
            .expose_headers([ETAG, HeaderName::from_static(ports::CANVAS_VERSION_HEADER)]),
    ))
}

/// `scheme://host[:port]`, as browsers send it in `Origin`.
fn cors_origin(value: &str) -> Option<HeaderValue> {
    let origin = value.trim().trim_end_matches('/');
    let host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))?;
    if host.is_empty() || host.contains(['/', ' ']) {
        return None;
    }
    HeaderValue::from_str(origin).ok()
}

/// Serves until `shutdown` resolves (`main` passes
/// [`pixel_common::shutdown::signal_received`]), then drains in-flight requests.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let state = AppState::new(&args)?;
    let mut router = app(state, args.max_body_bytes);
    if let Some(cors) = cors(&args.cors_allowed_origins)? {
        router = router.layer(cors);
    }
    serve(args.listen_addr, router, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request, routing::get};
    use tower::ServiceExt;

    use super::*;

    async fn allowed_origin(origins: &[&str], origin: &str) -> Option<String> {
        let origins: Vec<String> = origins.iter().map(|o| (*o).to_owned()).collect();
        let layer = cors(&origins)
            .expect("valid origins")
            .expect("some origin allowed");
        let response = Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(layer)
            .oneshot(
                Request::get("/x")
                    .header("origin", origin)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    }

    #[tokio::test]
    async fn only_listed_origins_may_read_from_a_browser() {
        // The page served by a local frontend, on another port than the API's.
        let frontend = format!("http://127.0.0.1:{}", ports::FRONTEND);
        let listed = [frontend.as_str(), "https://canvas.example.com/"];
        assert_eq!(
            allowed_origin(&listed, &frontend).await.as_deref(),
            Some(frontend.as_str())
        );
        assert_eq!(
            allowed_origin(&listed, "https://canvas.example.com")
                .await
                .as_deref(),
            Some("https://canvas.example.com")
        );
        assert_eq!(allowed_origin(&listed, "http://evil.example").await, None);
    }

    /// Flags for a canvas-api on a free loopback port, with a Redis that refuses connections.
    fn loopback_args() -> Args {
        Args::try_parse_from([
            "canvas-api",
            "--listen-addr",
            "127.0.0.1:0",
            "--redis-url",
            "redis://127.0.0.1:0",
            "--api-token",
            "0123456789abcdef",
        ])
        .expect("valid flags")
    }

    #[tokio::test]
    async fn run_serves_until_its_shutdown_resolves() {
        pixel_common::testing::assert_runs_until_shutdown(|shutdown| {
            run(loopback_args(), shutdown)
        })
        .await;
    }

    #[tokio::test]
    async fn a_taken_port_fails_run_naming_the_address_and_the_cause() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = taken.local_addr().expect("addr");
        let mut args = loopback_args();
        args.listen_addr = addr;
        let error = run(args, std::future::pending())
            .await
            .expect_err("the port is taken");
        assert!(matches!(error, RunError::Serve(ServeError::Bind { .. })));
        let chain = ErrorChain(&error).to_string();
        assert!(chain.contains(&addr.to_string()), "{chain}");
        assert!(
            chain.len() > error.to_string().len(),
            "the cause follows: {chain}"
        );
    }

    #[tokio::test]
    async fn a_bad_redis_url_is_reported_with_its_cause() {
        let mut args = loopback_args();
        args.redis.redis_url = "not a url".to_owned();
        let error = AppState::new(&args).expect_err("refused");
        assert!(matches!(error, RunError::Store(_)));
        let chain = ErrorChain(&error).to_string();
        assert!(
            chain.starts_with("cannot set up the Redis client: invalid Redis configuration: "),
            "{chain}"
        );
    }

    #[test]
    fn no_origins_means_no_cors_and_bad_ones_are_refused() {
        assert!(matches!(cors(&[]), Ok(None)));
        for bad in [
            "canvas.example.com",
            "http://",
            "http://host/path",
            "ftp://host",
        ] {
            assert!(
                matches!(cors(&[bad.to_owned()]), Err(RunError::CorsOrigin(_))),
                "{bad}"
            );
        }
    }
}
