//! The local Kubernetes cluster: a real control plane (kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler) run by kwokctl's `binary` runtime from the
//! pinned builds, KWOK fake nodes that make pods Running and Ready without containers (for
//! scale), and, in the developer's and the test run's clusters, a real node ([`crate::node`])
//! and an Ingress controller ([`crate::ingress`]) so canvas pods run as real containers.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    images,
    ingress::IngressController,
    node::{self, ControlPlane, RealNode, plan::AddressPlan},
    paths, process,
    toolchain::Tools,
};

/// The namespace and ServiceAccount `config/default` installs the operator with.
pub const OPERATOR_NAMESPACE: &str = "pixel-playground-system";
pub const OPERATOR_ACCOUNT: &str = "pixel-operator";
/// The operator's Deployment in `config/manager`.
pub const OPERATOR_DEPLOYMENT: &str = "pixel-operator";

/// The control-plane processes kwokctl runs, in start order.
const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
];

/// Local disk each fake node offers its pods (as much as its 256 GiB of memory).
const FAKE_NODE_EPHEMERAL_STORAGE: &str = "256Gi";

/// Where the developer's cluster serves Ingresses: http://<host>:8080/ on 127.0.0.1.
pub const DEV_INGRESS_PORT: u16 = 8080;

/// The variable naming kube-apiserver's port for `cargo xtask up` / `cluster up` (the
/// tooling's own, not the services' contract).
pub const ENV_APISERVER_PORT: &str = "PIXEL_APISERVER_PORT";

/// One named local cluster. The developer's (`cargo xtask cluster up`) and the test run's
/// are separate, so running the tests never disturbs a cluster someone is using.
#[derive(Debug)]
pub struct Cluster {
    name: &'static str,
    /// Fake nodes (KWOK's node template allows 110 pods each).
    nodes: u32,
    /// Pre-created PersistentVolumes: nothing provisions here, so claims bind to these.
    volumes: u32,
    /// Its addresses (its own slot, so clusters can run side by side).
    plan: AddressPlan,
    /// Whether a real node and the Ingress controller join it.
    real_node: bool,
    /// The Ingress controller's port on 127.0.0.1; `None` picks a free one.
    ingress_port: Option<u16>,
}

impl Cluster {
    /// The cluster `cargo xtask up` and `cargo xtask cluster up` manage.
    pub const DEV: Cluster = Cluster {
        name: "pixel-playground",
        nodes: 3,
        volumes: 24,
        plan: AddressPlan::new(0),
        real_node: true,
        ingress_port: Some(DEV_INGRESS_PORT),
    };
    /// The cluster `cargo xtask test` starts and removes.
    pub const TEST: Cluster = Cluster {
        name: "pixel-playground-test",
        nodes: 3,
        volumes: 24,
        plan: AddressPlan::new(1),
        real_node: true,
        ingress_port: None,
    };
    /// The cluster `cargo xtask bench` starts for the operator benchmarks and removes: room
    /// for 500 canvases (2,000 pods, 500 Redis volumes), and 500 more volumes for the
    /// control plane's floor after them (a retained volume is not bound again).
    pub const BENCH: Cluster = Cluster {
        name: "pixel-playground-bench",
        nodes: 24,
        volumes: 1040,
        plan: AddressPlan::new(2),
        real_node: false,
        ingress_port: None,
    };

    fn workdir() -> PathBuf {
        paths::cache_dir().join("kwok")
    }

    fn state_dir(&self) -> PathBuf {
        Self::workdir().join("clusters").join(self.name)
    }

    /// The cluster's real node, if it has one.
    pub fn real_node(&self) -> Option<RealNode> {
        self.real_node
            .then(|| RealNode::new(self.name, &self.state_dir(), self.plan))
    }

    /// The cluster's Ingress controller (running when the cluster has a real node).
    pub fn ingress(&self) -> IngressController {
        IngressController::new(&self.state_dir())
    }

    fn pki_dir(&self) -> PathBuf {
        self.state_dir().join("pki")
    }

    /// Where the cluster's kubeconfig is written.
    pub fn kubeconfig(&self) -> PathBuf {
        paths::cache_dir().join(format!("{}.kubeconfig", self.name))
    }

    fn kwokctl(&self, tools: &Tools) -> Command {
        let mut cmd = Command::new(&tools.kwokctl);
        cmd.env("KWOK_WORKDIR", Self::workdir())
            .env("KWOK_KUBE_VERSION", &tools.kubernetes_version)
            .env("KWOK_KUBECTL_BINARY", &tools.kubectl)
            .args(["--name", self.name]);
        cmd
    }

    /// `kubectl` pointed at this cluster.
    pub fn kubectl(&self, tools: &Tools) -> Command {
        let mut cmd = Command::new(&tools.kubectl);
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }

    fn exists(&self) -> bool {
        self.state_dir().exists()
    }

    /// Restarts kube-apiserver alone, as a control-plane upgrade does: SIGTERM (SIGKILL after
    /// `grace`), then the same command line, environment and directory again, its pid where
    /// kwokctl keeps it so `down` still stops it. Returns once it answers `/readyz`.
    pub fn restart_apiserver(&self, tools: &Tools, grace: Duration) -> Result<()> {
        let pid_file = self.state_dir().join("pids/kube-apiserver.pid");
        let pid = fs::read_to_string(&pid_file)
            .with_context(|| format!("cannot read {}", pid_file.display()))?;
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        let nul_separated = |name: &str| -> Result<Vec<String>> {
            let raw = fs::read(proc_dir.join(name))
                .with_context(|| format!("kube-apiserver (pid {}) is not running", pid.trim()))?;
            Ok(raw
                .split(|byte| *byte == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect())
        };
        let argv = nul_separated("cmdline")?;
        let environment = nul_separated("environ")?;
        let cwd = fs::read_link(proc_dir.join("cwd"))?;
        let (program, args) = argv
            .split_first()
            .context("kube-apiserver has no command line")?;
        process::stop_detached_within(&pid_file, "kube-apiserver", grace)?;
        let log_path = self.state_dir().join("logs/kube-apiserver.log");
        let log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(environment.iter().filter_map(|pair| pair.split_once('=')))
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group, as kwokctl starts it, so it outlives xtask.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = process::spawn(&mut command)?;
        fs::write(&pid_file, child.id().to_string())?;
        process::wait_until(
            "the restarted kube-apiserver to be ready",
            Duration::from_secs(90),
            || Ok(self.is_healthy(tools)),
        )
        .with_context(|| format!("see {}", log_path.display()))
    }

    /// The API server answers `/readyz`.
    pub fn is_healthy(&self, tools: &Tools) -> bool {
        self.kubeconfig().exists()
            && process::output(
                self.kubectl(tools).args(["get", "--raw", "/readyz"]),
                Duration::from_secs(15),
            )
            .is_ok_and(|body| body.trim() == "ok")
    }

    /// Creates the cluster (or keeps a healthy one), gives it its nodes and waits for them;
    /// kube-apiserver listens on `port`, or on a free port chosen at creation.
    pub fn up(&self, tools: &Tools, port: Option<u16>) -> Result<()> {
        if self.exists() {
            if self.is_healthy(tools) {
                println!("Cluster {:?} is already running.", self.name);
                return self.finish_up(tools);
            }
            println!(
                "Cluster {:?} exists but does not answer (stopped or broken): recreating it.",
                self.name
            );
            self.down(tools)?;
        }
        if let Some(port) = port {
            ensure_port_free(port)?;
        }
        self.create(tools, port)?;
        self.finish_up(tools)
    }

    fn create(&self, tools: &Tools, port: Option<u16>) -> Result<()> {
        println!(
            "Creating cluster {:?} (Kubernetes {})...",
            self.name, tools.kubernetes_version
        );
        let _ = fs::remove_file(self.kubeconfig());
        let base = paths::repo_root().join("e2e/kwokctl.yaml");
        let base =
            fs::read_to_string(&base).with_context(|| format!("cannot read {}", base.display()))?;
        fs::create_dir_all(Self::workdir())?;
        let config = Self::workdir().join(format!("{}.kwokctl.yaml", self.name));
        fs::write(&config, kwokctl_config(&base, &self.plan, &self.pki_dir())?)?;
        let mut cmd = self.kwokctl(tools);
        cmd.args(["create", "cluster", "--runtime", "binary", "--wait", "3m"])
            .arg("--config")
            .arg(&config)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--kube-apiserver-binary")
            .arg(&tools.kube_apiserver)
            .arg("--kube-controller-manager-binary")
            .arg(&tools.kube_controller_manager)
            .arg("--kube-scheduler-binary")
            .arg(&tools.kube_scheduler)
            .arg("--etcd-binary")
            .arg(&tools.etcd)
            .arg("--kwok-controller-binary")
            .arg(&tools.kwok);
        if let Some(port) = port {
            cmd.args(["--kube-apiserver-port", &port.to_string()]);
        }
        let created = process::output(&mut cmd, Duration::from_secs(300));
        if let Err(error) = created {
            let logs = self.component_logs(tools);
            // Leave nothing half-started behind.
            let _ = self.down(tools);
            bail!(
                "{error:#}\n\n{logs}\nThe cluster was removed. Fix the cause above, then run `cargo xtask cluster up` again."
            );
        }
        Ok(())
    }

    /// The tail of each component's log, to explain a failed start.
    fn component_logs(&self, tools: &Tools) -> String {
        let mut report = String::from("Control-plane logs (last lines of each):\n");
        for component in COMPONENTS {
            let out = process::output_unchecked(
                self.kwokctl(tools).args(["logs", component]),
                Duration::from_secs(15),
            );
            let text = match out {
                Ok(out) => {
                    String::from_utf8_lossy(&out.stdout).into_owned()
                        + &String::from_utf8_lossy(&out.stderr)
                }
                Err(error) => format!("(no log: {error})"),
            };
            let lines: Vec<&str> = text.lines().collect();
            report.push_str(&format!(
                "--- {component}\n{}\n",
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
        report
    }

    /// Nodes, readiness, version check and usage.
    fn finish_up(&self, tools: &Tools) -> Result<()> {
        process::output(
            self.kwokctl(tools)
                .args(["scale", "node", "--replicas", &self.nodes.to_string()])
                .arg("--param")
                .arg(format!(
                    ".podCIDRs=[\"{}\"]",
                    self.plan.first_fake_node_pods()
                ))
                .arg("--param")
                .arg(format!(".nodeIPs=[\"{}\"]", self.plan.first_fake_node_ip()))
                // Pods request local disk; KWOK's node template offers none by default.
                .arg("--param")
                .arg(format!(
                    ".allocatable[\"ephemeral-storage\"]=\"{FAKE_NODE_EPHEMERAL_STORAGE}\""
                )),
            Duration::from_secs(120),
        )
        .context("creating the fake nodes")?;
        self.wait_for_nodes(tools)?;
        self.ensure_storage(tools)?;
        let ingress = match self.real_node() {
            Some(node) => Some(self.start_real_node(tools, &node)?),
            None => None,
        };
        let server = self.server_version(tools)?;
        if server != tools.kubernetes_version {
            bail!(
                "the API server reports {server}, but the pinned control plane is {}",
                tools.kubernetes_version
            );
        }
        let real = match (self.real_node(), ingress) {
            (Some(node), Some(port)) => format!(
                " and the real node {} (Ingress controller on 127.0.0.1:{port})",
                node.name()
            ),
            _ => String::new(),
        };
        println!(
            "Cluster {:?} is up: Kubernetes {server}, {} Ready KWOK nodes{real}, API server on 127.0.0.1.\n\
             Use it with:\n  export KUBECONFIG={}\n  export PATH={}:$PATH   # kubectl {server}\n  kubectl get nodes",
            self.name,
            self.nodes,
            self.kubeconfig().display(),
            tools.kubectl.parent().unwrap_or(Path::new(".")).display(),
        );
        Ok(())
    }

    /// Starts (or keeps) the real node and the Ingress controller; returns the Ingress port.
    fn start_real_node(&self, tools: &Tools, node: &RealNode) -> Result<u16> {
        let pause = images::build_pause(&images::output_dir())?;
        let port = self.apiserver_port()?;
        node.start(
            tools,
            &ControlPlane {
                kubeconfig: &self.kubeconfig(),
                ca_cert: &self.pki_dir().join("ca.crt"),
                apiserver_port: port,
            },
            &pause.archive,
        )?;
        let ingress = self.ingress();
        let ingress_port = match (ingress.port(), self.ingress_port) {
            (_, Some(fixed)) => fixed,
            (Some(running), None) => running,
            (None, None) => process::free_port()?,
        };
        ingress.start(tools, &self.kubeconfig(), ingress_port)
    }

    /// kube-apiserver's port, from the kubeconfig kwokctl wrote.
    fn apiserver_port(&self) -> Result<u16> {
        let kubeconfig = fs::read_to_string(self.kubeconfig())
            .with_context(|| format!("cannot read {}", self.kubeconfig().display()))?;
        kubeconfig
            .split("https://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|port| port.parse().ok())
            .context("the kubeconfig names no API server on 127.0.0.1")
    }

    /// Creates `namespace` (or updates it) so its pods run on the real node by default — the
    /// PodNodeSelector and PodTolerationRestriction admission plugins read these
    /// annotations — under Pod Security "restricted".
    pub fn place_on_real_node(&self, tools: &Tools, namespace: &str) -> Result<()> {
        let (label, value) = node::render::NODE_LABEL;
        let (taint, _) = node::render::NODE_TAINT;
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                "annotations": {
                    "scheduler.alpha.kubernetes.io/node-selector": format!("{label}={value}"),
                    "scheduler.alpha.kubernetes.io/defaultTolerations": serde_json::json!([
                        {"key": taint, "operator": "Exists", "effect": "NoSchedule"}
                    ]).to_string(),
                },
            },
        });
        let path = self.state_dir().join(format!("namespace-{namespace}.json"));
        fs::write(&path, manifest.to_string())?;
        process::output(
            self.kubectl(tools)
                .args([
                    "apply",
                    "--server-side",
                    "--field-manager=pixel-harness",
                    "-f",
                ])
                .arg(&path),
            Duration::from_secs(60),
        )
        .with_context(|| format!("placing namespace {namespace} on the real node"))?;
        Ok(())
    }

    /// Imports an image archive into the real node's containerd.
    pub fn load_image(&self, tools: &Tools, image: &images::BuiltImage) -> Result<()> {
        let node = self
            .real_node()
            .with_context(|| format!("cluster {:?} has no real node", self.name))?;
        node.import_image(tools, &image.archive, &image.base_name)
    }

    fn wait_for_nodes(&self, tools: &Tools) -> Result<()> {
        // Nodes appear asynchronously after `scale`; `kubectl wait` fails on an empty list.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = process::output(
                self.kubectl(tools).args([
                    "get",
                    "nodes",
                    "-o",
                    "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                ]),
                Duration::from_secs(15),
            )
            .map(|out| out.lines().filter(|status| *status == "True").count())
            .unwrap_or(0);
            if ready >= self.nodes as usize {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs = self.component_logs(tools);
                bail!(
                    "only {ready} of {} nodes became Ready within 2 minutes\n\n{logs}",
                    self.nodes
                );
            }
            thread::sleep(Duration::from_secs(1));
        }
    }

    /// A default StorageClass, `standard`, and a pool of volumes in it: what a cloud
    /// provisioner would create on demand, made ahead of time because nothing provisions here.
    pub fn ensure_storage(&self, tools: &Tools) -> Result<()> {
        let path = paths::cache_dir().join(format!("{}-storage.yaml", self.name));
        let volumes = self.volumes_dir();
        fs::write(&path, storage_manifest(self.volumes, &volumes))?;
        if self.real_node {
            // Real pods mount these: they must exist and belong to the pods' user.
            for i in 0..self.volumes {
                let dir = volumes.join(volume_name(i));
                fs::create_dir_all(&dir)?;
                chown_to_pod_user(&dir)?;
            }
        }
        process::output(
            self.kubectl(tools)
                .args(["apply", "--server-side", "-f"])
                .arg(&path),
            Duration::from_secs(60),
        )
        .context("creating the StorageClass and volumes")?;
        // Volumes whose claims are gone (tests delete their namespaces) return to the pool,
        // as a recycler would: forget the old claim so the volume is Available again.
        let released = process::output(
            self.kubectl(tools).args([
                "get",
                "pv",
                "-o",
                "jsonpath={range .items[?(@.status.phase==\"Released\")]}{.metadata.name}{\"\\n\"}{end}",
            ]),
            Duration::from_secs(30),
        )?;
        for volume in released.lines().filter(|l| !l.is_empty()) {
            // A recycled volume starts empty, as a new cloud disk would.
            let dir = volumes.join(volume);
            if dir.exists() {
                fs::remove_dir_all(&dir)?;
                fs::create_dir_all(&dir)?;
                chown_to_pod_user(&dir)?;
            }
            process::output(
                self.kubectl(tools).args([
                    "patch",
                    "pv",
                    volume,
                    "--type",
                    "json",
                    "-p",
                    r#"[{"op":"remove","path":"/spec/claimRef"}]"#,
                ]),
                Duration::from_secs(30),
            )
            .with_context(|| format!("returning volume {volume} to the pool"))?;
        }
        Ok(())
    }

    fn server_version(&self, tools: &Tools) -> Result<String> {
        let out = process::output(
            self.kubectl(tools).args(["version", "-o", "json"]),
            Duration::from_secs(15),
        )?;
        let json: serde_json::Value =
            serde_json::from_str(&out).context("parsing `kubectl version -o json`")?;
        json.pointer("/serverVersion/gitVersion")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .context("`kubectl version` printed no server version")
    }

    /// Installs the operator's manifests (`config/default`: CRD, RBAC, Deployment) as users do,
    /// and waits until the API serves the CRD.
    pub fn install_operator_config(&self, tools: &Tools) -> Result<()> {
        self.install_operator_config_from(tools, &paths::operator_config())
    }

    /// [`Self::install_operator_config`] from another tree's `config/default` (a release's).
    pub fn install_operator_config_from(&self, tools: &Tools, config: &Path) -> Result<()> {
        process::output(
            self.kubectl(tools)
                .args(["apply", "--server-side", "--force-conflicts", "-k"])
                .arg(config),
            Duration::from_secs(60),
        )
        .with_context(|| format!("installing {}", config.display()))?;
        process::output(
            self.kubectl(tools).args([
                "wait",
                "--for=condition=Established",
                "crd/pixelcanvases.pixel-playground.dev",
                "--timeout=60s",
            ]),
            Duration::from_secs(90),
        )
        .context("waiting for the PixelCanvas CRD to be served")?;
        Ok(())
    }

    /// Runs the operator in the cluster, as users do: `config` (a `config/default`) applied
    /// (its Deployment, ServiceAccount, RBAC, probes, leader election), pointed at
    /// `redis_image` as its default Redis image; returns once the rollout is complete.
    /// `app_image` is the archive the operator's image came from: when it changes (a new
    /// build under the same tag), the operator's pods are replaced so they run it.
    pub fn run_operator_in_cluster(
        &self,
        tools: &Tools,
        config: &Path,
        redis_image: &str,
        app_image: &images::BuiltImage,
    ) -> Result<()> {
        self.install_operator_config_from(tools, config)?;
        let deployment = format!("deployment/{OPERATOR_DEPLOYMENT}");
        let digest = images::archive_digest(&app_image.archive)?;
        let restart = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
            "pixel-playground.dev/image-archive": digest,
        }}}}});
        process::output(
            self.kubectl(tools).args([
                "patch",
                &deployment,
                "--namespace",
                OPERATOR_NAMESPACE,
                "--type",
                "merge",
                "-p",
                &restart.to_string(),
            ]),
            Duration::from_secs(60),
        )
        .context("marking the operator's pods with the image they run")?;
        process::output(
            self.kubectl(tools).args([
                "set",
                "env",
                &deployment,
                "--namespace",
                OPERATOR_NAMESPACE,
                &format!(
                    "{}={redis_image}",
                    pixel_common::ports::ENV_DEFAULT_REDIS_IMAGE
                ),
            ]),
            Duration::from_secs(60),
        )
        .context("pointing the operator at the local Redis image")?;
        process::output(
            self.kubectl(tools).args([
                "rollout",
                "status",
                &deployment,
                "--namespace",
                OPERATOR_NAMESPACE,
                "--timeout=180s",
            ]),
            Duration::from_secs(200),
        )
        .context("the operator's Deployment did not become available")?;
        Ok(())
    }

    /// Scales the operator's Deployment from `config/default` (applying `config/default`
    /// again sets it back to its replicas).
    pub fn scale_in_cluster_operator(&self, tools: &Tools, replicas: u32) -> Result<()> {
        process::output(
            self.kubectl(tools).args([
                "scale",
                &format!("deployment/{OPERATOR_DEPLOYMENT}"),
                "--namespace",
                OPERATOR_NAMESPACE,
                &format!("--replicas={replicas}"),
            ]),
            Duration::from_secs(60),
        )
        .context("scaling the in-cluster operator")?;
        Ok(())
    }

    /// A kubeconfig that authenticates as the operator's ServiceAccount, so the operator under
    /// test holds exactly the permissions `config/rbac` grants.
    pub fn write_operator_kubeconfig(&self, tools: &Tools, path: &Path) -> Result<()> {
        let token = process::output(
            self.kubectl(tools).args([
                "create",
                "token",
                OPERATOR_ACCOUNT,
                "--namespace",
                OPERATOR_NAMESPACE,
                "--duration=4h",
            ]),
            Duration::from_secs(30),
        )
        .context("creating a token for the operator's ServiceAccount")?;
        fs::copy(self.kubeconfig(), path)?;
        let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}");
        let kubectl = |args: &[&str]| {
            process::output(
                Command::new(&tools.kubectl)
                    .arg("--kubeconfig")
                    .arg(path)
                    .args(args),
                Duration::from_secs(30),
            )
        };
        kubectl(&[
            "config",
            "set-credentials",
            &user,
            &format!("--token={}", token.trim()),
        ])?;
        kubectl(&[
            "config",
            "set-context",
            "--current",
            &format!("--user={user}"),
        ])?;
        Ok(())
    }

    fn volumes_dir(&self) -> PathBuf {
        self.state_dir().join("volumes")
    }

    /// Removes the cluster, its processes and data (the real node's included). Does nothing
    /// when there is none.
    pub fn down(&self, tools: &Tools) -> Result<()> {
        self.ingress().stop()?;
        if let Some(node) = self.real_node() {
            node.stop()?;
        }
        if self.exists() {
            process::output(
                self.kwokctl(tools).args(["delete", "cluster"]),
                Duration::from_secs(120),
            )
            .with_context(|| format!("deleting cluster {:?}", self.name))?;
            println!("Cluster {:?} removed.", self.name);
        } else {
            println!("No cluster {:?} to remove.", self.name);
        }
        let _ = fs::remove_file(self.kubeconfig());
        Ok(())
    }
}

fn volume_name(i: u32) -> String {
    format!("local-{i:03}")
}

/// The pods' user (the operator's pod security contexts run everything as 65532).
const POD_USER: u32 = 65532;

fn chown_to_pod_user(dir: &Path) -> Result<()> {
    std::os::unix::fs::chown(dir, Some(POD_USER), Some(POD_USER))
        .with_context(|| format!("cannot give {} to uid {POD_USER}", dir.display()))
}

/// kwokctl's configuration for one cluster: `e2e/kwokctl.yaml` plus the cluster's addresses,
/// kube-apiserver's certificate names for the real node and the pods, its client
/// certificate for kubelets (logs, exec), and the fake pods' range for KWOK.
fn kwokctl_config(base: &str, plan: &AddressPlan, pki: &Path) -> Result<String> {
    let mut config: serde_json::Value =
        serde_yaml::from_str(base).context("parsing e2e/kwokctl.yaml")?;
    config["options"]["kubeApiserverCertSANs"] = serde_json::json!([
        plan.host_link().to_string(),
        plan.kubernetes_service_ip().to_string(),
    ]);
    let extra = |component: &str, args: &[(&str, String)]| -> serde_json::Value {
        serde_json::json!({
            "name": component,
            "extraArgs": args.iter().map(|(key, value)| serde_json::json!({"key": key, "value": value})).collect::<Vec<_>>(),
        })
    };
    let additions = [
        extra(
            "kube-apiserver",
            &[
                ("service-cluster-ip-range", plan.services()),
                // The `kubernetes` Service's endpoint: the link's host end, forwarded to
                // loopback (see crate::node).
                ("advertise-address", plan.host_link().to_string()),
                (
                    "kubelet-client-certificate",
                    pki.join("admin.crt").display().to_string(),
                ),
                (
                    "kubelet-client-key",
                    pki.join("admin.key").display().to_string(),
                ),
            ],
        ),
        extra("kwok-controller", &[("cidr", plan.fake_pods())]),
    ];
    let patches = config["componentsPatches"]
        .as_array_mut()
        .context("e2e/kwokctl.yaml has no componentsPatches list")?;
    for addition in additions {
        match patches.iter_mut().find(|p| p["name"] == addition["name"]) {
            Some(patch) => patch["extraArgs"]
                .as_array_mut()
                .context("a componentsPatches entry without extraArgs")?
                .extend(
                    addition["extraArgs"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                ),
            None => patches.push(addition),
        }
    }
    serde_yaml::to_string(&config).context("writing the kwokctl configuration")
}

/// The default StorageClass and `count` 100Gi volumes in it, host paths under `dir`.
fn storage_manifest(count: u32, dir: &Path) -> String {
    let mut yaml = String::from(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: standard\n  annotations:\n    \
         storageclass.kubernetes.io/is-default-class: \"true\"\nprovisioner: kubernetes.io/no-provisioner\n\
         reclaimPolicy: Retain\nvolumeBindingMode: Immediate\nallowVolumeExpansion: true\n",
    );
    for i in 0..count {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: local-{i:03}\nspec:\n  \
             capacity: {{storage: 100Gi}}\n  accessModes: [ReadWriteOnce]\n  \
             persistentVolumeReclaimPolicy: Retain\n  storageClassName: standard\n  \
             hostPath: {{path: {}}}\n",
            dir.join(volume_name(i)).display()
        ));
    }
    yaml
}

pub fn ensure_port_free(port: u16) -> Result<()> {
    TcpListener::bind(("127.0.0.1", port)).map(drop).with_context(|| {
        format!(
            "port {port} on 127.0.0.1 is taken: choose another with --port (or {ENV_APISERVER_PORT}), \
             or stop the process listening on it (`ss -ltnp 'sport = :{port}'` shows which)"
        )
    })
}

/// `cargo xtask cluster down`: removes the developer's cluster, if there is one.
pub fn down_dev() -> Result<()> {
    if !Cluster::DEV.exists() {
        println!("No cluster {:?} to remove.", Cluster::DEV.name);
        return Ok(());
    }
    let tools = crate::toolchain::ensure()?;
    Cluster::DEV.down(&tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_port_names_the_fix() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let message = format!("{:#}", ensure_port_free(port).expect_err("taken"));
        assert!(
            message.contains(&format!("port {port} on 127.0.0.1 is taken")),
            "{message}"
        );
        assert!(message.contains("--port"), "{message}");
    }

    #[test]
    fn storage_is_a_default_class_and_a_pool_of_volumes() {
        let yaml = storage_manifest(3, Path::new("/volumes"));
        assert_eq!(yaml.matches("kind: PersistentVolume\n").count(), 3);
        assert!(yaml.contains("storageclass.kubernetes.io/is-default-class: \"true\""));
        assert!(yaml.contains("name: local-002"));
        assert!(yaml.contains("hostPath: {path: /volumes/local-002}"));
    }

    #[test]
    fn kwokctl_config_adds_the_clusters_addresses() {
        let base = fs::read_to_string(paths::repo_root().join("e2e/kwokctl.yaml")).expect("base");
        let config =
            kwokctl_config(&base, &AddressPlan::new(1), Path::new("/pki")).expect("config");
        let config: serde_json::Value = serde_yaml::from_str(&config).expect("YAML");
        assert_eq!(config["options"]["bindAddress"], "127.0.0.1");
        assert_eq!(
            config["options"]["kubeApiserverCertSANs"],
            serde_json::json!(["198.19.255.5", "198.19.64.1"])
        );
        let args = |name: &str| -> Vec<String> {
            config["componentsPatches"]
                .as_array()
                .expect("patches")
                .iter()
                .filter(|p| p["name"] == name)
                .flat_map(|p| p["extraArgs"].as_array().cloned().unwrap_or_default())
                .map(|a| {
                    format!(
                        "{}={}",
                        a["key"].as_str().expect("a key"),
                        a["value"].as_str().expect("a value")
                    )
                })
                .collect()
        };
        let apiserver = args("kube-apiserver");
        assert!(
            apiserver.contains(&"service-cluster-ip-range=198.19.64.0/18".to_owned()),
            "{apiserver:?}"
        );
        assert!(apiserver.contains(&"advertise-address=198.19.255.5".to_owned()));
        assert!(apiserver.contains(&"kubelet-client-certificate=/pki/admin.crt".to_owned()));
        assert!(args("kwok-controller").contains(&"cidr=198.18.128.0/18".to_owned()));
        assert!(args("kwok-controller").contains(&"manage-all-nodes=false".to_owned()));
        // Only the benchmarking range: never 10/8, 172.16/12 or 192.168/16.
        let text = serde_json::to_string(&config).expect("JSON");
        for private in ["\"10.", "\"172.", "\"192.168."] {
            assert!(!text.contains(private), "{private} in {text}");
        }
    }

    #[test]
    fn dev_and_test_clusters_do_not_share_state() {
        assert_ne!(Cluster::DEV.kubeconfig(), Cluster::TEST.kubeconfig());
        assert_ne!(Cluster::DEV.state_dir(), Cluster::TEST.state_dir());
    }
}
