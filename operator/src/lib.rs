//! pixel-operator: reconciles `PixelCanvas` resources into running canvases.
//!
//! `api` defines the resource; `children` and `status` compute what should exist and what to
//! report, as pure functions; `reconcile` applies them; `controller` drives `reconcile` from
//! watches.

pub mod api;
pub mod caches;
pub mod children;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod storage;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State as AxumState, http::StatusCode, routing::get};
use clap::Parser;
use pixel_common::{error::ErrorChain, health, ports, serve, telemetry::LogArgs};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::leader::Leadership;

/// How long in-flight reconciles may run after the operator is asked to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Configuration, from flags or the environment of the operator's pod.
#[derive(Debug, Parser)]
#[command(
    name = "pixel-operator",
    version,
    about = "Runs PixelCanvas resources on Kubernetes."
)]
pub struct Args {
    /// Address of the health endpoint.
    #[arg(long, env = ports::ENV_LISTEN_ADDR, default_value_t = ports::listen_any(ports::OPERATOR_HEALTH))]
    pub listen_addr: SocketAddr,

    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = ports::ENV_WATCH_NAMESPACE)]
    pub watch_namespace: Option<String>,

    /// Canvases reconciled at once. Bounds the operator's memory and its burst of API
    /// requests when many canvases change together (at start, or hundreds applied at once).
    #[arg(long, env = ports::ENV_MAX_CONCURRENT_RECONCILES, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_concurrent_reconciles: u16,

    /// Milliseconds a canvas's reconcile waits for more changes to it (its children report
    /// status in bursts while pods start), so one reconcile answers the whole burst.
    #[arg(long, env = ports::ENV_RECONCILE_DEBOUNCE_MS, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub reconcile_debounce_ms: u64,

    /// The Redis image of canvases that leave `spec.redis.image` unset.
    #[arg(long, env = ports::ENV_DEFAULT_REDIS_IMAGE, default_value = children::DEFAULT_REDIS_IMAGE, value_parser = redis_image)]
    pub default_redis_image: String,

    /// The image repository (without tag) of canvases that leave `spec.image.repository`
    /// unset: a private or local registry's copy of the Pixel Playground image.
    #[arg(long, env = ports::ENV_IMAGE_REPOSITORY, default_value = children::DEFAULT_IMAGE_REPOSITORY, value_parser = image_repository)]
    pub image_repository: String,

    #[command(flatten)]
    pub leader: leader::LeaderArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Args {
    /// What the operator fills in where a canvas leaves a field unset.
    pub fn defaults(&self) -> children::Defaults {
        children::Defaults {
            redis_image: self.default_redis_image.clone(),
            image_repository: self.image_repository.clone(),
            ..children::Defaults::default()
        }
    }
}

/// `--default-redis-image`: what `spec.redis.image` accepts, and no whitespace (no image
/// reference has any; a stray newline from a ConfigMap would otherwise reach every pod).
fn redis_image(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > api::IMAGE_MAX_LENGTH {
        return Err(format!(
            "must be at most {} characters",
            api::IMAGE_MAX_LENGTH
        ));
    }
    if value.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace".to_owned());
    }
    Ok(value.to_owned())
}

/// `--image-repository`: what `spec.image.repository` accepts.
fn image_repository(value: &str) -> Result<String, String> {
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(api::IMAGE_REPOSITORY_PATTERN).expect("a valid pattern")
    });
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > api::IMAGE_MAX_LENGTH {
        return Err(format!(
            "must be at most {} characters",
            api::IMAGE_MAX_LENGTH
        ));
    }
    if !PATTERN.is_match(value) {
        return Err(format!(
            "must be an image repository without tag, matching {} (as spec.image.repository must)",
            api::IMAGE_REPOSITORY_PATTERN
        ));
    }
    Ok(value.to_owned())
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Kubernetes client configuration (set KUBECONFIG or run in a pod)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client")]
    Config(#[source] kube::Error),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error("lost the leader lease")]
    LostLeadership,
    #[error(
        "the lease namespace {0} does not exist: create it, name an existing one with \
         --lease-namespace (POD_NAMESPACE), or run a single operator with --leader-elect=false"
    )]
    LeaseNamespaceMissing(String),
}

/// Probes and metrics: liveness is the process itself; readiness waits for the caches.
pub fn app(state: Arc<State>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route(ports::READYZ_PATH, get(readyz))
        .with_state(state)
        .merge(health::router())
        .merge(pixel_common::metrics::router(registry))
}

/// What readiness reports: a standby replica is ready (it is doing its job, waiting); the
/// leader is ready once its caches have synced.
#[derive(Debug, Default)]
pub struct State {
    /// In the leader election (or running without one).
    pub joined: AtomicBool,
    pub leading: AtomicBool,
    pub synced: AtomicBool,
}

async fn readyz(AxumState(state): AxumState<Arc<State>>) -> (StatusCode, &'static str) {
    let flag = |f: &AtomicBool| f.load(Ordering::Acquire);
    match (
        flag(&state.joined),
        flag(&state.leading),
        flag(&state.synced),
    ) {
        (false, _, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "joining the leader election",
        ),
        (true, false, _) => (StatusCode::OK, "standby"),
        (true, true, true) => (StatusCode::OK, "ok"),
        (true, true, false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the PixelCanvas cache to sync",
        ),
    }
}

/// A client from the kubeconfig or the pod's ServiceAccount that counts every request it
/// sends, by verb (`pixel_operator_api_requests_total`).
async fn client(metrics: metrics::Metrics) -> Result<kube::Client, Error> {
    let config = kube::Config::infer().await.map_err(Error::Infer)?;
    let counting = tower::util::MapRequestLayer::new(move |request: http::Request<_>| {
        metrics.requested(&request);
        request
    });
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(Error::Config)?
        .with_layer(&counting)
        .build())
}

/// Connects, waits for leadership, runs the controller and serves probes and metrics until
/// `shutdown` resolves (or until leadership is lost, which ends the process so it can
/// rejoin).
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let client = client(metrics.clone()).await?;
    let state = Arc::new(State::default());
    if !args.leader.leader_elect {
        // Alone it leads from the start: readiness never reports an election it is not in.
        state.joined.store(true, Ordering::Release);
        state.leading.store(true, Ordering::Release);
    }
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let server = tokio::spawn(serve::serve(
        args.listen_addr,
        app(state.clone(), Arc::new(registry)),
        stopped(&stop),
    ));

    let mut leadership = match join_election(&client, &args.leader, &stop).await {
        Ok(Some(leadership)) => leadership,
        Ok(None) => return finish(server, Ok(())).await,
        Err(error) => {
            stop.cancel();
            return finish(server, Err(error)).await;
        }
    };
    state.joined.store(true, Ordering::Release);
    let outcome = tokio::select! {
        () = leadership.acquired() => {
            let settings = controller::Settings {
                client,
                namespace: args.watch_namespace.clone(),
                config: kube::runtime::controller::Config::default()
                    .concurrency(args.max_concurrent_reconciles)
                    .debounce(std::time::Duration::from_millis(args.reconcile_debounce_ms)),
                metrics,
                state,
                defaults: args.defaults(),
            };
            lead(settings, leadership.lost(), &stop).await
        }
        () = stop.cancelled() => Ok(()),
    };
    leadership.resign().await;
    stop.cancel();
    finish(server, outcome).await
}

/// Runs the controller while this replica leads, until `stop` (then `Ok`) or until the
/// lease is `lost` (then [`Error::LostLeadership`]). Either way it stops the controller,
/// giving in-flight reconciles a bounded grace period.
async fn lead(
    settings: controller::Settings,
    lost: impl Future<Output = ()>,
    stop: &CancellationToken,
) -> Result<(), Error> {
    tracing::info!("leading");
    settings.state.leading.store(true, Ordering::Release);
    let metrics = settings.metrics.clone();
    metrics.set_leader(true);
    let controller = tokio::spawn(controller::run(settings, stopped(stop)));
    let result = tokio::select! {
        () = stop.cancelled() => Ok(()),
        () = lost => {
            tracing::error!("lost the leader lease; stopping so another replica leads");
            Err(Error::LostLeadership)
        }
    };
    stop.cancel();
    // A controller whose watches cannot reach the API server may not notice the stop on
    // its own.
    match tokio::time::timeout(SHUTDOWN_GRACE, controller).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(error = %ErrorChain(&error), "controller task failed"),
        Err(_) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "controller did not stop within the grace period")
        }
    }
    metrics.set_leader(false);
    result
}

/// Resolves once `stop` is cancelled.
fn stopped(stop: &CancellationToken) -> impl Future<Output = ()> + Send + Sync + 'static {
    let stop = stop.clone();
    async move { stop.cancelled().await }
}

/// Joins the leader election (or, without one, leads alone), retrying while the API server
/// cannot be reached. `None` when asked to stop first; an error when retrying cannot help.
async fn join_election(
    client: &kube::Client,
    args: &leader::LeaderArgs,
    stop: &CancellationToken,
) -> Result<Option<Leadership>, Error> {
    if !args.leader_elect {
        return Ok(Some(Leadership::sole()));
    }
    let mut delay = std::time::Duration::from_secs(1);
    loop {
        tokio::select! {
            joined = Leadership::elect(client.clone(), args) => match joined {
                Ok(leadership) => return Ok(Some(leadership)),
                Err(error) => {
                    if let Some(fatal) = election_hopeless(&error, &args.lease_namespace) {
                        return Err(fatal);
                    }
                    tracing::warn!(error = %ErrorChain(&error), retry_in = ?delay, "cannot join the leader election");
                }
            },
            () = stop.cancelled() => return Ok(None),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return Ok(None),
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}

/// The error to stop with when joining the election failed in a way no retry mends: the
/// lease's namespace does not exist (as for an operator started by hand outside a cluster).
fn election_hopeless(
    error: &kube_lease_manager::LeaseManagerError,
    namespace: &str,
) -> Option<Error> {
    match error {
        kube_lease_manager::LeaseManagerError::KubeError(kube::Error::Api(status))
            if status.is_not_found() =>
        {
            Some(Error::LeaseNamespaceMissing(namespace.to_owned()))
        }
        _ => None,
    }
}

/// Waits for the server to drain and turns the way the operator ended into its result.
async fn finish(
    server: tokio::task::JoinHandle<Result<(), serve::ServeError>>,
    outcome: Result<(), Error>,
) -> Result<(), Error> {
    match server.await {
        Ok(result) => result?,
        Err(error) => tracing::error!(error = %ErrorChain(&error), "server task failed"),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("pixel-operator").chain(flags.iter().copied()))
    }

    #[test]
    fn image_defaults_are_the_built_in_ones_unless_set() {
        let args = parse(&[]).expect("defaults");
        assert_eq!(args.defaults(), children::Defaults::default());
        let args = parse(&[
            "--default-redis-image",
            "registry.local:5000/redis:7.2",
            "--image-repository",
            "registry.local:5000/team/pixel-playground",
        ])
        .expect("valid");
        assert_eq!(
            args.defaults(),
            children::Defaults {
                redis_image: "registry.local:5000/redis:7.2".to_owned(),
                image_repository: "registry.local:5000/team/pixel-playground".to_owned(),
                image_tag: env!("CARGO_PKG_VERSION").to_owned(),
            }
        );
    }

    #[test]
    fn unusable_image_defaults_are_refused_naming_the_flag() {
        let too_long = "a".repeat(api::IMAGE_MAX_LENGTH + 1);
        for (flag, value) in [
            ("--default-redis-image", ""),
            ("--default-redis-image", "redis:7.2 alpine"),
            ("--default-redis-image", "redis:7.2\n"),
            ("--default-redis-image", too_long.as_str()),
            ("--image-repository", ""),
            ("--image-repository", "Pixel-Playground"),
            ("--image-repository", "pixel-playground:0.1.0 "),
            ("--image-repository", "registry//pixel"),
            ("--image-repository", "-pixel"),
            ("--image-repository", "pixel/"),
            ("--image-repository", too_long.as_str()),
        ] {
            let error = parse(&[&format!("{flag}={value}")]).expect_err("refused");
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag} {value:?}"
            );
            assert!(error.to_string().contains(flag), "{error}");
        }
    }

    #[test]
    fn the_repository_check_is_the_crds_pattern() {
        for accepted in [
            "pixel-playground",
            "localhost:5000/pixel-playground",
            "registry.example.com/team/pixel_playground",
        ] {
            assert_eq!(image_repository(accepted).as_deref(), Ok(accepted));
        }
        let crd = serde_json::to_value(crd::definition()).expect("json");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let repository = &spec["properties"]["image"]["properties"]["repository"];
        assert_eq!(repository["pattern"], api::IMAGE_REPOSITORY_PATTERN);
        assert_eq!(repository["maxLength"], api::IMAGE_MAX_LENGTH);
        assert_eq!(repository.get("default"), None, "left to the operator");
        let redis_image = &spec["properties"]["redis"]["properties"]["image"];
        assert_eq!(redis_image["maxLength"], api::IMAGE_MAX_LENGTH);
        assert_eq!(redis_image.get("default"), None, "left to the operator");
    }

    #[test]
    fn a_missing_lease_namespace_stops_the_operator_and_says_what_to_do() {
        let status = |code: u16, reason: &str| {
            kube_lease_manager::LeaseManagerError::KubeError(kube::Error::Api(Box::new(
                kube::core::Status {
                    code,
                    reason: reason.to_owned(),
                    message: "namespaces \"nowhere\" not found".to_owned(),
                    ..Default::default()
                },
            )))
        };
        let fatal = election_hopeless(&status(404, "NotFound"), "nowhere").expect("fatal");
        let said = fatal.to_string();
        for hint in [
            "nowhere",
            "--lease-namespace",
            "POD_NAMESPACE",
            "--leader-elect=false",
        ] {
            assert!(said.contains(hint), "{said}");
        }
        assert!(
            election_hopeless(&status(500, "InternalError"), "nowhere").is_none(),
            "the API server may recover: retried"
        );
    }
}
