//! `cargo xtask up`, the main job: the local cluster, the operator installed as users
//! install it (CRD, RBAC) and running with its ServiceAccount's permissions, the example
//! canvas applied and Ready, and the canvas's services running beside the cluster, so there
//! is a page to draw on.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use pixel_harness::{
    cluster::{Cluster, ENV_APISERVER_PORT},
    operator::Operator,
    paths, process, toolchain,
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

fn state_file(suffix: &str) -> PathBuf {
    paths::cache_dir().join(format!("pixel-playground.operator.{suffix}"))
}

pub fn up(args: &UpArgs) -> Result<()> {
    let tools = toolchain::ensure()?;
    let cluster = Cluster::DEV;
    cluster.up(&tools, args.port)?;
    cluster.install_operator_config(&tools)?;

    // A fresh operator each time, so it runs the code in this checkout.
    Operator::stop_detached(&state_file("pid"))?;
    let kubeconfig = state_file("kubeconfig");
    cluster.write_operator_kubeconfig(&tools, &kubeconfig)?;
    let log = state_file("log");
    let operator = Operator::start(&kubeconfig, &log, &[])?;
    let metrics = format!("http://{}/metrics", operator.addr);
    operator.detach(&state_file("pid"))?;

    let kubectl = |args: &[&str]| {
        process::output(cluster.kubectl(&tools).args(args), Duration::from_secs(240))
    };
    if kubectl(&["get", "namespace", DEMO_NAMESPACE]).is_err() {
        kubectl(&["create", "namespace", DEMO_NAMESPACE])?;
    }
    let example = paths::repo_root().join("examples/canvas.yaml");
    let applied = Instant::now();
    kubectl(&[
        "apply",
        "-n",
        DEMO_NAMESPACE,
        "-f",
        &example.to_string_lossy(),
    ])?;
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pxc/demo",
        "-n",
        DEMO_NAMESPACE,
        "--timeout=180s",
    ])
    .with_context(|| {
        format!(
            "the example canvas did not become Ready; the operator's log is {}",
            log.display()
        )
    })?;
    let took = applied.elapsed();
    // KWOK pods run no containers, so the canvas itself runs beside the cluster.
    let local = crate::dev::start(true)?;

    println!(
        "\nThe example canvas is Ready ({:.1} s from `kubectl apply` to Ready). Try:\n\
         \x20 export KUBECONFIG={}\n\
         \x20 export PATH={}:$PATH\n\
         \x20 kubectl get pxc -n {DEMO_NAMESPACE}\n\
         \x20 kubectl describe pxc demo -n {DEMO_NAMESPACE}\n\
         \x20 kubectl get all,pvc -n {DEMO_NAMESPACE}\n\
         \x20 kubectl patch pxc demo -n {DEMO_NAMESPACE} --type merge -p '{{\"spec\":{{\"api\":{{\"replicas\":3}}}}}}'\n\
         The operator runs in the background: log {}, metrics {metrics}.\n\
         Draw at {} (redis-server and the three services, beside the cluster).\n\
         `cargo xtask cluster down` stops them all and removes the cluster.",
        took.as_secs_f64(),
        cluster.kubeconfig().display(),
        tools
            .kubectl
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        log.display(),
        local.url,
    );
    Ok(())
}

/// Stops the operator `up` left running.
pub fn stop_operator() -> Result<()> {
    Operator::stop_detached(&state_file("pid"))
}
