//! The real-pods suite: a canvas whose pods run as containers on the test cluster's real
//! node, from the images built here, deployed by the operator running in the cluster from
//! `config/default`, and played through the Ingress controller. Runs after the KWOK suites
//! and scenarios (whose operator runs beside the cluster); each check is bounded in time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use pixel_common::{
    operator_contract::{LEASE_NAME, ROTATE_IDENTITY_KEY_ANNOTATION},
    ports,
};
use pixel_harness::{
    children,
    cluster::{Cluster, OPERATOR_NAMESPACE},
    deps,
    images::{self, BuiltImage},
    paths,
    previous_release::{self, PreviousBuild},
    process,
    toolchain::Tools,
};

use crate::browser_check;

const NAMESPACE: &str = "real-pods";
/// Stands for the Ingress controller's namespace: the canvas's `spec.networkPolicy` admits it
/// to canvas-api (the suite's own Traefik runs on the node, which policies do not filter).
const EDGE_NAMESPACE: &str = "real-pods-edge";
const CANVAS: &str = "real";
const HOST: &str = "real-pods.localtest.me";

/// The suite's canvas: two replicas of the API and the gateway (so traffic crosses pods),
/// no cooldown, and `Always` fsync so every acknowledged placement survives a Redis restart.
/// Traefik runs on the host, reaching the node's pods from `host_link`: a host-network
/// Ingress controller, admitted to canvas-api by its address.
fn canvas_manifest(host_link: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: pixel-playground.dev/v1alpha1\nkind: PixelCanvas\nmetadata:\n  name: {CANVAS}\nspec:\n  \
         canvas: {{width: 64, height: 64, cooldownSeconds: 0}}\n  api: {{replicas: 2}}\n  \
         gateway: {{replicas: 2}}\n  frontend: {{replicas: 1}}\n  \
         redis: {{appendFsync: Always, storage: {{size: 1Gi}}}}\n  ingress: {{host: {HOST}}}\n  \
         networkPolicy: {{ingressControllerNamespaces: [{EDGE_NAMESPACE}], metricsNamespaces: [], \
         ingressControllerCIDRs: [{host_link}/32]}}\n"
    )
}

/// Where the checks run.
struct Stage<'a> {
    tools: &'a Tools,
    cluster: &'a Cluster,
    /// The app image the canvas runs, as imported.
    app_image: BuiltImage,
    ingress_port: u16,
    node: String,
    /// The host's end of the node's link: where pods reach a server on the host.
    host_link: std::net::Ipv4Addr,
    /// The canvas as the previous release's operator left it, before this tree's operator
    /// was installed over it; why not, when that could not be set up.
    upgraded_from: Result<BeforeUpgrade>,
    /// The identity cookie of the suite's regular player, kept as a browser keeps it.
    player: tempfile::NamedTempFile,
}

/// The canvas under the previous release's operator, just before the upgrade.
struct BeforeUpgrade {
    release: previous_release::Release,
    state: CanvasState,
    /// The handle the suite's player placed as.
    handle: String,
    /// When this tree's operator was installed.
    upgraded_at: Instant,
}

type Check = fn(&Stage) -> Result<()>;

/// The checks, in order; each is reported by name.
const CHECKS: [(&str, Check); 15] = [
    // First: the set-up ends with the upgrade it checks.
    (
        "operator-upgrade-moves-every-child-and-keeps-every-pixel",
        operator_upgrade_moves_every_child_and_keeps_every_pixel,
    ),
    ("ready-on-the-real-node", ready_on_the_real_node),
    (
        "page-and-api-through-the-ingress",
        page_and_api_through_the_ingress,
    ),
    (
        "two-pages-through-the-ingress",
        two_pages_through_the_ingress,
    ),
    (
        "rest-placement-through-the-ingress-is-refused",
        rest_placement_through_the_ingress_is_refused,
    ),
    (
        "gateway-scale-down-closes-1001-and-clients-resync",
        gateway_scale_down_closes_1001_and_clients_resync,
    ),
    ("exec-and-logs", exec_and_logs),
    (
        "redis-pod-deleted-keeps-every-pixel",
        redis_pod_deleted_keeps_every_pixel,
    ),
    (
        "network-policies-guard-every-canvas-pod",
        network_policies_guard_every_canvas_pod,
    ),
    (
        "identity-key-rotation-keeps-identities",
        identity_key_rotation_keeps_identities,
    ),
    (
        "frozen-canvas-refuses-through-the-ingress",
        frozen_canvas_refuses_through_the_ingress,
    ),
    (
        "operator-pod-deleted-standby-reconciles",
        operator_pod_deleted_standby_reconciles,
    ),
    (
        "missing-image-named-in-status-then-fixed",
        missing_image_named_in_status_then_fixed,
    ),
    (
        "new-tag-rolls-the-app-and-keeps-redis",
        new_tag_rolls_the_app_and_keeps_redis,
    ),
    // Last: it deletes the canvas and makes it anew from its backup.
    (
        "backup-delete-restore-is-equal",
        backup_delete_restore_is_equal,
    ),
];

/// Sets the stage up (images, the in-cluster operator, the canvas), then runs every check.
/// A failed set-up fails every check.
pub fn run(tools: &Tools, cluster: &Cluster) -> Vec<(String, Result<()>)> {
    let setup_started = Instant::now();
    let stage = set_up(tools, cluster);
    let mut results = vec![(
        "real-pods: set-up (images, operator in the cluster, canvas applied)".to_owned(),
        stage
            .as_ref()
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    )];
    println!(
        "real-pods set-up took {} s",
        setup_started.elapsed().as_secs()
    );
    for (name, check) in CHECKS {
        let name = format!("real-pods: {name}");
        println!("== {name}");
        let started = Instant::now();
        let outcome = match &stage {
            Ok(stage) => check(stage),
            Err(error) => Err(anyhow::anyhow!("set-up failed: {error:#}")),
        };
        println!("{name} took {:.1} s", started.elapsed().as_secs_f64());
        results.push((name, outcome));
    }
    results
}

fn set_up<'a>(tools: &'a Tools, cluster: &'a Cluster) -> Result<Stage<'a>> {
    let node = cluster
        .real_node()
        .context("the test cluster has no real node")?;
    let ingress_port = cluster
        .ingress()
        .port()
        .context("the test cluster's Ingress controller is not running")?;
    // The previous release first: it shares the target directory, and this tree's build
    // then copies its own binaries out of it anew.
    let previous = previous_release::build(&images::output_dir());
    let built = images::build_all(&images::output_dir())?;
    for image in built.iter().chain(previous.as_ref().map(|p| &p.app_image)) {
        cluster.load_image(tools, image)?;
    }
    let redis: &BuiltImage = images::find(&built, images::REDIS_REPOSITORY)?;
    let app_image = images::find(&built, images::APP_REPOSITORY)?;
    // From nothing, so a second run (`cargo xtask e2e --real-pods`) starts the same way.
    process::output(
        cluster.kubectl(tools).args([
            "delete",
            "namespace",
            NAMESPACE,
            EDGE_NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=180s",
        ]),
        Duration::from_secs(200),
    )?;
    cluster.ensure_storage(tools)?;
    cluster.place_on_real_node(tools, OPERATOR_NAMESPACE)?;
    cluster.place_on_real_node(tools, NAMESPACE)?;
    cluster.place_on_real_node(tools, EDGE_NAMESPACE)?;
    let mut stage = Stage {
        tools,
        cluster,
        app_image: app_image.clone(),
        ingress_port,
        node: node.name().to_owned(),
        host_link: node.plan().host_link(),
        upgraded_from: Err(anyhow::anyhow!("not set up")),
        player: tempfile::NamedTempFile::new()?,
    };
    let before_upgrade = previous.and_then(|previous| stage.canvas_of(&previous, redis));
    // Whatever the previous release did, this tree's operator runs the checks.
    let upgraded_at = Instant::now();
    cluster.run_operator_in_cluster(
        tools,
        &paths::operator_config(),
        &redis.reference,
        app_image,
    )?;
    stage.upgraded_from = before_upgrade.map(|(release, state, handle)| BeforeUpgrade {
        release,
        state,
        handle,
        upgraded_at,
    });
    stage.apply(&canvas_manifest(stage.host_link))?;
    Ok(stage)
}

impl Stage<'_> {
    /// The suite's canvas made by `previous`'s operator, from its own `config/default`, and
    /// played on: the release and what a person saw of the canvas.
    fn canvas_of(
        &self,
        previous: &PreviousBuild,
        redis: &BuiltImage,
    ) -> Result<(previous_release::Release, CanvasState, String)> {
        self.cluster.run_operator_in_cluster(
            self.tools,
            &previous.config_default(),
            &redis.reference,
            &previous.app_image,
        )?;
        self.apply(&canvas_manifest(self.host_link))?;
        self.wait_canvas_ready()?;
        let images = self.app_images()?;
        ensure!(
            images
                .iter()
                .all(|image| tag_of(image) == previous.release.version),
            "the previous release's canvas runs {images:?}, not its version {}",
            previous.release.version
        );
        let (_, handle) = self.place_as(
            Some(self.player.path()),
            &[(1, 62, 2), (2, 62, 3), (3, 62, 4)],
        )?;
        Ok((previous.release, canvas_state(self)?, handle))
    }

    /// The images of the canvas's canvas-api, gateway and frontend pods, terminating or not.
    fn app_images(&self) -> Result<Vec<String>> {
        let mut images = Vec::new();
        for pod in self.pods()? {
            let component = &pod["metadata"]["labels"]["app.kubernetes.io/component"];
            if ["api", "gateway", "frontend"]
                .iter()
                .any(|c| component == c)
            {
                for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
                    images.push(container["image"].as_str().unwrap_or("?").to_owned());
                }
            }
        }
        ensure!(!images.is_empty(), "the canvas has no app pods");
        Ok(images)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        process::output(
            self.cluster.kubectl(self.tools).args(args),
            Duration::from_secs(300),
        )
    }

    fn kubectl_json(&self, args: &[&str]) -> Result<Value> {
        serde_json::from_str(&self.kubectl(args)?).context("kubectl printed no JSON")
    }

    fn apply(&self, manifest: &str) -> Result<()> {
        self.apply_in(NAMESPACE, manifest)
    }

    fn apply_in(&self, namespace: &str, manifest: &str) -> Result<()> {
        let path = self
            .cluster
            .kubeconfig()
            .with_file_name(format!("real-pods-{}.yaml", fastrand::u32(..)));
        std::fs::write(&path, manifest)?;
        let applied = self.kubectl(&["apply", "-n", namespace, "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        applied.map(drop)
    }

    /// Starts a pod `name` in `namespace`, of the canvas's Redis image, labelled as the
    /// canvas's `component` would be, and waits for it; its name, for [`Self::dial`].
    fn probe_pod(&self, namespace: &str, name: &str, component: &str) -> Result<String> {
        let image = self.kubectl(&[
            "get",
            "pod",
            "-n",
            NAMESPACE,
            &format!("{CANVAS}-redis-0"),
            "-o",
            "jsonpath={.spec.containers[0].image}",
        ])?;
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app.kubernetes.io/name: pixel-playground, app.kubernetes.io/instance: {CANVAS}-probe, app.kubernetes.io/component: {component}}}\nspec:\n  \
             securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {{type: RuntimeDefault}}}}\n  \
             containers:\n  - name: probe\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    \
             command: [redis-server, --port, \"7777\", --save, \"\", --appendonly, \"no\"]\n    \
             securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}\n"
        );
        self.apply_in(namespace, &manifest)?;
        self.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "-n",
            namespace,
            "--timeout=120s",
        ])?;
        Ok(format!("{namespace}/{name}"))
    }

    /// What `redis-cli` in the probe pod `pod` (`namespace/name`) says when it pings
    /// `address:port`: a network refusal, or the answer of whatever listens there.
    fn dial(&self, pod: &str, address: &str, port: &str) -> Result<String> {
        let (namespace, name) = pod
            .split_once('/')
            .context("a probe pod is namespace/name")?;
        let attempt = process::output_unchecked(
            self.cluster.kubectl(self.tools).args([
                "exec",
                "-n",
                namespace,
                name,
                "--",
                "redis-cli",
                "-h",
                address,
                "-p",
                port,
                "ping",
            ]),
            Duration::from_secs(60),
        )?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&attempt.stdout),
            String::from_utf8_lossy(&attempt.stderr)
        ))
    }

    fn wait_canvas_ready(&self) -> Result<()> {
        self.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("pxc/{CANVAS}"),
            "-n",
            NAMESPACE,
            "--timeout=240s",
        ])?;
        // Ready means the pods are; Traefik routes a path only once it has seen the
        // Service's endpoints (its configuration is throttled), and until then `/api`
        // falls through to the frontend's `/`. A route that never comes fails here.
        process::wait_until(
            "the Ingress to route the API to canvas-api",
            Duration::from_secs(60),
            || Ok(self.http("GET", ports::API_INFO_PATH, None)?.0 == 200),
        )
    }

    /// `pixel-browser-check <subcommand>` for this canvas, once both gateway pods are
    /// ready, with the host mapped to 127.0.0.1 (the Ingress).
    fn browser_check(&self, subcommand: &str) -> Result<std::process::Command> {
        self.wait_ready_pods("gateway", 2, Duration::from_secs(90))?;
        let mut cmd = std::process::Command::new(browser_check::build()?);
        cmd.args([subcommand, "--resolve", &format!("{HOST}=127.0.0.1")]);
        Ok(cmd)
    }

    /// [`Self::browser_check`], told every gateway pod's metrics (to know which pod
    /// serves which client).
    fn browser_check_on_pods(&self, subcommand: &str) -> Result<std::process::Command> {
        let mut cmd = self.browser_check(subcommand)?;
        let gateways = self.gateway_metrics()?;
        ensure!(
            gateways.len() == 2,
            "expected 2 ready gateway pods, found {gateways:?}"
        );
        for gateway in &gateways {
            cmd.args(["--gateway-metrics", gateway]);
        }
        Ok(cmd)
    }

    /// Waits until the component's Deployment has `count` ready pods.
    fn wait_ready_pods(&self, component: &str, count: u32, limit: Duration) -> Result<()> {
        let deployment = format!("deploy/{CANVAS}-{component}");
        process::wait_until(
            &format!("{deployment} to have {count} ready pods"),
            limit,
            || {
                Ok(self
                    .kubectl(&[
                        "get",
                        &deployment,
                        "-n",
                        NAMESPACE,
                        "-o",
                        "jsonpath={.status.readyReplicas}",
                    ])
                    .is_ok_and(|ready| ready.trim() == count.to_string()))
            },
        )
    }

    /// The canvas's pods.
    fn pods(&self) -> Result<Vec<Value>> {
        let list = self.kubectl_json(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/instance={CANVAS}"),
            "-o",
            "json",
        ])?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// The component's pods that are ready and not terminating, as (name, address), and
    /// how many of its pods are terminating (still serving through their preStop delay).
    fn serving_pods(&self, component: &str) -> Result<(Vec<(String, String)>, usize)> {
        let (mut serving, mut terminating) = (Vec::new(), 0);
        for pod in self.pods()? {
            if pod["metadata"]["labels"]["app.kubernetes.io/component"] != component {
                continue;
            }
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                terminating += 1;
                continue;
            }
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if !ready {
                continue;
            }
            let name = pod["metadata"]["name"].as_str().unwrap_or("?").to_owned();
            let ip = pod["status"]["podIP"]
                .as_str()
                .with_context(|| format!("{component} pod {name} has no address"))?
                .to_owned();
            serving.push((name, ip));
        }
        Ok((serving, terminating))
    }

    /// The canvas's gateway pods that are ready (and not terminating), each as
    /// `pixel-browser-check`'s `--gateway-metrics NAME=URL`: the pod's own address, which
    /// the host routes to, not the Ingress.
    fn gateway_metrics(&self) -> Result<Vec<String>> {
        Ok(self
            .serving_pods("gateway")?
            .0
            .into_iter()
            .map(|(name, ip)| {
                format!(
                    "{name}=http://{ip}:{}{}",
                    ports::GATEWAY,
                    ports::METRICS_PATH
                )
            })
            .collect())
    }

    /// The `metadata.generation` of the component's Deployment: it moves when the operator
    /// applies a changed one.
    fn generation(&self, component: &str) -> Result<u64> {
        self.kubectl(&[
            "get",
            &format!("deploy/{CANVAS}-{component}"),
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.metadata.generation}",
        ])?
        .trim()
        .parse()
        .with_context(|| format!("the {component} Deployment's generation"))
    }

    /// Merges `patch` into the canvas's spec and waits until canvas-api and the gateways
    /// have rolled to it (the operator applied new Deployments, and they rolled out).
    fn roll_canvas(&self, patch: &str) -> Result<()> {
        let generation = |component| self.generation(component);
        let before = [generation("api")?, generation("gateway")?];
        self.patch_spec(patch)?;
        process::wait_until(
            "the operator to apply the new canvas-api and gateway Deployments",
            Duration::from_secs(120),
            || Ok(generation("api")? > before[0] && generation("gateway")? > before[1]),
        )?;
        for component in ["api", "gateway"] {
            self.wait_rolled(component, 2)?;
        }
        Ok(())
    }

    /// Waits until the component's Deployment has rolled out with `replicas` ready pods and
    /// its old pods are gone: they serve the old settings through their preStop delay, and
    /// the Ingress may route to them meanwhile.
    fn wait_rolled(&self, component: &str, replicas: u32) -> Result<()> {
        self.kubectl(&[
            "rollout",
            "status",
            &format!("deploy/{CANVAS}-{component}"),
            "-n",
            NAMESPACE,
            "--timeout=240s",
        ])?;
        self.wait_ready_pods(component, replicas, Duration::from_secs(180))?;
        process::wait_until(
            &format!("the old {component} pods to be gone"),
            Duration::from_secs(60),
            || Ok(self.serving_pods(component)?.1 == 0),
        )
    }

    /// Merges `patch` (JSON) into the canvas's spec.
    fn patch_spec(&self, patch: &str) -> Result<()> {
        self.kubectl(&[
            "patch",
            &format!("pxc/{CANVAS}"),
            "-n",
            NAMESPACE,
            "--type",
            "merge",
            "-p",
            &format!("{{\"spec\":{patch}}}"),
        ])
        .map(drop)
    }

    /// Patches the canvas's gateway replicas.
    fn scale_gateway(&self, replicas: u32) -> Result<()> {
        self.patch_spec(&format!("{{\"gateway\":{{\"replicas\":{replicas}}}}}"))
    }

    /// Places `pixels` through the Ingress as the page does (over the gateway's
    /// WebSocket, `pixel-browser-check place`), as the suite's one regular player (the
    /// gateway gives an address only so many new identities an hour); returns the versions
    /// they produced.
    fn place(&self, pixels: &[(u32, u32, u32)]) -> Result<Vec<u64>> {
        Ok(self.place_as(Some(self.player.path()), pixels)?.0)
    }

    /// [`Self::place`] as the person whose identity cookie `cookie_file` keeps (a browser
    /// across visits); also returns the handle they placed as.
    fn place_as(
        &self,
        cookie_file: Option<&std::path::Path>,
        pixels: &[(u32, u32, u32)],
    ) -> Result<(Vec<u64>, String)> {
        let mut cmd = self.browser_check("place")?;
        cmd.args([
            "--ws-url",
            &format!("ws://{HOST}:{}{}", self.ingress_port, ports::WS_PATH),
        ]);
        if let Some(file) = cookie_file {
            cmd.arg("--cookie-file").arg(file);
        }
        for (x, y, color) in pixels {
            cmd.args(["--pixel", &format!("{x},{y},{color}")]);
        }
        let summary =
            browser_check::summary(&process::output(&mut cmd, Duration::from_secs(120))?)?;
        let versions: Vec<u64> = summary["versions"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        ensure!(
            versions.len() == pixels.len(),
            "placed {} of {} pixels: {summary}",
            versions.len(),
            pixels.len()
        );
        let handle = summary["handle"]
            .as_str()
            .with_context(|| format!("placed without an identity: {summary}"))?
            .to_owned();
        Ok((versions, handle))
    }

    /// Waits until canvas-api answers through the Ingress controller (which routes to a
    /// Service once its endpoints are ready, a moment after the canvas reports Ready).
    fn wait_api_through_the_ingress(&self, what: &str, limit: Duration) -> Result<()> {
        process::wait_until(what, limit, || {
            Ok(self
                .http("GET", ports::API_INFO_PATH, None)
                .is_ok_and(|(status, _)| status == 200))
        })
    }

    /// The suite's PixelCanvas as the API server holds it.
    fn canvas(&self) -> Result<Value> {
        self.kubectl_json(&[
            "get",
            &format!("pxc/{CANVAS}"),
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ])
    }

    /// The UID of `what` (`kind/name`) in the suite's namespace.
    fn uid(&self, what: &str) -> Result<String> {
        Ok(self
            .kubectl(&[
                "get",
                what,
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.metadata.uid}",
            ])?
            .trim()
            .to_owned())
    }

    /// The body of a `GET` through the Ingress controller, as bytes (the binary snapshot).
    fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let url = format!("http://127.0.0.1:{}{path}", self.ingress_port);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let response = agent
            .get(&url)
            .header("Host", HOST)
            .call()
            .with_context(|| format!("GET {url} (Host: {HOST})"))?;
        Ok(response
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()?)
    }

    /// An HTTP request through the Ingress controller, with the canvas's host.
    fn http(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
        self.http_as(method, path, body, "real-pods-suite")
    }

    /// [`Self::http`] with `client_id` as the `X-Client-Id` of a `POST`.
    fn http_as(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        client_id: &str,
    ) -> Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.ingress_port);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).header("Host", HOST).call(),
            ("POST", Some(body)) => agent
                .post(&url)
                .header("Host", HOST)
                .header(ports::CLIENT_ID_HEADER, client_id)
                .header("Content-Type", "application/json")
                .send(body),
            _ => bail!("unsupported request {method} {path}"),
        }
        .with_context(|| format!("{method} {url} (Host: {HOST})"))?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string()?;
        Ok((status, text))
    }
}

/// The operator upgraded from the previous release (the set-up's last step) over a canvas
/// that release made with its default tag: every child moves to this build's version and
/// its pods run this build's image, the canvas is Ready with its status current, everything
/// placed before is still there, and the player who placed it is still who they were.
fn operator_upgrade_moves_every_child_and_keeps_every_pixel(stage: &Stage) -> Result<()> {
    let before = stage
        .upgraded_from
        .as_ref()
        .map_err(|error| anyhow::anyhow!("{error:#}"))?;
    let version = env!("CARGO_PKG_VERSION");
    let stale_children = || -> Result<Vec<String>> {
        let list = stage.kubectl_json(&children::get_args(children::KINDS, NAMESPACE))?;
        Ok(children::items(&list)
            .filter(|child| {
                let labels = &child["metadata"]["labels"];
                labels["app.kubernetes.io/instance"] == CANVAS
                    && labels["app.kubernetes.io/version"] != version
            })
            .map(|child| format!("{} {}", child["kind"], child["metadata"]["name"]))
            .collect())
    };
    process::wait_until(
        &format!("every child of the canvas to be labelled version {version}"),
        Duration::from_secs(120),
        || Ok(stale_children()?.is_empty()),
    )
    .with_context(|| format!("still of another version: {:?}", stale_children()))?;
    for component in ["api", "gateway", "frontend"] {
        let replicas = if component == "frontend" { 1 } else { 2 };
        stage.wait_rolled(component, replicas)?;
    }
    stage.kubectl(&[
        "rollout",
        "status",
        &format!("statefulset/{CANVAS}-redis"),
        "-n",
        NAMESPACE,
        "--timeout=240s",
    ])?;
    stage.wait_canvas_ready()?;
    let rolled = before.upgraded_at.elapsed();
    let images = stage.app_images()?;
    ensure!(
        images.iter().all(|image| tag_of(image) == version),
        "after the upgrade the app pods run {images:?}, not version {version}"
    );
    let canvas = stage.canvas()?;
    ensure!(
        canvas["status"]["observedGeneration"] == canvas["metadata"]["generation"],
        "the status is not of the current generation: {}",
        canvas["status"]
    );
    let after = canvas_state(stage)?;
    ensure!(
        after == before.state,
        "the canvas changed across the upgrade: version {} -> {}",
        before.state.0,
        after.0
    );
    let (next, handle) = stage.place_as(Some(stage.player.path()), &[(4, 62, 5)])?;
    ensure!(
        handle == before.handle,
        "the player was {} before the upgrade and {handle} after it",
        before.handle
    );
    println!(
        "real-pods: the operator upgraded from {} to {version}: every child moved, the pods \
         rolled and the canvas was Ready within {:.1} s of the install, version {} and every \
         pixel kept; the player kept their identity, and their next placement was version {}",
        before.release.version,
        rolled.as_secs_f64(),
        before.state.0,
        next[0]
    );
    Ok(())
}

/// The tag of an image reference (`pixel-playground:0.2.0` → `0.2.0`).
fn tag_of(image: &str) -> &str {
    image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or("", |(_, tag)| tag)
}

/// Ready only once the real readiness probes pass; every pod on the real node, running
/// under Pod Security "restricted" with a read-only root filesystem, as a non-root user.
fn ready_on_the_real_node(stage: &Stage) -> Result<()> {
    stage.wait_canvas_ready()?;
    let pods = stage.pods()?;
    ensure!(
        pods.len() == 6,
        "expected 6 pods (redis, 2 api, 2 gateway, 1 frontend), found {}",
        pods.len()
    );
    let namespace = stage.kubectl_json(&["get", "namespace", NAMESPACE, "-o", "json"])?;
    ensure!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted",
        "namespace {NAMESPACE} does not enforce Pod Security \"restricted\""
    );
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or("?");
        ensure!(
            pod["spec"]["nodeName"] == stage.node.as_str(),
            "pod {name} runs on {} rather than the real node",
            pod["spec"]["nodeName"]
        );
        ensure!(
            pod["status"]["phase"] == "Running",
            "pod {name} is {}",
            pod["status"]["phase"]
        );
        for status in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            ensure!(
                status["ready"] == true,
                "container {} of {name} is not ready",
                status["name"]
            );
            ensure!(
                status["restartCount"] == 0,
                "container {} of {name} restarted {} times",
                status["name"],
                status["restartCount"]
            );
        }
        for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let context = &container["securityContext"];
            ensure!(
                context["readOnlyRootFilesystem"] == true,
                "container {} of {name} has a writable root filesystem",
                container["name"]
            );
        }
        ensure!(
            pod["spec"]["securityContext"]["runAsNonRoot"] == true,
            "pod {name} may run as root"
        );
    }
    Ok(())
}

/// The page, the API and its JSON errors, all on the Ingress's one origin.
fn page_and_api_through_the_ingress(stage: &Stage) -> Result<()> {
    // The Ingress controller routes to a Service once its endpoints are ready, a moment
    // after the canvas reports Ready.
    stage.wait_api_through_the_ingress(
        "the Ingress controller to route the API",
        Duration::from_secs(60),
    )?;
    let (status, page) = stage.http("GET", "/", None)?;
    ensure!(status == 200, "GET / answered {status}");
    ensure!(
        page.contains("<canvas"),
        "GET / is not the canvas page: {page:.200}"
    );
    let (status, info) = stage.http("GET", ports::API_INFO_PATH, None)?;
    ensure!(
        status == 200,
        "GET {} answered {status}: {info}",
        ports::API_INFO_PATH
    );
    let info: Value = serde_json::from_str(&info).context("info is not JSON")?;
    ensure!(info["width"] == 64, "info names another canvas: {info}");
    let (status, error) = stage.http(
        "POST",
        ports::API_PIXELS_PATH,
        Some("{\"x\":-1,\"y\":0,\"color\":1}"),
    )?;
    ensure!(
        (400..500).contains(&status),
        "a bad placement answered {status}"
    );
    serde_json::from_str::<Value>(&error).context("the error is not JSON")?;
    Ok(())
}

/// canvas-api's placement endpoint is reachable through the Ingress, but refuses every
/// caller without the gateway's internal token with `401 unauthorized`, whatever
/// `X-Client-Id` it claims (a made-up one, a gateway-style one, the public handles of real
/// players from the history), and the canvas does not move.
fn rest_placement_through_the_ingress_is_refused(stage: &Stage) -> Result<()> {
    let version = |stage: &Stage| -> Result<u64> {
        let (status, info) = stage.http("GET", ports::API_INFO_PATH, None)?;
        ensure!(status == 200, "GET info answered {status}: {info}");
        let info: Value = serde_json::from_str(&info).context("info is not JSON")?;
        info["version"].as_u64().context("info has no version")
    };
    let before = version(stage)?;
    let (status, history) =
        stage.http("GET", &format!("{}?since=0", ports::API_HISTORY_PATH), None)?;
    ensure!(status == 200, "GET history answered {status}: {history}");
    let history: Value = serde_json::from_str(&history).context("history is not JSON")?;
    let mut claimed = vec![
        "anyone".to_owned(),
        "gw-0123456789abcdef".to_owned(),
        "real-pods-suite".to_owned(),
    ];
    let handles: Vec<String> = history["updates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["placedBy"].as_str().map(str::to_owned))
        .take(3)
        .collect();
    ensure!(
        !handles.is_empty(),
        "no placement in the history to claim the placer of (the pages placed before): {history}"
    );
    claimed.extend(handles);
    for client_id in &claimed {
        let (status, body) = stage.http_as(
            "POST",
            ports::API_PIXELS_PATH,
            Some("{\"x\":1,\"y\":1,\"color\":1}"),
            client_id,
        )?;
        ensure!(
            status == 401,
            "POST {} as {client_id:?} answered {status}: {body}",
            ports::API_PIXELS_PATH
        );
        let error: Value = serde_json::from_str(&body).context("the error is not JSON")?;
        ensure!(
            error["error"]["code"] == "unauthorized",
            "POST as {client_id:?} answered {body}"
        );
    }
    let after = version(stage)?;
    ensure!(
        after == before,
        "the canvas moved from version {before} to {after} although every placement was refused"
    );
    println!(
        "real-pods: {} REST placements through the Ingress, each claiming another client id, \
         all refused with 401; the canvas stayed at version {before}",
        claimed.len()
    );
    Ok(())
}

/// Two pages in headless Chromium, loaded through the Ingress by the canvas's host name,
/// their WebSockets on different gateway pods: a pixel clicked in one shows in the other,
/// so the placement crossed pods through Redis (`pixel-browser-check two-pages`).
fn two_pages_through_the_ingress(stage: &Stage) -> Result<()> {
    deps::ensure_debian_packages(&["chromium"])?;
    let mut cmd = stage.browser_check_on_pods("two-pages")?;
    cmd.args(["--url", &format!("http://{HOST}:{}/", stage.ingress_port)]);
    let summary = browser_check::summary(&process::output(&mut cmd, Duration::from_secs(300))?)?;
    let pages = &summary["pages"];
    ensure!(
        pages[0]["gateway"] != pages[1]["gateway"],
        "both pages on one gateway pod: {summary}"
    );
    println!(
        "real-pods: a click in the page on {} showed in the page on {} after {} ms (the second \
         page opened {} time(s) to land on the other pod)",
        pages[0]["gateway"],
        pages[1]["gateway"],
        summary["click_to_seen_ms"],
        summary["watcher_opened"]
    );
    Ok(())
}

/// WebSocket clients through the Ingress while the canvas's gateway is scaled from 2 to 1:
/// the clients of the pod that goes are closed with 1001, every other stays connected and
/// receives a placement made meanwhile, and each closed client reconnects with `since` and
/// resyncs (`pixel-browser-check gateway-drain`). The gateway is scaled back to 2 after.
fn gateway_scale_down_closes_1001_and_clients_resync(stage: &Stage) -> Result<()> {
    const CLIENTS: u32 = 20;
    const TIMEOUT_SECS: u64 = 120;
    let mut cmd = stage.browser_check_on_pods("gateway-drain")?;
    cmd.args([
        "--ws-url",
        &format!("ws://{HOST}:{}{}", stage.ingress_port, ports::WS_PATH),
        "--clients",
        &CLIENTS.to_string(),
        // Round-robin puts half on each pod; the binary checks that exactly one pod's
        // clients were closed.
        "--expect-closed-at-least",
        &(CLIENTS / 4).to_string(),
        "--timeout-secs",
        &TIMEOUT_SECS.to_string(),
    ]);
    let drained = (|| -> Result<Value> {
        let mut running = browser_check::Running::start(&mut cmd)?;
        running.wait_for_line("ready", Duration::from_secs(120))?;
        let patched = Instant::now();
        stage.scale_gateway(1)?;
        let stdout = running.finish(Duration::from_secs(TIMEOUT_SECS + 180))?;
        println!(
            "real-pods: gateway-drain finished {:.1} s after the gateway was scaled to 1",
            patched.elapsed().as_secs_f64()
        );
        browser_check::summary(&stdout)
    })();
    // Back to two gateways for the checks that follow, whatever happened.
    let restored = stage
        .scale_gateway(2)
        .and_then(|()| stage.wait_ready_pods("gateway", 2, Duration::from_secs(180)));
    let summary = drained?;
    restored?;
    ensure!(
        summary["resynced"] == summary["closed_1001"]
            && summary["survivors_saw_placement"] == summary["stayed_open"],
        "not every client resynced or kept receiving: {summary}"
    );
    println!(
        "real-pods: scaling the gateway 2 -> 1 closed {} of {CLIENTS} clients with 1001, the \
         first {} ms after `ready`, all within {} ms; per pod {}; each closed client \
         reconnected and resynced (median {} ms, max {} ms, at most {} attempt(s))",
        summary["closed_1001"],
        summary["first_close_after_ready_ms"],
        summary["close_spread_ms"],
        summary["by_pod"],
        summary["resync_ms_median"],
        summary["resync_ms_max"],
        summary["reconnect_attempts_max"]
    );
    Ok(())
}

/// What an admin reaches for: `kubectl exec` and `kubectl logs` on the canvas's pods.
fn exec_and_logs(stage: &Stage) -> Result<()> {
    let deployment = format!("deploy/{CANVAS}-api");
    let version = stage.kubectl(&[
        "exec",
        "-n",
        NAMESPACE,
        &deployment,
        "--",
        "/usr/local/bin/canvas-api",
        "--version",
    ])?;
    ensure!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "`canvas-api --version` in the pod printed {version:?}"
    );
    let logs = stage.kubectl(&["logs", "-n", NAMESPACE, &deployment, "--tail=20"])?;
    ensure!(!logs.trim().is_empty(), "the API pod logged nothing");
    let redis_logs = stage.kubectl(&[
        "logs",
        "-n",
        NAMESPACE,
        &format!("{CANVAS}-redis-0"),
        "--tail=50",
    ])?;
    ensure!(
        redis_logs.contains("Ready to accept connections"),
        "Redis's log does not say it is ready: {redis_logs:.400}"
    );
    Ok(())
}

/// `kubectl delete pod <canvas>-redis-0`: it comes back on the same claim, and every
/// acknowledged placement is still there (the append-only file on the real volume).
fn redis_pod_deleted_keeps_every_pixel(stage: &Stage) -> Result<()> {
    let placed: Vec<(u32, u32, u32)> = (0..20).map(|i| (i, 2 * i % 64, 1 + i % 7)).collect();
    stage.place(&placed)?;
    let claim = format!("pvc/data-{CANVAS}-redis-0");
    let uid = |what: &str| stage.uid(what);
    let (claim_before, pod_before) = (uid(&claim)?, uid(&format!("pod/{CANVAS}-redis-0"))?);
    let deleted = Instant::now();
    stage.kubectl(&[
        "delete",
        "pod",
        "-n",
        NAMESPACE,
        &format!("{CANVAS}-redis-0"),
        "--wait=true",
    ])?;
    process::wait_until(
        "the Redis pod to come back",
        Duration::from_secs(180),
        || Ok(uid(&format!("pod/{CANVAS}-redis-0")).is_ok_and(|u| !u.is_empty() && u != pod_before)),
    )?;
    stage.kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{CANVAS}-redis-0"),
        "-n",
        NAMESPACE,
        "--timeout=180s",
    ])?;
    ensure!(
        uid(&claim)? == claim_before,
        "the Redis pod came back on another claim"
    );
    // The API reconnects within its retry interval.
    let first = format!("{}/0/0", ports::API_PIXELS_PATH);
    process::wait_until(
        "the API to reach the new Redis pod",
        Duration::from_secs(60),
        || {
            Ok(stage
                .http("GET", &first, None)
                .is_ok_and(|(status, _)| status == 200))
        },
    )?;
    println!(
        "real-pods: {} placements acknowledged; the API served from the replacement Redis pod {:.1} s after the deletion",
        placed.len(),
        deleted.elapsed().as_secs_f64()
    );
    for &(x, y, color) in &placed {
        let path = format!("{}/{x}/{y}", ports::API_PIXELS_PATH);
        let (status, body) = stage.http("GET", &path, None)?;
        ensure!(status == 200, "GET {path} answered {status}: {body}");
        let pixel: Value = serde_json::from_str(&body).context("pixel is not JSON")?;
        ensure!(
            pixel["color"] == color,
            "({x},{y}) is {} after the restart, not {color}",
            pixel["color"]
        );
    }
    Ok(())
}

/// A pod of the namespace that is neither the canvas's API nor its gateway cannot open
/// Redis's port, nor canvas-api's, the gateway's or the frontend's; a pod of the namespace
/// `spec.networkPolicy` names for the Ingress controller reaches canvas-api, the gateway and
/// the frontend but not Redis; the API and the gateway still reach Redis (their readiness
/// needs it) and the API through the Ingress still answers.
fn network_policies_guard_every_canvas_pod(stage: &Stage) -> Result<()> {
    // Labelled as the canvas's frontend: in the namespace, of the canvas, and still not allowed.
    let intruder = stage.probe_pod(NAMESPACE, "intruder", "frontend")?;
    let edge = stage.probe_pod(EDGE_NAMESPACE, "edge", "ingress")?;
    // Addresses, not names: the policy is on the packets, whatever DNS says.
    let pod_ip = |pod: &str| -> Result<String> {
        Ok(stage
            .kubectl(&[
                "get",
                "pod",
                "-n",
                NAMESPACE,
                pod,
                "-o",
                "jsonpath={.status.podIP}",
            ])?
            .trim()
            .to_owned())
    };
    let redis = pod_ip(&format!("{CANVAS}-redis-0"))?;
    // A pod that serves: one still starting, or stopping, refuses connections anyway.
    let first_pod_ip = |component: &str| -> Result<String> {
        process::wait_until_value(
            &format!("a ready {component} pod"),
            Duration::from_secs(90),
            || {
                Ok(stage
                    .serving_pods(component)?
                    .0
                    .into_iter()
                    .next()
                    .map(|(_, ip)| ip))
            },
        )
    };
    let stateless = [
        (first_pod_ip("api")?, ports::CANVAS_API.to_string()),
        (first_pod_ip("gateway")?, ports::GATEWAY.to_string()),
        (first_pod_ip("frontend")?, ports::FRONTEND.to_string()),
    ];
    let refused = |said: &str| {
        said.contains("refused") || said.contains("timed out") || said.contains("Timeout")
    };
    let outcome = (|| -> Result<()> {
        let mut closed = vec![
            (&intruder, redis.as_str(), "6379"),
            (&edge, redis.as_str(), "6379"),
        ];
        closed.extend(
            stateless
                .iter()
                .map(|(ip, port)| (&intruder, ip.as_str(), port.as_str())),
        );
        for (from, to, port) in closed {
            let said = stage.dial(from, to, port)?;
            ensure!(
                refused(&said),
                "{from} reached {to}:{port}, which its NetworkPolicy should refuse: {said}"
            );
        }
        // Each answers the RESP ping it does not speak: the connection was admitted.
        for (ip, port) in &stateless {
            let said = stage.dial(&edge, ip, port)?;
            ensure!(
                !refused(&said),
                "{edge}, in the namespace spec.networkPolicy admits, could not reach {ip}:{port}: {said}"
            );
        }
        Ok(())
    })();
    for (namespace, pod) in [(NAMESPACE, "intruder"), (EDGE_NAMESPACE, "edge")] {
        let _ = stage.kubectl(&["delete", "pod", pod, "-n", namespace, "--wait=false"]);
    }
    outcome?;
    for component in ["api", "gateway"] {
        stage.wait_ready_pods(component, 2, Duration::from_secs(90))?;
    }
    // The gateway still reaches canvas-api: a placement through the Ingress lands.
    let (versions, _) = stage.place_as(None, &[(41, 41, 2)])?;
    ensure!(
        versions.len() == 1,
        "a placement through the Ingress after the probes: {versions:?}"
    );
    Ok(())
}

/// `kubectl annotate pxc real pixel-playground.dev/rotate-identity-key=…`: the operator
/// rotates the identity key in two steps, each a roll of the gateway pods (the new key first
/// verifies only, then signs), and a person who placed before the rotation is still the
/// same person after it, with the cookie the old key signed.
fn identity_key_rotation_keeps_identities(stage: &Stage) -> Result<()> {
    let cookie = tempfile::NamedTempFile::new()?;
    let (_, before) = stage.place_as(Some(cookie.path()), &[(40, 40, 3)])?;
    // The keys as the Secret holds them (base64: compared, never decoded).
    let secret = |key: &str| -> Result<String> {
        let secret = stage.kubectl_json(&[
            "get",
            "secret",
            &format!("{CANVAS}-internal"),
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ])?;
        Ok(secret["data"][key].as_str().unwrap_or_default().to_owned())
    };
    let generation = || stage.generation("gateway");
    let (key_before, generation_before) = (secret("identity-key")?, generation()?);
    let value = format!("real-pods-{}", fastrand::u64(..));
    let started = Instant::now();
    stage.kubectl(&[
        "annotate",
        "pxc",
        CANVAS,
        "-n",
        NAMESPACE,
        &format!("{ROTATE_IDENTITY_KEY_ANNOTATION}={value}"),
        "--overwrite",
    ])?;
    process::wait_until(
        "the rotation to finish (the new key signing, none pending)",
        Duration::from_secs(300),
        || {
            Ok(secret("identity-key")? != key_before
                && secret("identity-key-next")?.is_empty()
                && secret("identity-key-previous")? == key_before)
        },
    )?;
    stage.kubectl(&[
        "rollout",
        "status",
        &format!("deploy/{CANVAS}-gateway"),
        "-n",
        NAMESPACE,
        "--timeout=240s",
    ])?;
    stage.wait_ready_pods("gateway", 2, Duration::from_secs(180))?;
    let rolls = generation()? - generation_before;
    ensure!(
        rolls == 2,
        "the gateway rolled {rolls} times, not the rotation's 2"
    );
    let (_, after) = stage.place_as(Some(cookie.path()), &[(41, 40, 4)])?;
    ensure!(
        after == before,
        "placed as {before} before the rotation and as {after} after it"
    );
    println!(
        "real-pods: the identity key rotated in two gateway rolls in {:.1} s; the person who \
         placed as {before} before placed as {after} after, with the cookie the old key signed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The operator pod holding the lease is deleted: the standby takes the lease and a change
/// to the canvas is reconciled (new pods start on the real node and serve).
/// `spec.canvas.readOnly` on a live canvas: once canvas-api and the gateways have rolled,
/// a placement through the Ingress, sent as the page sends it, is refused with
/// `canvas_closed`, the API says the canvas is frozen, and nothing moves; thawed, the same
/// person places again.
fn frozen_canvas_refuses_through_the_ingress(stage: &Stage) -> Result<()> {
    let info = || -> Result<Value> {
        let (status, body) = stage.http("GET", ports::API_INFO_PATH, None)?;
        ensure!(status == 200, "GET info answered {status}: {body}");
        serde_json::from_str(&body).context("info is not JSON")
    };
    let cookie = tempfile::NamedTempFile::new()?;
    let started = Instant::now();
    stage.roll_canvas(r#"{"canvas":{"readOnly":true}}"#)?;
    let frozen_after = started.elapsed();
    let before = info()?;
    ensure!(
        before["readOnly"] == true,
        "the API does not say frozen: {before}"
    );
    let refused = stage
        .place_as(Some(cookie.path()), &[(42, 42, 5)])
        .err()
        .context("a placement on the frozen canvas was accepted")?;
    let refused = format!("{refused:#}");
    ensure!(
        refused.contains("canvas_closed"),
        "refused, but not as canvas_closed: {refused}"
    );
    let after = info()?;
    ensure!(
        after["version"] == before["version"],
        "the frozen canvas moved: {before} -> {after}"
    );
    stage.roll_canvas(r#"{"canvas":{"readOnly":false}}"#)?;
    let (versions, _) = stage.place_as(Some(cookie.path()), &[(42, 42, 5)])?;
    println!(
        "real-pods: frozen in {:.1} s (api and gateways rolled); a placement through the \
         Ingress was refused with canvas_closed at version {}; thawed, it placed as version {}",
        frozen_after.as_secs_f64(),
        before["version"],
        versions[0]
    );
    Ok(())
}

fn operator_pod_deleted_standby_reconciles(stage: &Stage) -> Result<()> {
    let holder = || -> Result<String> {
        Ok(stage
            .kubectl(&[
                "get",
                "lease",
                LEASE_NAME,
                "-n",
                OPERATOR_NAMESPACE,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])?
            .trim()
            .to_owned())
    };
    let leader = holder()?;
    ensure!(!leader.is_empty(), "no operator holds the lease");
    stage.kubectl(&[
        "delete",
        "pod",
        "-n",
        OPERATOR_NAMESPACE,
        &leader,
        "--wait=false",
    ])?;
    let deleted = Instant::now();
    process::wait_until(
        "another operator pod to take the lease",
        Duration::from_secs(120),
        || Ok(holder().is_ok_and(|h| !h.is_empty() && h != leader)),
    )?;
    println!(
        "real-pods: the standby took the lease {:.1} s after the leader's pod was deleted",
        deleted.elapsed().as_secs_f64()
    );
    stage.kubectl(&[
        "patch",
        &format!("pxc/{CANVAS}"),
        "-n",
        NAMESPACE,
        "--type",
        "merge",
        "-p",
        "{\"spec\":{\"frontend\":{\"replicas\":2}}}",
    ])?;
    stage.wait_ready_pods("frontend", 2, Duration::from_secs(180))?;
    stage.wait_canvas_ready()?;
    let pods = stage.pods()?;
    let frontends = pods
        .iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "frontend")
        .filter(|p| p["spec"]["nodeName"] == stage.node.as_str())
        .count();
    ensure!(frontends == 2, "{frontends} frontend pods on the real node");
    Ok(())
}

/// A canvas whose Redis image does not exist stays not Ready, with a condition and a
/// Warning event naming the image; once the spec names no image (the operator's default
/// applies), the stuck pod is replaced and the canvas becomes Ready.
fn missing_image_named_in_status_then_fixed(stage: &Stage) -> Result<()> {
    const BROKEN: &str = "broken";
    const MISSING: &str = "pixel-playground-redis:does-not-exist";
    stage.apply(&format!(
        "apiVersion: pixel-playground.dev/v1alpha1\nkind: PixelCanvas\nmetadata:\n  name: {BROKEN}\nspec:\n  \
         canvas: {{width: 16, height: 16, cooldownSeconds: 0}}\n  api: {{replicas: 1}}\n  \
         gateway: {{replicas: 1}}\n  frontend: {{replicas: 1}}\n  \
         redis: {{image: \"{MISSING}\", storage: {{size: 1Gi}}}}\n  ingress: {{host: broken.localtest.me}}\n"
    ))?;
    let canvas = format!("pxc/{BROKEN}");
    let ready_condition = || -> Result<Value> {
        let conditions = stage.kubectl_json(&[
            "get",
            &canvas,
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.status.conditions}",
        ]);
        Ok(conditions?
            .as_array()
            .and_then(|all| all.iter().find(|c| c["type"] == "Ready").cloned())
            .unwrap_or(Value::Null))
    };
    process::wait_until(
        "the broken canvas to report the image it cannot pull",
        Duration::from_secs(180),
        || Ok(ready_condition().is_ok_and(|c| c["reason"] == "ImagePullFailed")),
    )?;
    let condition = ready_condition()?;
    ensure!(condition["status"] == "False", "Ready is {condition}");
    let message = condition["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("redis") && message.contains(MISSING),
        "the condition does not name the component and image: {message}"
    );
    let events = stage.kubectl_json(&[
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        &format!("involvedObject.name={BROKEN},reason=ImagePullFailed"),
        "-o",
        "json",
    ])?;
    let event = events["items"]
        .as_array()
        .and_then(|items| items.first())
        .context("no ImagePullFailed event for the broken canvas")?;
    ensure!(event["type"] == "Warning", "the event is {}", event["type"]);
    ensure!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains(MISSING)),
        "the event does not name the image: {}",
        event["message"]
    );
    // The fix: name no image, so the operator's default (the image built here) applies.
    stage.kubectl(&[
        "patch",
        &canvas,
        "-n",
        NAMESPACE,
        "--type",
        "merge",
        "-p",
        "{\"spec\":{\"redis\":{\"image\":null}}}",
    ])?;
    let fixed = Instant::now();
    stage.kubectl(&[
        "wait",
        "--for=condition=Ready",
        &canvas,
        "-n",
        NAMESPACE,
        "--timeout=240s",
    ])?;
    println!(
        "real-pods: the broken canvas was Ready {:.1} s after its image was fixed",
        fixed.elapsed().as_secs_f64()
    );
    stage.kubectl(&[
        "delete",
        &canvas,
        "-n",
        NAMESPACE,
        "--wait=true",
        "--timeout=120s",
    ])?;
    Ok(())
}

/// The tag a user moves the canvas to: the same build under another tag, imported as a
/// registry would serve it.
const NEXT_TAG: &str = "next";

/// `spec.image.tag` changed by hand on a live canvas: canvas-api, the gateways and the
/// frontend roll to the new tag and end Ready, the status current; Redis keeps running
/// (the same pod), and nothing placed is lost.
fn new_tag_rolls_the_app_and_keeps_redis(stage: &Stage) -> Result<()> {
    stage.place(&[(5, 60, 2), (6, 60, 3), (7, 60, 4)])?;
    let next = format!("{}:{NEXT_TAG}", stage.app_image.base_name);
    let node = stage
        .cluster
        .real_node()
        .context("the test cluster has no real node")?;
    process::output(
        node.ctr(stage.tools).args([
            "--namespace",
            "k8s.io",
            "images",
            "tag",
            "--force",
            &stage.app_image.reference,
            &next,
        ]),
        Duration::from_secs(60),
    )?;
    let redis_uid = || stage.uid(&format!("pod/{CANVAS}-redis-0"));
    let redis_before = redis_uid()?;
    let before = canvas_state(stage)?;
    let started = Instant::now();
    let generations = |stage: &Stage| -> Result<[u64; 3]> {
        Ok([
            stage.generation("api")?,
            stage.generation("gateway")?,
            stage.generation("frontend")?,
        ])
    };
    let old = generations(stage)?;
    stage.patch_spec(&format!("{{\"image\":{{\"tag\":\"{NEXT_TAG}\"}}}}"))?;
    process::wait_until(
        "the operator to apply the three Deployments with the new tag",
        Duration::from_secs(120),
        || {
            Ok(generations(stage)?
                .iter()
                .zip(old)
                .all(|(now, was)| *now > was))
        },
    )?;
    for component in ["api", "gateway", "frontend"] {
        // As many as the spec asks now (earlier checks scale some).
        let replicas: u32 = stage
            .kubectl(&[
                "get",
                &format!("deploy/{CANVAS}-{component}"),
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.spec.replicas}",
            ])?
            .trim()
            .parse()
            .with_context(|| format!("the {component} Deployment's replicas"))?;
        stage.wait_rolled(component, replicas)?;
    }
    stage.wait_canvas_ready()?;
    let canvas = stage.canvas()?;
    ensure!(
        canvas["status"]["observedGeneration"] == canvas["metadata"]["generation"],
        "the status is not of the new generation: {}",
        canvas["status"]
    );
    for pod in stage.pods()? {
        let component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            .as_str()
            .unwrap_or("");
        if !["api", "gateway", "frontend"].contains(&component) {
            continue;
        }
        let image = pod["spec"]["containers"][0]["image"].as_str().unwrap_or("");
        ensure!(
            image.ends_with(&format!(":{NEXT_TAG}")),
            "a {component} pod runs {image}"
        );
    }
    ensure!(redis_uid()? == redis_before, "the new tag restarted Redis");
    let after = canvas_state(stage)?;
    ensure!(
        after == before,
        "the canvas changed across the roll: version {} -> {}",
        before.0,
        after.0
    );
    let next_version = stage.place(&[(8, 60, 5)])?;
    println!(
        "real-pods: tag {NEXT_TAG} rolled canvas-api, the gateways and the frontend in {:.1} s, \
         Redis kept running (same pod), version {} and every pixel kept; the next placement \
         was version {}",
        started.elapsed().as_secs_f64(),
        before.0,
        next_version[0]
    );
    Ok(())
}

/// The backup check's S3 bucket, credentials Secret and keys.
const BACKUP_BUCKET: &str = "canvases";
const BACKUP_SECRET: &str = "backup-store";
const BACKUP_KEYS: (&str, &str) = ("real-pods-access", "real-pods-secret-key");

/// What a person sees of the canvas through the Ingress: its version, every pixel (the
/// binary snapshot) and the whole history.
type CanvasState = (Value, Vec<u8>, Value);

/// The [`CanvasState`] now.
fn canvas_state(stage: &Stage) -> Result<CanvasState> {
    let json = |path: &str| -> Result<Value> {
        let (status, body) = stage.http("GET", path, None)?;
        ensure!(status == 200, "GET {path} answered {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path} is not JSON"))
    };
    let info = json(ports::API_INFO_PATH)?;
    let snapshot = stage.get_bytes(ports::API_CANVAS_PATH)?;
    let history = json(&format!("{}?since=0", ports::API_HISTORY_PATH))?;
    ensure!(
        history["more"] == false,
        "the history is longer than one page: {history}"
    );
    Ok((
        info["version"].clone(),
        snapshot,
        history["updates"].clone(),
    ))
}

/// `spec.backup` added to the live canvas, a backup Job run at once (as its schedule
/// would), uploading to a real S3-compatible server (s3s-fs on the host); the status names
/// the backup; the canvas and its volume deleted; a canvas of the same name with
/// `spec.restore: {from: latest}` comes up from it on a fresh volume, and through the
/// Ingress every pixel, the version and the history are as they were.
fn backup_delete_restore_is_equal(stage: &Stage) -> Result<()> {
    let placed: Vec<(u32, u32, u32)> = (0..12).map(|i| (10 + i, 50, 1 + i % 9)).collect();
    stage.place(&placed)?;

    let binary = pixel_harness::object_store::ensure_server()?;
    let root = tempfile::tempdir()?;
    std::fs::create_dir(root.path().join(BACKUP_BUCKET))?;
    let address = std::net::SocketAddr::new(stage.host_link.into(), process::free_port()?);
    let server =
        pixel_harness::object_store::Server::start(&binary, address, root.path(), BACKUP_KEYS)?;
    stage.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {BACKUP_SECRET}\nstringData:\n  \
         AWS_ACCESS_KEY_ID: {}\n  AWS_SECRET_ACCESS_KEY: {}\n",
        BACKUP_KEYS.0, BACKUP_KEYS.1
    ))?;
    // Once a year: the check runs its Job now rather than wait for the schedule.
    let backup = format!(
        "{{\"schedule\":\"0 0 1 1 *\",\"retention\":2,\"store\":{{\"endpoint\":\"{}\",\
         \"bucket\":\"{BACKUP_BUCKET}\",\"credentialsSecretName\":\"{BACKUP_SECRET}\"}}}}",
        server.endpoint
    );
    stage.patch_spec(&format!("{{\"backup\":{backup}}}"))?;
    let cron_job = format!("cronjob/{CANVAS}-backup");
    process::wait_until(
        "the operator to create the backup CronJob",
        Duration::from_secs(60),
        || Ok(stage.kubectl(&["get", &cron_job, "-n", NAMESPACE]).is_ok()),
    )?;
    let before = canvas_state(stage)?;

    let started = Instant::now();
    let job = format!("{CANVAS}-backup-now");
    stage.kubectl(&["create", "job", &job, "--from", &cron_job, "-n", NAMESPACE])?;
    let waited = stage.kubectl(&[
        "wait",
        "--for=condition=complete",
        &format!("job/{job}"),
        "-n",
        NAMESPACE,
        "--timeout=300s",
    ]);
    if let Err(error) = waited {
        let logs = stage
            .kubectl(&[
                "logs",
                "-n",
                NAMESPACE,
                &format!("job/{job}"),
                "--all-containers",
                "--tail=40",
            ])
            .unwrap_or_default();
        bail!("the backup Job did not complete: {error:#}\n{logs}");
    }
    let backed_up = started.elapsed();
    let last_backup = || -> Result<Value> { Ok(stage.canvas()?["status"]["lastBackup"].clone()) };
    process::wait_until(
        "status.lastBackup to name the backup",
        Duration::from_secs(60),
        || Ok(last_backup()?["version"] == before.0),
    )?;
    let record = last_backup()?;
    let object = record["object"]
        .as_str()
        .context("lastBackup has no object")?;
    ensure!(
        object.starts_with(&format!("{NAMESPACE}/{CANVAS}/")),
        "the backup is not under the canvas's prefix: {record}"
    );
    let stored = root.path().join(BACKUP_BUCKET).join(object);
    let bytes = std::fs::metadata(&stored)
        .with_context(|| format!("the store holds no {}", stored.display()))?
        .len();

    // The canvas and its volume, gone.
    let claim = format!("data-{CANVAS}-redis-0");
    let claim_uid = stage.uid(&format!("pvc/{claim}"))?;
    stage.kubectl(&[
        "delete",
        &format!("pxc/{CANVAS}"),
        "-n",
        NAMESPACE,
        "--wait=true",
        "--timeout=180s",
    ])?;
    process::wait_until(
        "the canvas's pods to be gone",
        Duration::from_secs(180),
        || {
            Ok(stage
                .pods()?
                .iter()
                .all(|pod| pod["metadata"]["labels"]["app.kubernetes.io/component"] == "backup"))
        },
    )?;
    // Its other children too (garbage collection), so the new canvas makes its own.
    let secret = format!("secret/{CANVAS}-redis-auth");
    process::wait_until(
        "the canvas's generated Secrets to be gone",
        Duration::from_secs(120),
        || Ok(stage.kubectl(&["get", &secret, "-n", NAMESPACE]).is_err()),
    )?;
    stage.kubectl(&[
        "delete",
        "pvc",
        &claim,
        "-n",
        NAMESPACE,
        "--wait=true",
        "--timeout=120s",
    ])?;
    stage.cluster.ensure_storage(stage.tools)?;

    // Anew, from the newest backup under its prefix.
    let restored_at = Instant::now();
    stage.apply(&format!(
        "{}  backup: {backup}\n  restore: {{from: latest}}\n",
        canvas_manifest(stage.host_link)
    ))?;
    stage.wait_canvas_ready()?;
    let new_uid = stage.uid(&format!("pvc/{claim}"))?;
    ensure!(
        new_uid != claim_uid,
        "the canvas came back on its old claim"
    );
    stage.wait_api_through_the_ingress(
        "the restored canvas's API through the Ingress",
        Duration::from_secs(90),
    )?;
    let after = canvas_state(stage)?;
    ensure!(
        after.0 == before.0,
        "version {} after the restore, {} before",
        after.0,
        before.0
    );
    ensure!(
        after.1 == before.1,
        "the restored snapshot differs from the backed-up canvas"
    );
    ensure!(
        after.2 == before.2,
        "the restored history differs: {} != {}",
        after.2,
        before.2
    );
    // And it goes on: the next placement is the next version.
    let next = stage.place(&[(63, 63, 3)])?;
    ensure!(
        Some(next[0]) == before.0.as_u64().map(|v| v + 1),
        "the restored canvas placed version {}, not the one after {}",
        next[0],
        before.0
    );
    println!(
        "real-pods: backup of version {} ({bytes} bytes, {} history entries) in {:.1} s; \
         restored into a new canvas on a fresh volume, Ready in {:.1} s, snapshot, version and \
         history equal",
        before.0,
        before.2.as_array().map_or(0, Vec::len),
        backed_up.as_secs_f64(),
        restored_at.elapsed().as_secs_f64()
    );
    drop(server);
    Ok(())
}
