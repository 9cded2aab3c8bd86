//! `cargo xtask up`, the main job: the local cluster with its real node, the images built
//! here and imported into the node, the operator running in the cluster as users install it
//! (`kubectl apply -k config/default`), the example canvas applied and Ready with every pod
//! a container on the real node, and the URL to draw at through the Ingress controller.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use pixel_harness::{
    cluster::{Cluster, DEV_INGRESS_PORT, ENV_APISERVER_PORT, OPERATOR_NAMESPACE},
    images, paths, process, toolchain,
};

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Port for kube-apiserver on 127.0.0.1 (default: a free port chosen at creation).
    #[arg(long, env = ENV_APISERVER_PORT)]
    pub port: Option<u16>,
}

/// `cargo xtask cluster up`: the developer's cluster alone.
pub fn cluster_up(args: &UpArgs) -> Result<()> {
    let tools = toolchain::ensure()?;
    Cluster::DEV.up(&tools, args.port)
}

/// The namespace the example canvas runs in.
const DEMO_NAMESPACE: &str = "pixel-demo";
/// The example canvas's host (`examples/canvas.yaml`).
const DEMO_HOST: &str = "canvas.localtest.me";

pub fn up(args: &UpArgs) -> Result<()> {
    let started = Instant::now();
    // The images need no cluster: they build while the Go tools do (those at the lowest
    // priority, so the image build goes first).
    let toolchain = toolchain::BackgroundBuild::start(false);
    println!("Building the images (cargo xtask image)...");
    let built = images::build_all(&images::output_dir())?;
    let tools = toolchain.wait()?;
    let cluster = Cluster::DEV;
    cluster.up(&tools, args.port)?;
    println!("Importing the images into the real node...");
    for image in &built {
        cluster.load_image(&tools, image)?;
    }
    let redis = images::find(&built, images::REDIS_REPOSITORY)?;

    cluster.place_on_real_node(&tools, OPERATOR_NAMESPACE)?;
    cluster.place_on_real_node(&tools, DEMO_NAMESPACE)?;
    cluster.run_operator_in_cluster(
        &tools,
        &paths::operator_config(),
        &redis.reference,
        images::find(&built, images::APP_REPOSITORY)?,
    )?;

    let kubectl = |args: &[&str]| {
        process::output(cluster.kubectl(&tools).args(args), Duration::from_secs(300))
    };
    let example = paths::repo_root().join("examples/canvas.yaml");
    let applied = Instant::now();
    kubectl(&[
        "apply",
        "-n",
        DEMO_NAMESPACE,
        "-f",
        &example.to_string_lossy(),
    ])?;
    // This cluster's Traefik runs on the host, reaching the node's pods from the host's end
    // of the link: a host-network Ingress controller, which canvas-api's NetworkPolicy
    // admits by address (as a cluster admin would for theirs).
    let host_link = cluster
        .real_node()
        .context("the developer cluster has no real node")?
        .plan()
        .host_link();
    kubectl(&[
        "patch",
        "pxc",
        "demo",
        "-n",
        DEMO_NAMESPACE,
        "--type",
        "merge",
        "-p",
        &format!(
            "{{\"spec\":{{\"networkPolicy\":{{\"ingressControllerCIDRs\":[\"{host_link}/32\"]}}}}}}"
        ),
    ])?;
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pxc/demo",
        "-n",
        DEMO_NAMESPACE,
        "--timeout=240s",
    ])
    .context(
        "the example canvas did not become Ready: `kubectl describe pxc demo -n pixel-demo` \
         and `kubectl get pods -n pixel-demo` tell why",
    )?;
    let took = applied.elapsed();
    let url = format!("http://{DEMO_HOST}:{DEV_INGRESS_PORT}/");

    println!(
        "\nThe example canvas is Ready ({:.0} s from `kubectl apply`, {:.0} s in all). Try:\n\
         \x20 export KUBECONFIG={}\n\
         \x20 export PATH={}:$PATH\n\
         \x20 kubectl get pxc -n {DEMO_NAMESPACE}\n\
         \x20 kubectl get pods -o wide -n {DEMO_NAMESPACE}     # every pod on the real node\n\
         \x20 kubectl exec -n {DEMO_NAMESPACE} deploy/demo-api -- /usr/local/bin/canvas-api --version\n\
         \x20 kubectl logs -n {OPERATOR_NAMESPACE} deploy/pixel-operator\n\
         \x20 kubectl patch pxc demo -n {DEMO_NAMESPACE} --type merge -p '{{\"spec\":{{\"gateway\":{{\"replicas\":3}}}}}}'\n\
         Draw at {url}, served by the Ingress controller on 127.0.0.1:{DEV_INGRESS_PORT}.\n\
         {DEMO_HOST} needs no DNS here; open it with\n\
         \x20 chromium --host-resolver-rules=\"MAP {DEMO_HOST} 127.0.0.1\" {url}\n\
         \x20 curl --resolve {DEMO_HOST}:{DEV_INGRESS_PORT}:127.0.0.1 {url}\n\
         `cargo xtask cluster down` removes it all.",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        cluster.kubeconfig().display(),
        tools
            .kubectl
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    Ok(())
}
