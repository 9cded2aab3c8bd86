//! The real node's configuration files, as pure functions of its layout: containerd's
//! config, the CNI network, kubelet's and kube-proxy's configurations and CoreDNS's Corefile.

use std::path::Path;

use super::{Layout, plan::AddressPlan};

/// The sandbox ("pause") image kubelet 1.36 and containerd 2.4 expect.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.2";

/// The label and taint that mark the real node: only pods that tolerate the taint run there
/// (the namespaces of `cargo xtask up` and the real-pods suite get both by default), so the
/// scale tests keep landing on the KWOK nodes.
pub const NODE_LABEL: (&str, &str) = ("pixel-playground.dev/node", "real");
pub const NODE_TAINT: (&str, &str) = ("pixel-playground.dev/real-node", "true");

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// containerd 2.x (config version 3): everything under the node's own directories, the CRI
/// runtime with Debian's runc and the CNI plugins.
pub fn containerd_config(layout: &Layout, runc: &Path, cni_bin: &Path) -> String {
    let root = layout.node_dir.join("containerd");
    let state = layout.run_dir.join("containerd");
    let opt = layout.node_dir.join("containerd-opt");
    let socket = layout.containerd_socket();
    let cni_conf = layout.cni_conf_dir();
    format!(
        r#"# Written by pixel-harness for the local cluster's real node.
version = 3
root = "{root}"
state = "{state}"
# Snapshotters and services the node does not use (and NRI, which opens /var/run/nri).
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
imports = []

[plugins."io.containerd.server.v1.grpc"]
  address = "{socket}"
[plugins."io.containerd.server.v1.ttrpc"]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "{opt}/image-verifier/bin"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.cri.v1.runtime"]
  # This machine's root lacks CAP_SYS_RESOURCE: lowering oom_score_adj is refused, so only
  # ever raise it.
  restrict_oom_score_adj = true
  # Pod network namespaces under the node's run directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_criu = false
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
"#,
        root = root.display(),
        state = state.display(),
        socket = socket.display(),
        opt = opt.display(),
        runc = runc.display(),
        cni_bin = cni_bin.display(),
        cni_conf = cni_conf.display(),
    )
}

/// The pod network: a bridge in the node's namespace, addresses from the node's /24, and no
/// masquerading (nothing leaves the machine).
pub fn cni_network(layout: &Layout, plan: &AddressPlan) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": layout.cni_network_name(),
        "plugins": [
            {
                "type": "bridge",
                "bridge": Layout::BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": layout.node_dir.join("cni/ipam"),
                    "ranges": [[{
                        "subnet": plan.real_pods(),
                        "gateway": plan.bridge_gateway().to_string(),
                    }]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    }))
    .expect("JSON")
}

/// kubelet on a cgroup v1 host (cgroupfs driver, everything under the cluster's own cgroup),
/// trusting the cluster CA for client certificates (kube-apiserver's, for logs and exec),
/// registered with the real node's taint.
pub fn kubelet_config(layout: &Layout, plan: &AddressPlan, client_ca: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
address: {node_ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {client_ca}}}
authorization: {{mode: Webhook}}
clusterDNS: [{node_ip}]
clusterDomain: {CLUSTER_DOMAIN}
resolvConf: ""
containerRuntimeEndpoint: unix://{socket}
failSwapOn: false
podLogsDir: {pod_logs}
maxPods: 60
registerWithTaints:
- {{key: {taint_key}, value: "{taint_value}", effect: NoSchedule}}
evictionHard: {{memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}}
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
"#,
        cgroup_root = layout.cgroup_root(),
        node_ip = plan.node_ip(),
        client_ca = client_ca.display(),
        socket = layout.containerd_socket().display(),
        pod_logs = layout.node_dir.join("pod-logs").display(),
        taint_key = NODE_TAINT.0,
        taint_value = NODE_TAINT.1,
    )
}

/// kube-proxy in nftables mode, leaving the host's conntrack settings alone.
pub fn kube_proxy_config(layout: &Layout, plan: &AddressPlan) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kubeconfig}}}
hostnameOverride: {node}
mode: nftables
clusterCIDR: {pods}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {{maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"#,
        kubeconfig = layout.node_kubeconfig().display(),
        node = layout.node_name,
        pods = plan.real_pods(),
    )
}

/// CoreDNS answering for the cluster domain on the node's address; every other name is
/// refused (nothing is forwarded off the machine).
pub fn corefile(layout: &Layout, plan: &AddressPlan) -> String {
    format!(
        r#"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
  bind {node_ip}
  errors
  kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
    kubeconfig {kubeconfig}
    pods insecure
  }}
  cache 30
}}
.:53 {{
  bind {node_ip}
  errors
}}
"#,
        node_ip = plan.node_ip(),
        kubeconfig = layout.node_kubeconfig().display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(
            "pixel-playground-test",
            Path::new("/cache/clusters/pixel-playground-test"),
        )
    }

    #[test]
    fn containerd_keeps_everything_in_the_nodes_directories() {
        let config = containerd_config(
            &layout(),
            Path::new("/usr/sbin/runc"),
            Path::new("/usr/lib/cni"),
        );
        assert!(
            config.contains("root = \"/cache/clusters/pixel-playground-test/node/containerd\"")
        );
        assert!(
            config.contains("state = \"/run/pixel-playground/pixel-playground-test/containerd\"")
        );
        assert!(config.contains("restrict_oom_score_adj = true"));
        assert!(config.contains("netns_mounts_under_state_dir = true"));
        assert!(config.contains(&format!("sandbox = \"{PAUSE_IMAGE}\"")));
        assert!(!config.contains("/var/lib/containerd") && !config.contains("/opt/containerd"));
    }

    #[test]
    fn cni_network_uses_the_nodes_subnet_without_masquerade() {
        let plan = AddressPlan::new(1);
        let network: serde_json::Value =
            serde_json::from_str(&cni_network(&layout(), &plan)).expect("JSON");
        let bridge = &network["plugins"][0];
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "198.18.1.0/24");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], "198.18.1.1");
        assert_eq!(network["name"], "pixel-playground-test");
    }

    #[test]
    fn kubelet_is_tainted_and_trusts_the_cluster_ca() {
        let config = kubelet_config(&layout(), &AddressPlan::new(1), Path::new("/pki/ca.crt"));
        assert!(config.contains("failCgroupV1: false"));
        assert!(config.contains("cgroupDriver: cgroupfs"));
        assert!(config.contains("cgroupRoot: /pixel-playground-test"));
        assert!(config.contains("clientCAFile: /pki/ca.crt"));
        assert!(config.contains("address: 198.19.255.6"));
        assert!(config.contains("key: pixel-playground.dev/real-node"));
        assert!(config.contains("anonymous: {enabled: false}"));
    }

    #[test]
    fn dns_serves_the_cluster_domain_and_forwards_nothing() {
        let corefile = corefile(&layout(), &AddressPlan::new(1));
        assert!(corefile.contains("kubernetes cluster.local"));
        assert!(corefile.contains("bind 198.19.255.6"));
        assert!(!corefile.contains("forward"));
    }
}
