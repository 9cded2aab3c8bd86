//! The local cluster's Ingress controller: Traefik on the host, listening on 127.0.0.1 only,
//! serving every standard `networking.k8s.io/v1` Ingress of its default IngressClass (and
//! WebSocket upgrades) by proxying straight to the pods' addresses, which the host routes
//! into the real node's network namespace.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{process, toolchain::Tools};

/// The IngressClass the controller serves, made the cluster's default so Ingresses without
/// a class (the example canvas's) are served.
pub const INGRESS_CLASS: &str = "traefik";
const CONTROLLER: &str = "traefik.io/ingress-controller";

/// Traefik for one cluster: its pid, port and log live in the cluster's state directory.
#[derive(Debug, Clone)]
pub struct IngressController {
    dir: PathBuf,
}

impl IngressController {
    pub fn new(cluster_state_dir: &Path) -> Self {
        Self {
            dir: cluster_state_dir.join("ingress"),
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("traefik.pid")
    }

    fn port_file(&self) -> PathBuf {
        self.dir.join("port")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("traefik.log")
    }

    /// The port it listens on (127.0.0.1), once started.
    pub fn port(&self) -> Option<u16> {
        fs::read_to_string(self.port_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn is_running(&self) -> bool {
        fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| {
                fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| cmdline.contains("traefik"))
            })
    }

    /// Creates the default IngressClass and starts Traefik on 127.0.0.1:`port` (or keeps
    /// the running one); returns once the port accepts connections.
    pub fn start(&self, tools: &Tools, kubeconfig: &Path, port: u16) -> Result<u16> {
        let class = format!(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: {INGRESS_CLASS}\n  \
             annotations:\n    ingressclass.kubernetes.io/is-default-class: \"true\"\nspec:\n  controller: {CONTROLLER}\n"
        );
        fs::create_dir_all(&self.dir)?;
        let class_file = self.dir.join("ingressclass.yaml");
        fs::write(&class_file, class)?;
        process::output(
            Command::new(&tools.kubectl)
                .env("KUBECONFIG", kubeconfig)
                .args(["apply", "--server-side", "-f"])
                .arg(&class_file),
            Duration::from_secs(60),
        )
        .context("creating the IngressClass")?;
        if self.is_running() && self.port() == Some(port) {
            return Ok(port);
        }
        self.stop()?;
        let log = fs::File::create(self.log())?;
        let mut cmd = Command::new(&tools.traefik);
        cmd.args([
            &format!("--entryPoints.web.address=127.0.0.1:{port}"),
            "--providers.kubernetesIngress=true",
            // Ingress status shows where it is served.
            "--providers.kubernetesIngress.ingressEndpoint.ip=127.0.0.1",
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            "--log.level=INFO",
        ])
        .env("KUBECONFIG", kubeconfig)
        .current_dir(&self.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = process::spawn(&mut cmd)?;
        fs::write(self.pid_file(), child.id().to_string())?;
        fs::write(self.port_file(), port.to_string())?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        process::wait_until("Traefik to listen", Duration::from_secs(30), || {
            Ok(TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok())
        })
        .with_context(|| format!("see {}", self.log().display()))?;
        Ok(port)
    }

    /// Stops Traefik if it runs. Idempotent.
    pub fn stop(&self) -> Result<()> {
        process::stop_detached_within(&self.pid_file(), "traefik", Duration::from_secs(10))?;
        let _ = fs::remove_file(self.port_file());
        Ok(())
    }
}
