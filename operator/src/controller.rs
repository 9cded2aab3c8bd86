//! Wires the reconciler to watches: every PixelCanvas, the children the operator labels as
//! its own, and their pods, so a change to any triggers a reconcile of the owning canvas.
//! The children and pods are kept in stores ([`Caches`]), which the reconcile reads.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        events::{Recorder, Reporter},
        reflector,
        reflector::ObjectRef,
        utils::StreamBackoff,
        watcher,
    },
};

use pixel_common::error::ErrorChain;

use crate::{
    api::PixelCanvas,
    caches::{self, Caches, RecentWrites},
    children::{
        Defaults, image_tag,
        naming::{LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER},
    },
    metrics::Metrics,
    reconcile::{Context, error_policy, reconcile},
};

/// What the controller runs with.
pub struct Settings {
    pub client: Client,
    /// Watch only this namespace (`None`: every namespace).
    pub namespace: Option<String>,
    /// Concurrency and debounce.
    pub config: kube::runtime::controller::Config,
    pub metrics: Metrics,
    /// Where readiness learns that the PixelCanvas cache has synced.
    pub state: Arc<crate::State>,
    /// What the operator fills in where a canvas leaves a field unset.
    pub defaults: Defaults,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// Runs the controller until `shutdown` resolves. Sets `state.synced` once the
/// PixelCanvas cache has synced.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let Settings {
        client,
        namespace,
        config,
        metrics,
        state,
        defaults,
    } = settings;
    let scope = Scope {
        client: client.clone(),
        namespace,
    };
    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    // Only the operator's own children: a cluster's other objects never reach it.
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let (caches, writers) = Caches::new();
    let recent_writes = caches.recent_writes.clone();
    let context = Arc::new(
        Context::new(
            client.clone(),
            Recorder::new(client.clone(), reporter),
            metrics,
            defaults,
        )
        .with_caches(caches),
    );
    let (reader, writer) = reflector::store();
    let controller = Controller::for_stream(
        retried(reflector(
            writer,
            watcher::watcher(scope.api::<PixelCanvas>(), watcher::Config::default())
                .modify(image_tag::trim_managed_fields),
        ))
        .applied_objects(),
        reader,
    )
    .owns_stream(scope.reflect(
        writers.stateful_sets,
        owned.clone(),
        caches::trim,
        &recent_writes,
    ))
    .owns_stream(scope.reflect(
        writers.deployments,
        owned.clone(),
        caches::trim,
        &recent_writes,
    ))
    .owns_stream(scope.reflect(
        writers.services,
        owned.clone(),
        caches::trim,
        &recent_writes,
    ))
    .owns_stream(scope.reflect(
        writers.config_maps,
        owned.clone(),
        caches::trim,
        &recent_writes,
    ))
    .owns_stream(scope.reflect(
        writers.pod_disruption_budgets,
        owned.clone(),
        caches::trim,
        &recent_writes,
    ))
    .owns_stream(scope.reflect(
        writers.network_policies,
        owned.clone(),
        caches::trim,
        &recent_writes,
    ))
    .owns_stream(scope.reflect(
        writers.ingresses,
        owned.clone(),
        caches::trim,
        &recent_writes,
    ))
    .owns_stream(scope.reflect(
        writers.cron_jobs,
        owned.clone(),
        caches::trim,
        &recent_writes,
    ))
    // Only the Secrets the operator made (by the label). One the canvas references, the
    // user's, is read by name, and polled while named (see `reconcile::requeue_after`).
    .owns_stream(scope.reflect(writers.secrets, owned.clone(), caches::trim, &recent_writes))
    // The Redis claims carry the pod template's labels; the StatefulSet, not the canvas,
    // owns them, so they trigger nothing: they are kept for the reconcile to read.
    .owns_stream(scope.reflect(writers.claims, owned.clone(), caches::trim, &recent_writes))
    // The pods carry the operator's label too, but belong to a StatefulSet or a ReplicaSet:
    // their instance label names the canvas. A pod's status (an image it cannot pull, say)
    // is part of the canvas's.
    .watches_stream(scope.reflect_pods(writers.pods, owned), |pod: Pod| {
        let namespace = pod.namespace();
        pod.labels()
            .get(LABEL_INSTANCE)
            .zip(namespace)
            .map(|(canvas, namespace)| ObjectRef::new(canvas).within(&namespace))
    });

    let store = controller.store();
    tokio::spawn(async move {
        // The controller also waits on this store and a waiter's wake-up can be lost, so
        // ask again each second: a fresh wait returns at once once the store is ready.
        loop {
            match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    state.synced.store(true, Ordering::Release);
                    tracing::info!("PixelCanvas cache synced; ready");
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => continue,
            }
        }
    });

    controller
        .with_config(config)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(canvas = %object, "reconciled"),
                Err(error) => {
                    tracing::debug!(error = %ErrorChain(&error), "reconcile did not complete")
                }
            }
        })
        .await;
    tracing::info!("controller stopped");
}

/// How soon a broken watch is retried: from half a second, doubling, at most 2.5 s apart
/// (plus jitter), so every watch is back within seconds of an API server restart.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_millis(2500))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// Each watch retries on its own schedule, and its errors stop here (logged). The
/// controller's own trigger backoff pauses *every* watch after an error in any one of them,
/// so after an API server restart (each watch answered 410 Gone in turn) the pauses added
/// up to over a minute before a change was seen.
fn retried<S, T>(events: S) -> impl Stream<Item = Result<T, watcher::Error>> + Send
where
    S: Stream<Item = Result<T, watcher::Error>> + Send,
    T: Send,
{
    StreamBackoff::new(events, watch_backoff()).filter_map(|event| async move {
        match event {
            Ok(event) => Some(Ok(event)),
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "watch failed; retrying");
                None
            }
        }
    })
}

/// Where the controller looks: the whole cluster, or one namespace.
struct Scope {
    client: Client,
    namespace: Option<String>,
}

impl Scope {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }

    /// Every pod in scope that `config` selects, kept in `writer`'s store as what the
    /// status reads of it ([`caches::CachedPod`]), and passed on whole as a trigger.
    fn reflect_pods(
        &self,
        mut writer: reflector::store::Writer<caches::CachedPod>,
        config: watcher::Config,
    ) -> impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static {
        retried(
            watcher::watcher(self.api::<Pod>(), config).inspect_ok(move |event| {
                writer.apply_watcher_event(&caches::CachedPod::event(event))
            }),
        )
        .touched_objects()
    }

    /// Every `K` in scope that `config` selects, kept in `writer`'s store as `trim` leaves
    /// it, and passed on as a trigger. `recent_writes` forgets what the store has seen.
    fn reflect<K>(
        &self,
        writer: reflector::store::Writer<K>,
        config: watcher::Config,
        trim: fn(&mut K),
        recent_writes: &Arc<RecentWrites>,
    ) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let recent_writes = recent_writes.clone();
        retried(
            reflector(
                writer,
                watcher::watcher(self.api::<K>(), config).modify(trim),
            )
            .inspect_ok(move |event| recent_writes.observe(event)),
        )
        .touched_objects()
    }
}
