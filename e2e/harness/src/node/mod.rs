//! The real node: kubelet, containerd with Debian's runc and CNI plugins, kube-proxy,
//! kube-router's NetworkPolicy controller and CoreDNS, joined to a local cluster so canvas
//! pods run as real containers beside the KWOK nodes.
//!
//! Everything the node does to the network happens in its own network namespace (named
//! after the cluster): the pod bridge, the pods' veths, kube-proxy's nftables tables and
//! kube-router's iptables chains and ipsets. The host keeps only a veth link into it, a
//! route to the node's pods and one nftables rule that forwards kube-apiserver's port from
//! the link's host end to kube-apiserver on 127.0.0.1, so the control plane still listens
//! on loopback only. [`RealNode::stop`] removes all of it; [`RealNode::leftovers`] lists
//! whatever is still there.

pub mod plan;
pub mod render;
mod teardown;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{deps, process, toolchain::Tools};
use plan::AddressPlan;

/// Debian packages the node runs on: runc, the CNI plugins, and the tools kube-proxy
/// (nft), kube-router (iptables, ipset) and the set-up (ip, nsenter) call.
const DEBIAN_PACKAGES: [&str; 7] = [
    "runc",
    "containernetworking-plugins",
    "nftables",
    "iptables",
    "ipset",
    "iproute2",
    "util-linux",
];
const RUNC: &str = "/usr/sbin/runc";
const CNI_BIN: &str = "/usr/lib/cni";

/// Where the node's files, sockets and cgroups live.
#[derive(Debug, Clone)]
pub struct Layout {
    pub cluster: String,
    pub node_name: String,
    /// Persistent state: containerd's images and snapshots, kubelet's root, configs, logs.
    pub node_dir: PathBuf,
    /// Runtime state: sockets, containerd's state, pod network namespaces.
    pub run_dir: PathBuf,
}

impl Layout {
    /// The pod bridge inside the node's network namespace.
    pub const BRIDGE: &str = "pxbr0";

    pub fn new(cluster: &str, cluster_state_dir: &Path) -> Self {
        Self {
            cluster: cluster.to_owned(),
            node_name: format!("{cluster}-node"),
            node_dir: cluster_state_dir.join("node"),
            run_dir: Path::new("/run/pixel-playground").join(cluster),
        }
    }

    pub fn netns(&self) -> &str {
        &self.cluster
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.netns())
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.run_dir.join("containerd.sock")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.node_dir.join("cni/net.d")
    }

    pub fn cni_network_name(&self) -> &str {
        &self.cluster
    }

    /// kubelet's cgroup root, in every cgroup v1 hierarchy.
    pub fn cgroup_root(&self) -> String {
        format!("/{}", self.cluster)
    }

    /// A kubeconfig for the node's processes: the admin credentials, with the server
    /// reached through the link (they run in the node's network namespace).
    pub fn node_kubeconfig(&self) -> PathBuf {
        self.node_dir.join("kubeconfig")
    }

    fn log(&self, program: &str) -> PathBuf {
        self.node_dir.join("logs").join(format!("{program}.log"))
    }

    fn pid_file(&self, program: &str) -> PathBuf {
        self.node_dir.join("pids").join(format!("{program}.pid"))
    }
}

/// The node's processes, in start order.
const PROGRAMS: [&str; 5] = [
    "containerd",
    "kubelet",
    "kube-proxy",
    "kube-router",
    "coredns",
];

/// One cluster's real node.
#[derive(Debug, Clone)]
pub struct RealNode {
    layout: Layout,
    plan: AddressPlan,
}

/// What the node needs from the control plane.
#[derive(Debug)]
pub struct ControlPlane<'a> {
    /// The admin kubeconfig (server on 127.0.0.1).
    pub kubeconfig: &'a Path,
    /// The cluster CA, which signed kube-apiserver's client certificate.
    pub ca_cert: &'a Path,
    pub apiserver_port: u16,
}

impl RealNode {
    pub fn new(cluster: &str, cluster_state_dir: &Path, plan: AddressPlan) -> Self {
        Self {
            layout: Layout::new(cluster, cluster_state_dir),
            plan,
        }
    }

    pub fn name(&self) -> &str {
        &self.layout.node_name
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn plan(&self) -> &AddressPlan {
        &self.plan
    }

    fn host_veth(&self) -> String {
        format!("pxh{}", self.plan.slot())
    }

    fn node_veth(&self) -> String {
        format!("pxn{}", self.plan.slot())
    }

    fn nft_table(&self) -> String {
        self.layout.cluster.clone()
    }

    /// Whether every node process runs.
    pub fn is_running(&self) -> bool {
        PROGRAMS.iter().all(|program| self.program_runs(program))
    }

    fn program_runs(&self, program: &str) -> bool {
        fs::read_to_string(self.layout.pid_file(program))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| {
                fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| cmdline.contains(program))
            })
    }

    /// Starts the node (or keeps a running one) and waits until it is Ready. `pause` is the
    /// sandbox image's archive, imported before kubelet starts.
    pub fn start(
        &self,
        tools: &Tools,
        control_plane: &ControlPlane<'_>,
        pause: &Path,
    ) -> Result<()> {
        if self.is_running() {
            return self.wait_ready(tools, control_plane.kubeconfig);
        }
        // Half a node (a crash, a reboot): start from nothing.
        self.stop()?;
        check_root()?;
        deps::ensure_debian_packages(&DEBIAN_PACKAGES)?;
        println!("Starting the real node {:?}...", self.name());
        for dir in ["logs", "pids", "cni/net.d", "cni/ipam", "pod-logs"] {
            fs::create_dir_all(self.layout.node_dir.join(dir))?;
        }
        fs::create_dir_all(&self.layout.run_dir)?;
        teardown::save_host_sysctls()?;
        self.create_network(control_plane.apiserver_port)?;
        self.create_cgroups()?;
        self.write_configs(control_plane)?;

        self.spawn(
            "containerd",
            &tools.containerd,
            &[
                "--config".into(),
                self.layout.node_dir.join("containerd.toml").into(),
            ],
        )?;
        let socket = self.layout.containerd_socket();
        process::wait_until("containerd to answer", Duration::from_secs(30), || {
            Ok(socket.exists()
                && self
                    .ctr(tools)
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success()))
        })
        .with_context(|| format!("see {}", self.layout.log("containerd").display()))?;
        self.import_image(tools, pause, "registry.k8s.io/pause")?;

        let node_dir = &self.layout.node_dir;
        let kubeconfig = self.layout.node_kubeconfig();
        self.spawn(
            "kubelet",
            &tools.kubelet,
            &[
                "--config".into(),
                node_dir.join("kubelet.yaml").into(),
                "--kubeconfig".into(),
                kubeconfig.clone().into(),
                "--root-dir".into(),
                node_dir.join("kubelet").into(),
                "--cert-dir".into(),
                node_dir.join("kubelet/pki").into(),
                "--hostname-override".into(),
                self.name().into(),
                "--node-ip".into(),
                self.plan.node_ip().to_string().into(),
                "--node-labels".into(),
                format!("{}={}", render::NODE_LABEL.0, render::NODE_LABEL.1).into(),
            ],
        )?;
        // kube-router needs the Node object to exist, so the rest starts once it is Ready.
        self.wait_ready(tools, control_plane.kubeconfig)?;
        self.spawn(
            "kube-proxy",
            &tools.kube_proxy,
            &["--config".into(), node_dir.join("kube-proxy.yaml").into()],
        )?;
        self.spawn(
            "kube-router",
            &tools.kube_router,
            &[
                // Only the NetworkPolicy controller: the bridge plugin routes pods and
                // kube-proxy serves Services.
                "--run-firewall=true".into(),
                "--run-router=false".into(),
                "--run-service-proxy=false".into(),
                "--run-loadbalancer=false".into(),
                "--enable-cni=false".into(),
                "--enable-ipv6=false".into(),
                "--health-port=0".into(),
                "--metrics-port=0".into(),
                "--iptables-sync-period=1m".into(),
                "--kubeconfig".into(),
                kubeconfig.clone().into(),
                "--hostname-override".into(),
                self.name().into(),
            ],
        )?;
        self.spawn(
            "coredns",
            &tools.coredns,
            &["-conf".into(), node_dir.join("Corefile").into()],
        )?;
        // A program that exits at start (a bad flag, a refused setting) fails the start.
        std::thread::sleep(Duration::from_secs(2));
        for program in PROGRAMS {
            if !self.program_runs(program) {
                bail!(
                    "{program} on the real node exited; see {}",
                    self.layout.log(program).display()
                );
            }
        }
        Ok(())
    }

    fn wait_ready(&self, tools: &Tools, kubeconfig: &Path) -> Result<()> {
        let node = format!("node/{}", self.name());
        process::wait_until(
            &format!("the real node {} to be Ready", self.name()),
            Duration::from_secs(120),
            || {
                Ok(process::output(
                    Command::new(&tools.kubectl)
                        .env("KUBECONFIG", kubeconfig)
                        .args([
                            "get",
                            &node,
                            "-o",
                            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                        ]),
                    Duration::from_secs(15),
                )
                .is_ok_and(|status| status.trim() == "True"))
            },
        )
        .with_context(|| {
            format!(
                "see the logs in {}",
                self.layout.node_dir.join("logs").display()
            )
        })
    }

    /// Imports an OCI image archive into the node's containerd (the CRI's `k8s.io`
    /// namespace), naming it `base_name:<tag from the archive>`.
    pub fn import_image(&self, tools: &Tools, archive: &Path, base_name: &str) -> Result<()> {
        process::output(
            self.ctr(tools)
                .args([
                    "--namespace",
                    "k8s.io",
                    "images",
                    "import",
                    "--base-name",
                    base_name,
                ])
                .arg(archive),
            Duration::from_secs(300),
        )
        .with_context(|| format!("importing {} into the real node", archive.display()))?;
        Ok(())
    }

    /// `ctr` against the node's containerd.
    pub fn ctr(&self, tools: &Tools) -> Command {
        let mut cmd = Command::new(&tools.ctr);
        cmd.arg("--address").arg(self.layout.containerd_socket());
        cmd
    }

    /// Runs `program` in the node's network namespace, detached (its own process group, so
    /// it outlives the command that started it), with its pid and log in the node's directory.
    fn spawn(&self, program: &str, binary: &Path, args: &[std::ffi::OsString]) -> Result<()> {
        let log = fs::File::create(self.layout.log(program))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.layout.netns_path().display()))
            .arg("--")
            .arg(binary)
            .args(args)
            .current_dir(&self.layout.node_dir)
            // containerd finds its shim on PATH; kube-proxy and kube-router call nft,
            // iptables and ipset.
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    binary.parent().unwrap_or(Path::new("/")).display()
                ),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = process::spawn(&mut cmd)?;
        fs::write(self.layout.pid_file(program), child.id().to_string())?;
        Ok(())
    }

    /// The namespace, the link, the host's route to the pods, and the rule that forwards
    /// kube-apiserver's port from the link to loopback.
    fn create_network(&self, apiserver_port: u16) -> Result<()> {
        let (host, node) = (self.host_veth(), self.node_veth());
        let netns = self.layout.netns();
        let host_ip = format!("{}/{}", self.plan.host_link(), AddressPlan::LINK_PREFIX);
        let node_ip = format!("{}/{}", self.plan.node_ip(), AddressPlan::LINK_PREFIX);
        let route_localnet = format!("net.ipv4.conf.{host}.route_localnet=1");
        let host_steps: Vec<Vec<&str>> = vec![
            vec!["ip", "netns", "add", netns],
            vec![
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &node,
            ],
            vec!["ip", "link", "set", &node, "netns", netns],
            vec!["ip", "addr", "add", &host_ip, "dev", &host],
            vec!["ip", "link", "set", &host, "up"],
            // Packets DNATed to 127.0.0.1 may arrive on (and answer through) this link only.
            vec!["sysctl", "-qw", &route_localnet],
        ];
        let node_steps: Vec<Vec<&str>> = vec![
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", &node_ip, "dev", &node],
            vec!["ip", "link", "set", &node, "up"],
            // Between the pod bridge and the link; there is no default route, so nothing
            // is forwarded anywhere else.
            vec!["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            // NetworkPolicy rules see traffic between pods on the same bridge.
            vec!["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        ];
        for step in host_steps {
            run_step(Command::new(step[0]).args(&step[1..]))?;
        }
        for step in node_steps {
            run_step(
                Command::new("ip")
                    .args(["netns", "exec", netns])
                    .args(&step),
            )?;
        }
        let pods = self.plan.real_pods();
        let via = self.plan.node_ip().to_string();
        run_step(Command::new("ip").args(["route", "add", &pods, "via", &via, "dev", &host]))?;
        let rules = format!(
            "table ip {table} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             iifname \"{host}\" ip daddr {link} tcp dport {apiserver_port} dnat to 127.0.0.1:{apiserver_port}\n  }}\n}}\n",
            table = self.nft_table(),
            link = self.plan.host_link(),
        );
        let rules_file = self.layout.node_dir.join("host.nft");
        fs::write(&rules_file, rules)?;
        run_step(Command::new("nft").arg("-f").arg(&rules_file))
    }

    /// kubelet's cgroup root in every v1 hierarchy (it must exist); cpuset needs its CPUs
    /// and memory nodes before any task may join.
    fn create_cgroups(&self) -> Result<()> {
        let root = self.layout.cgroup_root();
        for hierarchy in teardown::cgroup_hierarchies()? {
            let dir = hierarchy.join(root.trim_start_matches('/'));
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            if hierarchy.ends_with("cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = fs::read_to_string(hierarchy.join(file))?;
                    fs::write(dir.join(file), value.trim())?;
                }
            }
        }
        Ok(())
    }

    fn write_configs(&self, control_plane: &ControlPlane<'_>) -> Result<()> {
        let layout = &self.layout;
        let dir = &layout.node_dir;
        fs::write(
            dir.join("containerd.toml"),
            render::containerd_config(layout, Path::new(RUNC), Path::new(CNI_BIN)),
        )?;
        fs::write(
            layout.cni_conf_dir().join("10-pixel.conflist"),
            render::cni_network(layout, &self.plan),
        )?;
        fs::write(
            dir.join("kubelet.yaml"),
            render::kubelet_config(layout, &self.plan, control_plane.ca_cert),
        )?;
        fs::write(
            dir.join("kube-proxy.yaml"),
            render::kube_proxy_config(layout, &self.plan),
        )?;
        fs::write(dir.join("Corefile"), render::corefile(layout, &self.plan))?;
        let admin = fs::read_to_string(control_plane.kubeconfig)
            .with_context(|| format!("cannot read {}", control_plane.kubeconfig.display()))?;
        let loopback = format!("https://127.0.0.1:{}", control_plane.apiserver_port);
        if !admin.contains(&loopback) {
            bail!(
                "{} does not name the API server at {loopback}",
                control_plane.kubeconfig.display()
            );
        }
        let through_link = format!(
            "https://{}:{}",
            self.plan.host_link(),
            control_plane.apiserver_port
        );
        fs::write(
            layout.node_kubeconfig(),
            admin.replace(&loopback, &through_link),
        )?;
        Ok(())
    }

    /// Stops every node process and pod, and removes the namespace, the link, the route,
    /// the nftables table, the cgroups, the mounts and the runtime directory. Idempotent.
    pub fn stop(&self) -> Result<()> {
        teardown::stop(self)
    }

    /// What the node left on this machine: empty once [`RealNode::stop`] has run.
    pub fn leftovers(&self) -> Vec<String> {
        teardown::leftovers(self)
    }
}

fn run_step(cmd: &mut Command) -> Result<()> {
    process::output(cmd, Duration::from_secs(30)).map(drop)
}

fn check_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the real node needs root (network namespaces, cgroups, mounts): run as root, \
             or use `cargo xtask dev` for the canvas without a cluster"
        );
    }
    Ok(())
}
pub use teardown::host_sysctls;
