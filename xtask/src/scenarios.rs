//! End-to-end scenarios that control processes and the control plane, which chainsaw
//! cannot: operators killed and replaced, kube-apiserver restarted. Each runs against the
//! test cluster after the chainsaw suites, in a namespace of its own, and is bounded in time.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use pixel_common::operator_contract::metrics;
use pixel_harness::{
    children::{self, items},
    cluster::Cluster,
    operator::Operator,
    process,
    toolchain::Tools,
};

/// Where a scenario runs: the cluster, the operator's kubeconfig (its ServiceAccount's
/// token, so only the RBAC in `config/` applies) and the directory for logs and manifests.
pub struct Stage<'a> {
    pub tools: &'a Tools,
    pub cluster: &'a Cluster,
    pub operator_kubeconfig: &'a Path,
    pub report_dir: &'a Path,
}

/// The scenarios, by the name `cargo xtask e2e --scenario NAME` takes; `cargo xtask test`
/// runs them all, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// two operators; the leader is killed and the standby takes over
    LeaderFailover,
    /// kube-apiserver restarts under a running operator
    ApiserverRestart,
    /// the operator killed 20 times at random points, then checked for duplicates and drift
    OperatorChaos,
}

impl Scenario {
    /// Its name on the command line and in the test report.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }

    pub fn run(self, stage: &Stage) -> Result<()> {
        match self {
            Self::LeaderFailover => leader_failover(stage),
            Self::ApiserverRestart => apiserver_restart(stage),
            Self::OperatorChaos => operator_chaos(stage),
        }
    }
}

impl Stage<'_> {
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        process::output(
            self.cluster.kubectl(self.tools).args(args),
            Duration::from_secs(150),
        )
    }

    fn kubectl_json(&self, args: &[&str]) -> Result<Value> {
        let text = self.kubectl(args)?;
        serde_json::from_str(&text).context("kubectl printed no JSON")
    }

    /// Applies a manifest written to the report directory (kept there for inspection).
    fn apply(&self, namespace: &str, file_name: &str, manifest: &str) -> Result<()> {
        let path = self.report_dir.join(file_name);
        std::fs::write(&path, manifest)?;
        self.kubectl(&["apply", "-n", namespace, "-f", &path.to_string_lossy()])
            .map(drop)
    }

    fn start_operator(&self, log_name: &str, args: &[&str]) -> Result<Operator> {
        Operator::start(
            self.operator_kubeconfig,
            &self.report_dir.join(log_name),
            args,
        )
    }

    /// A fresh namespace for one scenario (an old one from an aborted run is replaced).
    fn namespace(&self, name: &str) -> Result<()> {
        self.kubectl(&[
            "delete",
            "namespace",
            name,
            "--ignore-not-found",
            "--timeout=90s",
        ])?;
        self.kubectl(&["create", "namespace", name]).map(drop)
    }
}

fn canvas_manifest(name: &str, api_replicas: u32) -> String {
    format!(
        "apiVersion: pixel-playground.dev/v1alpha1\nkind: PixelCanvas\nmetadata: {{name: {name}}}\n\
         spec: {{api: {{replicas: {api_replicas}}}}}\n"
    )
}

/// Two operators with the real RBAC: one leads; it crashes (SIGKILL, so its lease must
/// expire); the standby takes over and reconciles a change made after the crash.
fn leader_failover(stage: &Stage) -> Result<()> {
    const NAMESPACE: &str = "leader-failover";
    let leading = metrics::gauge(metrics::LEADER);
    let lease = ["--lease-duration-seconds", "4"];
    let leader = stage.start_operator("operator-a.log", &lease)?;
    process::wait_until(
        "the first operator to lead",
        Duration::from_secs(60),
        || Ok(leader.metric(&leading)? == Some(1.0)),
    )?;
    let standby = stage.start_operator("operator-b.log", &lease)?;
    ensure!(
        standby.metric(&leading)? == Some(0.0),
        "a second operator leads while the first holds the lease"
    );
    stage.namespace(NAMESPACE)?;
    stage.apply(
        NAMESPACE,
        "leader-failover.yaml",
        &canvas_manifest("fail", 1),
    )?;
    wait_ready(stage, NAMESPACE, "pxc/fail")?;
    leader.kill()?;
    let killed = Instant::now();
    scale_api(stage, NAMESPACE, "fail", 2)?;
    stage
        .kubectl(&[
            "wait",
            "--for=jsonpath={.spec.replicas}=2",
            "deployment/fail-api",
            "-n",
            NAMESPACE,
            "--timeout=120s",
        ])
        .context("the standby did not take over and apply the change")?;
    println!(
        "leader-failover: the standby applied a change {:.1} s after the leader was killed \
         (lease 4 s)",
        killed.elapsed().as_secs_f64()
    );
    ensure!(
        standby.metric(&leading)? == Some(1.0),
        "the standby does not report leading"
    );
    standby.stop()?;
    stage.kubectl(&["delete", "namespace", NAMESPACE, "--wait=false"])?;
    Ok(())
}

/// kube-apiserver restarts under a running operator (its watches break, its lease renewals
/// fail); a change made after the restart is reconciled within 30 s.
fn apiserver_restart(stage: &Stage) -> Result<()> {
    const NAMESPACE: &str = "apiserver-restart";
    let operator = stage.start_operator("operator-apiserver-restart.log", &[])?;
    stage.namespace(NAMESPACE)?;
    stage.apply(
        NAMESPACE,
        "apiserver-restart.yaml",
        &canvas_manifest("restart", 1),
    )?;
    wait_ready(stage, NAMESPACE, "pxc/restart")?;
    stage
        .cluster
        .restart_apiserver(stage.tools, Duration::from_secs(10))?;
    let changed = Instant::now();
    scale_api(stage, NAMESPACE, "restart", 2)?;
    stage
        .kubectl(&[
            "wait",
            "--for=jsonpath={.spec.replicas}=2",
            "deployment/restart-api",
            "-n",
            NAMESPACE,
            "--timeout=30s",
        ])
        .context("the change made after the API server restarted was not reconciled within 30 s")?;
    println!(
        "apiserver-restart: change reconciled {:.1} s after the restarted API server took it",
        changed.elapsed().as_secs_f64()
    );
    wait_ready(stage, NAMESPACE, "pxc/restart")?;
    operator.stop()?;
    stage.kubectl(&["delete", "namespace", NAMESPACE, "--wait=false"])?;
    Ok(())
}

/// Canvases the chaos scenario creates, scales and deletes.
const CHAOS_CANVASES: [&str; 4] = ["chaos-a", "chaos-b", "chaos-c", "chaos-d"];
/// Operators killed, each at a random point of its life.
const CHAOS_KILLS: u32 = 20;

/// Operators killed with SIGKILL at random points (starting, leading, mid-reconcile) while
/// canvases are created, scaled and deleted; then one operator runs to the end. The end
/// state converges: every canvas Ready with its spec applied, every child owned by a live
/// canvas exactly once, no orphans, and no generated password ever replaced.
fn operator_chaos(stage: &Stage) -> Result<()> {
    const NAMESPACE: &str = "operator-chaos";
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    println!("operator-chaos: seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    stage.namespace(NAMESPACE)?;
    // A short lease, so each replacement leads soon after its predecessor is killed.
    let lease = ["--lease-duration-seconds", "2"];
    let mut passwords = BTreeMap::new();
    for kill in 0..CHAOS_KILLS {
        let operator = stage.start_operator("operator-chaos.log", &lease)?;
        let canvases = canvas_specs(stage, NAMESPACE)?;
        let name = CHAOS_CANVASES[rng.usize(..CHAOS_CANVASES.len())];
        let action = match (canvases.contains_key(name), rng.u8(..3)) {
            (false, _) | (true, 0) => {
                let replicas = rng.u32(0..=3);
                stage.apply(
                    NAMESPACE,
                    "operator-chaos.yaml",
                    &canvas_manifest(name, replicas),
                )?;
                format!("apply {name} with {replicas} api replicas")
            }
            (true, 1) => {
                let replicas = rng.u32(0..=3);
                scale_api(stage, NAMESPACE, name, replicas)?;
                format!("scale {name} to {replicas}")
            }
            (true, _) => {
                stage.kubectl(&["delete", "pxc", name, "-n", NAMESPACE, "--wait=false"])?;
                format!("delete {name}")
            }
        };
        std::thread::sleep(Duration::from_millis(rng.u64(0..2500)));
        operator.kill()?;
        record_passwords(stage, NAMESPACE, &mut passwords)?;
        println!("operator-chaos: kill {} after: {action}", kill + 1);
    }
    let operator = stage.start_operator("operator-chaos.log", &lease)?;
    let last_started = Instant::now();
    let converged = process::wait_until(
        "the canvases to converge after the last kill",
        Duration::from_secs(120),
        || Ok(chaos_violations(stage, NAMESPACE)?.is_empty()),
    );
    if converged.is_err() {
        bail!(
            "not converged 120 s after the last kill (seed {seed}): {}",
            chaos_violations(stage, NAMESPACE)?.join("; ")
        );
    }
    let converged_after = last_started.elapsed();
    record_passwords(stage, NAMESPACE, &mut passwords)?;
    operator.stop()?;
    println!(
        "operator-chaos: {} canvases converged {:.1} s after the last of {CHAOS_KILLS} kills",
        canvas_specs(stage, NAMESPACE)?.len(),
        converged_after.as_secs_f64()
    );
    stage.kubectl(&["delete", "namespace", NAMESPACE, "--wait=false"])?;
    Ok(())
}

/// What the chaos scenario needs of each canvas: uid, api replicas, and whether its status
/// is Ready for its current generation.
struct CanvasView {
    uid: String,
    api_replicas: i64,
    ready: bool,
}

fn canvas_specs(stage: &Stage, namespace: &str) -> Result<BTreeMap<String, CanvasView>> {
    let list = stage.kubectl_json(&["get", "pxc", "-n", namespace, "-o", "json"])?;
    let mut canvases = BTreeMap::new();
    for item in items(&list) {
        let generation = item["metadata"]["generation"].as_i64();
        let status = &item["status"];
        let ready = status["observedGeneration"].as_i64() == generation
            && status["conditions"].as_array().is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        canvases.insert(
            text(&item["metadata"]["name"]),
            CanvasView {
                uid: text(&item["metadata"]["uid"]),
                api_replicas: item["spec"]["api"]["replicas"].as_i64().unwrap_or(-1),
                ready,
            },
        );
    }
    Ok(canvases)
}

/// Everything that keeps the namespace from the converged state; empty when converged.
fn chaos_violations(stage: &Stage, namespace: &str) -> Result<Vec<String>> {
    let canvases = canvas_specs(stage, namespace)?;
    let owners: BTreeMap<&str, &str> = canvases
        .iter()
        .map(|(name, view)| (view.uid.as_str(), name.as_str()))
        .collect();
    let children = stage.kubectl_json(&children::get_args(children::KINDS, namespace))?;
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut api_replicas = BTreeMap::new();
    for child in items(&children) {
        let kind = text(&child["kind"]);
        let name = text(&child["metadata"]["name"]);
        let controllers: Vec<&Value> = child["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|owner| owner["controller"] == true)
            .collect();
        let [controller] = controllers.as_slice() else {
            problems.push(format!(
                "{kind} {name} has {} controllers",
                controllers.len()
            ));
            continue;
        };
        let Some(owner) = owners.get(text(&controller["uid"]).as_str()) else {
            problems.push(format!("{kind} {name} is an orphan"));
            continue;
        };
        if name != *owner && !name.starts_with(&format!("{owner}-")) {
            problems.push(format!("{kind} {name} is owned by {owner}"));
        }
        let component = text(&child["metadata"]["labels"]["app.kubernetes.io/component"]);
        if kind == "Deployment" || kind == "StatefulSet" {
            // One workload per component of a canvas: a second would be a duplicate.
            if !seen.insert((owner.to_string(), component.clone())) {
                problems.push(format!("{owner} has two {component} workloads"));
            }
        }
        if kind == "Deployment" && component == "api" {
            api_replicas.insert(owner.to_string(), child["spec"]["replicas"].as_i64());
        }
    }
    for (name, view) in &canvases {
        if !view.ready {
            problems.push(format!("{name} is not Ready for its generation"));
        }
        match api_replicas.get(name) {
            Some(&Some(replicas)) if replicas == view.api_replicas => {}
            other => problems.push(format!(
                "{name}-api has replicas {other:?}, the spec says {}",
                view.api_replicas
            )),
        }
        if !seen.contains(&(name.clone(), "redis".to_owned())) {
            problems.push(format!("{name} has no Redis StatefulSet"));
        }
    }
    Ok(problems)
}

/// Remembers each generated Redis password (by Secret and owner uid) the first time it is
/// seen, and fails if a later look finds it changed: a replaced password would lock the
/// canvas's pods out of its Redis.
fn record_passwords(
    stage: &Stage,
    namespace: &str,
    seen: &mut BTreeMap<(String, String), String>,
) -> Result<()> {
    let secrets = stage.kubectl_json(&children::get_args("secrets", namespace))?;
    for secret in items(&secrets) {
        let owner = secret["metadata"]["ownerReferences"][0]["uid"].to_string();
        let key = (text(&secret["metadata"]["name"]), owner);
        let data = secret["data"].to_string();
        let first = seen.entry(key.clone()).or_insert_with(|| data.clone());
        ensure!(
            *first == data,
            "the generated password in Secret {} changed under operator restarts",
            key.0
        );
    }
    Ok(())
}

fn scale_api(stage: &Stage, namespace: &str, name: &str, replicas: u32) -> Result<()> {
    let patch = format!(r#"{{"spec":{{"api":{{"replicas":{replicas}}}}}}}"#);
    stage
        .kubectl(&[
            "patch", "pxc", name, "-n", namespace, "--type", "merge", "-p", &patch,
        ])
        .map(drop)
}

fn wait_ready(stage: &Stage, namespace: &str, object: &str) -> Result<()> {
    stage
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            object,
            "-n",
            namespace,
            "--timeout=120s",
        ])
        .map(drop)
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}
