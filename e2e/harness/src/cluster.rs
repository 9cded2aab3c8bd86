//! The local Kubernetes cluster: a real control plane (kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler) run by kwokctl's `binary` runtime from the
//! pinned builds, with KWOK fake nodes that make pods Running and Ready without containers.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{paths, process, toolchain::Tools};

/// The namespace and ServiceAccount `config/default` installs the operator with.
pub const OPERATOR_NAMESPACE: &str = "pixel-playground-system";
pub const OPERATOR_ACCOUNT: &str = "pixel-operator";

/// The control-plane processes kwokctl runs, in start order.
const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
];

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
    /// Pre-created PersistentVolumes: KWOK runs no storage provisioner, so claims bind to these.
    volumes: u32,
}

impl Cluster {
    /// The cluster `cargo xtask up` and `cargo xtask cluster up` manage.
    pub const DEV: Cluster = Cluster {
        name: "pixel-playground",
        nodes: 3,
        volumes: 24,
    };
    /// The cluster `cargo xtask test` starts and removes.
    pub const TEST: Cluster = Cluster {
        name: "pixel-playground-test",
        nodes: 3,
        volumes: 24,
    };
    /// The cluster `cargo xtask bench` starts for the operator benchmarks and removes: room
    /// for 500 canvases (2,000 pods, 500 Redis volumes).
    pub const BENCH: Cluster = Cluster {
        name: "pixel-playground-bench",
        nodes: 24,
        volumes: 520,
    };

    fn workdir() -> PathBuf {
        paths::cache_dir().join("kwok")
    }

    fn state_dir(&self) -> PathBuf {
        Self::workdir().join("clusters").join(self.name)
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
        let config = paths::repo_root().join("e2e/kwokctl.yaml");
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
                .args(["scale", "node", "--replicas", &self.nodes.to_string()]),
            Duration::from_secs(120),
        )
        .context("creating the fake nodes")?;
        self.wait_for_nodes(tools)?;
        self.ensure_storage(tools)?;
        let server = self.server_version(tools)?;
        if server != tools.kubernetes_version {
            bail!(
                "the API server reports {server}, but the pinned control plane is {}",
                tools.kubernetes_version
            );
        }
        println!(
            "Cluster {:?} is up: Kubernetes {server}, {} Ready KWOK nodes, API server on 127.0.0.1.\n\
             Use it with:\n  export KUBECONFIG={}\n  export PATH={}:$PATH   # kubectl {server}\n  kubectl get nodes",
            self.name,
            self.nodes,
            self.kubeconfig().display(),
            tools.kubectl.parent().unwrap_or(Path::new(".")).display(),
        );
        Ok(())
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
        fs::write(&path, storage_manifest(self.volumes))?;
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
        process::output(
            self.kubectl(tools)
                .args(["apply", "--server-side", "--force-conflicts", "-k"])
                .arg(paths::repo_root().join("config/default")),
            Duration::from_secs(60),
        )
        .context("installing config/default")?;
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

    /// Removes the cluster, its processes and data. Does nothing when there is none.
    pub fn down(&self, tools: &Tools) -> Result<()> {
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

/// The default StorageClass and `count` 100Gi volumes in it (host paths no pod ever mounts:
/// KWOK runs no containers).
fn storage_manifest(count: u32) -> String {
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
             hostPath: {{path: /var/lib/kwok-volumes/local-{i:03}}}\n"
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
        let yaml = storage_manifest(3);
        assert_eq!(yaml.matches("kind: PersistentVolume\n").count(), 3);
        assert!(yaml.contains("storageclass.kubernetes.io/is-default-class: \"true\""));
        assert!(yaml.contains("name: local-002"));
    }

    #[test]
    fn dev_and_test_clusters_do_not_share_state() {
        assert_ne!(Cluster::DEV.kubeconfig(), Cluster::TEST.kubeconfig());
        assert_ne!(Cluster::DEV.state_dir(), Cluster::TEST.state_dir());
    }
}
