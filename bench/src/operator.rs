//! The operator benchmarks, on a cluster of their own (`pixel-playground-bench`: 24 KWOK
//! nodes, 1,040 volumes) started for the run and removed after it, with a release build of
//! the operator run as the ServiceAccount `config/` installs:
//!
//! - `operator-apply`: `kubectl apply` of examples/canvas.yaml until every child is applied,
//!   against `kubectl apply --server-side` of those same objects into another namespace, the
//!   floor of API round trips. Both sides start one kubectl.
//! - `operator-scale`: 500 canvases applied at once until all are Ready, the operator's peak
//!   RSS and its API requests (per canvas, and by verb); then a fresh operator resyncs all
//!   500 and must make no mutating request. Then the control plane's own floor: the
//!   canvases are deleted, and the same 500 canvases' children, as the operator made them,
//!   are applied at once with `kubectl apply --server-side` (no operator) into a fresh
//!   namespace until every workload reports ready.
//!
//! The control plane is not pinned: kwokctl starts it, and it is the same for both sides.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use pixel_common::operator_contract::metrics;
use pixel_harness::{
    children::{self, items},
    cluster::Cluster,
    operator::Operator,
    paths, process, toolchain,
};

use crate::{
    procfs::status_kib,
    report::BenchResult,
    run::BenchCtx,
    stats::{self, per_round},
};

/// The issue's targets.
const APPLY_TARGET_RATIO: f64 = 1.5;
const SCALE_CANVASES: usize = 500;
const SCALE_LIMIT_S: f64 = 120.0;
/// At most this many times the control plane's floor for the same children.
const SCALE_FLOOR_RATIO: f64 = 1.2;
/// API requests the operator may send per canvas created, every verb counted.
const REQUESTS_PER_CANVAS_LIMIT: f64 = 20.0;
/// kubectl processes applying the floor's children side by side ("at once").
const FLOOR_KUBECTLS: usize = 8;
const RSS_LIMIT_MIB: f64 = 100.0;
/// How long the scale run may go on past its limit before it is reported as unfinished.
const SCALE_GIVE_UP: Duration = Duration::from_secs(420);
const MUTATING_VERBS: [&str; 4] = ["create", "update", "patch", "delete"];
const ALL_VERBS: [&str; 7] = [
    "get", "watch", "create", "update", "patch", "delete", "other",
];

/// The bench cluster with the operator's RBAC installed.
pub struct Stage {
    tools: toolchain::Tools,
    cluster: Cluster,
    operator_bin: PathBuf,
    operator_kubeconfig: PathBuf,
    log_dir: PathBuf,
}

impl Stage {
    /// Starts the bench cluster afresh (one left by an aborted run is removed first) and
    /// builds the release operator.
    pub fn start(log_dir: &Path) -> Result<Self> {
        let tools = toolchain::ensure()?;
        let cluster = Cluster::BENCH;
        cluster.down(&tools)?;
        cluster.up(&tools, None)?;
        cluster.install_operator_config(&tools)?;
        let operator_kubeconfig = log_dir.join("operator-bench.kubeconfig");
        cluster.write_operator_kubeconfig(&tools, &operator_kubeconfig)?;
        Ok(Self {
            operator_bin: Operator::build(true)?,
            tools,
            cluster,
            operator_kubeconfig,
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// Removes the bench cluster.
    pub fn stop(self) -> Result<()> {
        self.cluster.down(&self.tools)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_within(args, Duration::from_secs(300))
    }

    fn kubectl_within(&self, args: &[&str], limit: Duration) -> Result<String> {
        process::output(self.cluster.kubectl(&self.tools).args(args), limit)
    }

    fn operator(&self, log_name: &str) -> Result<Operator> {
        // One replica: no lease to renew, so every request it makes is the reconciler's.
        Operator::start_binary(
            &self.operator_bin,
            &self.operator_kubeconfig,
            &self.log_dir.join(log_name),
            &["--leader-elect", "false"],
        )
    }

    fn fresh_namespace(&self, name: &str) -> Result<()> {
        self.kubectl(&[
            "delete",
            "namespace",
            name,
            "--ignore-not-found",
            "--wait=false",
        ])?;
        process::wait_until(
            &format!("namespace {name} to be gone"),
            Duration::from_secs(180),
            || {
                Ok(self
                    .kubectl(&["get", "namespace", name, "--ignore-not-found", "-o", "name"])?
                    .trim()
                    .is_empty())
            },
        )?;
        self.kubectl(&["create", "namespace", name]).map(drop)
    }
}

/// `operator-apply`: one canvas, operator vs server-side apply of its children.
pub fn operator_apply(ctx: &BenchCtx, stage: &Stage) -> Result<BenchResult> {
    println!("\n== operator-apply");
    let operator = stage.operator("operator-apply.log")?;
    let log = stage.log_dir.join("operator-apply.log");
    let example = paths::repo_root().join("examples/canvas.yaml");
    let children_file = stage.log_dir.join("operator-apply-children.json");
    let mut ours_ms = Vec::new();
    let mut floor_ms = Vec::new();
    let mut expected = 0;
    for round in 0..ctx.rounds {
        // Noise on the machine should hit both sides: alternate which goes first (the
        // floor needs the objects, so the first round starts with the operator).
        let operator_first = round % 2 == 0;
        for side in [operator_first, !operator_first] {
            if side {
                let namespace = format!("bench-apply-{round}");
                stage.fresh_namespace(&namespace)?;
                let started = SystemTime::now();
                stage.kubectl(&["apply", "-n", &namespace, "-f", &example.to_string_lossy()])?;
                if expected == 0 {
                    // The first round learns how many children a canvas has.
                    stage.kubectl(&[
                        "wait",
                        "--for=condition=Ready",
                        "pxc",
                        "--all",
                        "-n",
                        &namespace,
                        "--timeout=180s",
                    ])?;
                    let children = children(stage, &namespace)?;
                    expected = children.len();
                    std::fs::write(
                        &children_file,
                        serde_json::to_string(&children_list(children))?,
                    )?;
                }
                let done = process::wait_until_value(
                    "the operator to apply every child",
                    Duration::from_secs(120),
                    || last_new_child_applied(&log, &namespace, expected),
                )?;
                ours_ms.push(millis_between(started, done)?);
                stage.kubectl(&["delete", "namespace", &namespace, "--wait=false"])?;
            } else {
                let namespace = format!("bench-floor-{round}");
                stage.fresh_namespace(&namespace)?;
                let started = Instant::now();
                stage.kubectl(&[
                    "apply",
                    "--server-side",
                    "--field-manager",
                    "bench-floor",
                    "-n",
                    &namespace,
                    "-f",
                    &children_file.to_string_lossy(),
                ])?;
                floor_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                stage.kubectl(&["delete", "namespace", &namespace, "--wait=false"])?;
            }
        }
        println!(
            "  round {}: operator {:.0} ms, server-side apply {:.0} ms ({expected} objects)",
            round + 1,
            ours_ms.last().copied().unwrap_or(f64::NAN),
            floor_ms.last().copied().unwrap_or(f64::NAN)
        );
    }
    operator.stop()?;
    let mut row = BenchResult::new(
        "operator-apply",
        &format!(
            "ms from `kubectl apply` of examples/canvas.yaml to all {expected} children applied"
        ),
        median(&ours_ms)?,
        &format!("kubectl apply --server-side of the same {expected} objects"),
        median(&floor_ms)?,
        None,
        ctx.rounds,
    )
    .at_most(APPLY_TARGET_RATIO);
    row.details = vec![
        format!(
            "per round, operator ms: {}",
            per_round(ours_ms.iter().copied())
        ),
        format!(
            "per round, server-side apply ms: {}",
            per_round(floor_ms.iter().copied())
        ),
        "the operator's side ends at its log line for the last child's apply; the floor's \
         when kubectl exits"
            .to_owned(),
    ];
    Ok(row)
}

/// `operator-scale`: 500 canvases at once, then a resync that must write nothing.
pub fn operator_scale(stage: &Stage) -> Result<Vec<BenchResult>> {
    println!("\n== operator-scale ({SCALE_CANVASES} canvases)");
    const NAMESPACE: &str = "bench-scale";
    stage.fresh_namespace(NAMESPACE)?;
    let manifest = stage.log_dir.join("operator-scale.yaml");
    std::fs::write(&manifest, scale_manifest(SCALE_CANVASES))?;
    let operator = stage.operator("operator-scale.log")?;
    let started = Instant::now();
    stage.kubectl(&[
        "apply",
        "--server-side",
        "-n",
        NAMESPACE,
        "-f",
        &manifest.to_string_lossy(),
    ])?;
    let mut ready = 0;
    while started.elapsed() < SCALE_GIVE_UP {
        ready = ready_canvases(stage, NAMESPACE)?;
        if ready == SCALE_CANVASES {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mib = peak_rss_mib(operator.pid())?;
    let verbs = requests_by_verb(&operator)?;
    operator.stop()?;
    println!(
        "  {ready} of {SCALE_CANVASES} Ready after {seconds:.1} s; peak RSS {peak_rss_mib:.1} MiB"
    );

    // A fresh operator reconciles every canvas once: with all of them Ready, it must find
    // nothing to change.
    let resync = stage.operator("operator-resync.log")?;
    let reconciled = process::wait_until_value(
        "the fresh operator to reconcile every canvas",
        Duration::from_secs(300),
        || {
            let count = resync
                .metric(&format!(
                    "{}{{result=\"ok\"}}",
                    metrics::counter(metrics::RECONCILES)
                ))?
                .unwrap_or(0.0);
            Ok((count >= SCALE_CANVASES as f64).then_some(count))
        },
    )?;
    let resync_verbs = requests_by_verb(&resync)?;
    resync.stop()?;
    let mutating: f64 = MUTATING_VERBS
        .iter()
        .map(|verb| {
            resync_verbs
                .iter()
                .find(|(v, _)| v == verb)
                .map_or(0.0, |(_, n)| *n)
        })
        .sum();
    println!("  resync: {reconciled:.0} reconciles, {mutating:.0} mutating requests");

    let floor = control_plane_floor(stage, NAMESPACE)?;

    let finished = ready == SCALE_CANVASES;
    let mut time_row = BenchResult::new(
        "operator-scale-ready",
        &format!("s from applying {SCALE_CANVASES} canvases at once until all are Ready"),
        if finished { seconds } else { f64::INFINITY },
        &format!("limit {SCALE_LIMIT_S:.0} s"),
        SCALE_LIMIT_S,
        None,
        1,
    )
    .at_most(1.0);
    time_row.details = vec![
        format!("{ready} of {SCALE_CANVASES} Ready after {seconds:.1} s"),
        format!("operator API requests by verb: {}", format_verbs(&verbs)),
    ];
    let rss_row = BenchResult::new(
        "operator-scale-rss",
        &format!("operator peak RSS (VmHWM), MiB, {SCALE_CANVASES} canvases"),
        peak_rss_mib,
        &format!("limit {RSS_LIMIT_MIB:.0} MiB"),
        RSS_LIMIT_MIB,
        None,
        1,
    )
    .at_most(1.0);
    let mut resync_row = BenchResult::new(
        "operator-resync-writes",
        &format!(
            "mutating API requests while a fresh operator resyncs {SCALE_CANVASES} Ready canvases"
        ),
        mutating,
        "limit 0",
        0.0,
        None,
        1,
    );
    resync_row.details = vec![
        format!(
            "target zero: {}",
            if mutating == 0.0 { "met" } else { "MISSED" }
        ),
        format!(
            "{reconciled:.0} reconciles; requests by verb: {}",
            format_verbs(&resync_verbs)
        ),
    ];
    let ours_seconds = if finished { seconds } else { f64::INFINITY };
    let mut floor_row = BenchResult::new(
        "operator-scale-vs-floor",
        &format!("s from applying {SCALE_CANVASES} canvases at once until all are Ready"),
        ours_seconds,
        &format!(
            "s for `kubectl apply --server-side` of their {} children at once until all {} \
             workloads are ready",
            floor.objects, floor.workloads
        ),
        floor.seconds,
        None,
        1,
    )
    .at_most(SCALE_FLOOR_RATIO);
    floor_row.details = vec![
        format!(
            "floor: {} of {} workloads ready after {:.1} s, {FLOOR_KUBECTLS} kubectl side by side",
            floor.ready, floor.workloads, floor.seconds
        ),
        CONTROL_PLANE_SETTINGS.to_owned(),
    ];
    let requests: f64 = verbs.iter().map(|(_, n)| n).sum();
    let mut requests_row = BenchResult::new(
        "operator-scale-requests",
        "operator API requests per canvas created (every verb)",
        requests / SCALE_CANVASES as f64,
        &format!("limit {REQUESTS_PER_CANVAS_LIMIT:.0}"),
        REQUESTS_PER_CANVAS_LIMIT,
        None,
        1,
    )
    .at_most(1.0);
    requests_row.details = vec![format!(
        "{requests:.0} requests for {SCALE_CANVASES} canvases: {}",
        format_verbs(&verbs)
    )];
    Ok(vec![time_row, floor_row, requests_row, rss_row, resync_row])
}

/// What the bench cluster's control plane runs with: kwokctl's and Kubernetes' defaults
/// but for leader election, so the floor and the operator share these limits.
const CONTROL_PLANE_SETTINGS: &str = "control plane: kube-controller-manager and \
     kube-scheduler at Kubernetes' default client rate limits (controller-manager \
     --kube-api-qps 20, --kube-api-burst 30; scheduler 50/100), one etcd, 24 KWOK nodes";

/// The control plane's floor for `namespace`'s canvases.
struct Floor {
    seconds: f64,
    objects: usize,
    workloads: usize,
    ready: usize,
}

/// Deletes `namespace` (its canvases and, by their owner references, every child), then
/// applies the children it held, as the operator made them, into a fresh namespace with
/// [`FLOOR_KUBECTLS`] `kubectl apply --server-side` side by side, and times it until every
/// Deployment and StatefulSet reports all its replicas ready.
fn control_plane_floor(stage: &Stage, namespace: &str) -> Result<Floor> {
    const FLOOR_NAMESPACE: &str = "bench-scale-floor";
    let objects = children(stage, namespace)?;
    let workloads = objects.iter().filter(|o| is_workload(o)).count();
    println!(
        "  floor: {} children ({workloads} workloads); deleting {namespace} first",
        objects.len()
    );
    stage.kubectl(&["delete", "namespace", namespace, "--wait=false"])?;
    process::wait_until(
        &format!("namespace {namespace} to be gone"),
        Duration::from_secs(900),
        || {
            Ok(stage
                .kubectl(&[
                    "get",
                    "namespace",
                    namespace,
                    "--ignore-not-found",
                    "-o",
                    "name",
                ])?
                .trim()
                .is_empty())
        },
    )?;
    stage.fresh_namespace(FLOOR_NAMESPACE)?;
    let shards = shard_by_canvas(objects.iter().cloned(), FLOOR_KUBECTLS);
    let files = shards
        .into_iter()
        .enumerate()
        .map(|(i, shard)| {
            let file = stage.log_dir.join(format!("operator-scale-floor-{i}.json"));
            std::fs::write(&file, serde_json::to_string(&children_list(shard))?)?;
            Ok(file)
        })
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let applies: Vec<_> = files
            .iter()
            .map(|file| {
                scope.spawn(move || {
                    stage.kubectl_within(
                        &[
                            "apply",
                            "--server-side",
                            "--field-manager",
                            "bench-floor",
                            "-n",
                            FLOOR_NAMESPACE,
                            "-f",
                            &file.to_string_lossy(),
                        ],
                        SCALE_GIVE_UP,
                    )
                })
            })
            .collect();
        applies
            .into_iter()
            .map(|apply| {
                apply
                    .join()
                    .map_err(|_| anyhow::anyhow!("a kubectl thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut ready = 0;
    while started.elapsed() < SCALE_GIVE_UP {
        ready = ready_workloads(stage, FLOOR_NAMESPACE)?;
        if ready == workloads {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("  floor: {ready} of {workloads} workloads ready after {seconds:.1} s");
    stage.kubectl(&["delete", "namespace", FLOOR_NAMESPACE, "--wait=false"])?;
    Ok(Floor {
        seconds: if ready == workloads {
            seconds
        } else {
            f64::INFINITY
        },
        objects: objects.len(),
        workloads,
        ready,
    })
}

fn is_workload(object: &Value) -> bool {
    matches!(object["kind"].as_str(), Some("Deployment" | "StatefulSet"))
}

/// `objects` split into `n` groups, each canvas's children (named `<canvas>-...`) in one
/// group and in their order, so each kubectl applies a canvas's config before its users.
fn shard_by_canvas(objects: impl Iterator<Item = Value>, n: usize) -> Vec<Vec<Value>> {
    let mut canvases: Vec<String> = Vec::new();
    let mut shards = vec![Vec::new(); n];
    for object in objects {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let canvas = name.split('-').next().unwrap_or_default().to_owned();
        let index = match canvases.iter().position(|c| *c == canvas) {
            Some(index) => index,
            None => {
                canvases.push(canvas);
                canvases.len() - 1
            }
        };
        shards[index % n].push(object);
    }
    shards
}

/// Deployments and StatefulSets in `namespace` whose every replica is ready and updated
/// for their current generation.
fn ready_workloads(stage: &Stage, namespace: &str) -> Result<usize> {
    let list: Value = serde_json::from_str(&stage.kubectl(&[
        "get",
        "deployments,statefulsets",
        "-n",
        namespace,
        "-o",
        "json",
    ])?)?;
    Ok(items(&list)
        .filter(|workload| workload_ready(workload))
        .count())
}

fn workload_ready(workload: &Value) -> bool {
    let status = &workload["status"];
    let wanted = workload["spec"]["replicas"].as_i64().unwrap_or(1);
    status["observedGeneration"] == workload["metadata"]["generation"]
        && status["readyReplicas"].as_i64().unwrap_or(0) == wanted
        && status["updatedReplicas"].as_i64().unwrap_or(0) == wanted
}

/// `n` canvases of one replica per component (2,000 pods in all for 500).
fn scale_manifest(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "---\napiVersion: pixel-playground.dev/v1alpha1\nkind: PixelCanvas\n\
                 metadata: {{name: c{i:03}}}\n\
                 spec: {{api: {{replicas: 1}}, gateway: {{replicas: 1}}, frontend: {{replicas: 1}}}}\n"
            )
        })
        .collect()
}

/// Canvases Ready for their current generation.
fn ready_canvases(stage: &Stage, namespace: &str) -> Result<usize> {
    let list: Value =
        serde_json::from_str(&stage.kubectl(&["get", "pxc", "-n", namespace, "-o", "json"])?)?;
    Ok(items(&list)
        .filter(|canvas| {
            let status = &canvas["status"];
            status["observedGeneration"] == canvas["metadata"]["generation"]
                && status["conditions"].as_array().is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .count())
}

/// The children in `namespace`, as the API server holds them.
fn children(stage: &Stage, namespace: &str) -> Result<Vec<Value>> {
    let list: Value =
        serde_json::from_str(&stage.kubectl(&children::get_args(children::KINDS, namespace))?)?;
    Ok(items(&list).cloned().collect())
}

/// The children as a List to apply elsewhere: what was applied, without what the server
/// or other controllers set (status, identity, owner, assigned cluster IPs).
fn children_list(children: Vec<Value>) -> Value {
    let items: Vec<Value> = children.into_iter().map(portable).collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn portable(object: Value) -> Value {
    let mut out = Map::new();
    let Value::Object(fields) = object else {
        return object;
    };
    for (key, value) in fields {
        match key.as_str() {
            "status" => {}
            "metadata" => {
                let mut metadata = Map::new();
                metadata.insert("name".into(), value["name"].clone());
                metadata.insert("labels".into(), value["labels"].clone());
                if let Some(Value::Object(annotations)) = value.get("annotations") {
                    let ours: Map<String, Value> = annotations
                        .iter()
                        .filter(|(k, _)| !k.contains("kubernetes.io/"))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    metadata.insert("annotations".into(), Value::Object(ours));
                }
                out.insert(key, Value::Object(metadata));
            }
            "spec" => {
                let mut spec = value;
                if let Value::Object(spec) = &mut spec {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
                out.insert(key, spec);
            }
            _ => {
                out.insert(key, value);
            }
        }
    }
    Value::Object(out)
}

/// When the operator's log shows the `expected`-th distinct child of `namespace` applied.
fn last_new_child_applied(
    log: &Path,
    namespace: &str,
    expected: usize,
) -> Result<Option<SystemTime>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fields = &entry["fields"];
        if fields["message"] != "applied" || fields["namespace"] != namespace {
            continue;
        }
        seen.insert((fields["kind"].to_string(), fields["name"].to_string()));
        if seen.len() == expected {
            let stamp = entry["timestamp"]
                .as_str()
                .context("log line without timestamp")?;
            let at = jiff::Timestamp::from_str(stamp)
                .with_context(|| format!("bad log timestamp {stamp}"))?;
            return Ok(Some(SystemTime::from(at)));
        }
    }
    Ok(None)
}

fn millis_between(start: SystemTime, end: SystemTime) -> Result<f64> {
    let elapsed = end
        .duration_since(start)
        .context("the operator logged its apply before kubectl started")?;
    Ok(elapsed.as_secs_f64() * 1000.0)
}

/// VmHWM of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status_kib(&status, "VmHWM:").context("no VmHWM in /proc/<pid>/status")?;
    Ok(kib as f64 / 1024.0)
}

fn requests_by_verb(operator: &Operator) -> Result<Vec<(&'static str, f64)>> {
    let mut counts = Vec::new();
    for verb in ALL_VERBS {
        let count = operator
            .metric(&format!(
                "{}{{verb=\"{verb}\"}}",
                metrics::counter(metrics::API_REQUESTS)
            ))?
            .unwrap_or(0.0);
        counts.push((verb, count));
    }
    Ok(counts)
}

fn format_verbs(verbs: &[(&str, f64)]) -> String {
    verbs
        .iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|(verb, n)| format!("{verb} {n:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(values: &[f64]) -> Result<f64> {
    match stats::median(values) {
        Some(m) => Ok(m),
        None => bail!("no rounds measured"),
    }
}

#[cfg(test)]
mod tests {
    use pixel_common::ports::CANVAS_API;

    use super::*;

    #[test]
    fn portable_objects_lose_what_the_server_set() {
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "demo-api", "namespace": "x", "uid": "u", "resourceVersion": "9",
                         "labels": {"a": "b"},
                         "annotations": {"pixel-playground.dev/applied-hash": "h",
                                         "deployment.kubernetes.io/revision": "1"},
                         "ownerReferences": [{"uid": "u"}], "managedFields": []},
            "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"port": CANVAS_API}]},
            "status": {"loadBalancer": {}}
        });
        let out = portable(service);
        assert_eq!(
            out,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "demo-api", "labels": {"a": "b"},
                             "annotations": {"pixel-playground.dev/applied-hash": "h"}},
                "spec": {"ports": [{"port": CANVAS_API}]}
            })
        );
    }

    #[test]
    fn the_last_new_child_marks_the_end() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("op.log");
        let line = |t: &str, ns: &str, kind: &str, name: &str| {
            format!(
                r#"{{"timestamp":"{t}","fields":{{"message":"applied","kind":"{kind}","namespace":"{ns}","name":"{name}"}}}}"#
            )
        };
        let text = [
            line("2026-11-25T20:00:00.100000Z", "a", "Service", "x"),
            line("2026-11-25T20:00:00.200000Z", "b", "Service", "x"),
            line("2026-11-25T20:00:00.300000Z", "a", "Service", "x"),
            "not json".to_owned(),
            line("2026-11-25T20:00:00.400000Z", "a", "Deployment", "x"),
        ]
        .join("\n");
        std::fs::write(&log, text).expect("log written");
        let at = last_new_child_applied(&log, "a", 2)
            .expect("log read")
            .expect("found");
        let expected = SystemTime::from(
            jiff::Timestamp::from_str("2026-11-25T20:00:00.4Z").expect("timestamp"),
        );
        assert_eq!(at, expected);
        assert_eq!(
            last_new_child_applied(&log, "a", 3).expect("log read"),
            None
        );
    }

    #[test]
    fn the_floor_keeps_each_canvas_in_one_shard_in_order() {
        let object = |name: &str| serde_json::json!({"metadata": {"name": name}});
        let objects = [
            "c000-config",
            "c001-config",
            "c000-api",
            "c002-api",
            "c001-api",
        ]
        .map(object);
        let shards = shard_by_canvas(objects.into_iter(), 2);
        let names = |shard: &Vec<Value>| -> Vec<String> {
            shard
                .iter()
                .map(|o| {
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(names(&shards[0]), ["c000-config", "c000-api", "c002-api"]);
        assert_eq!(names(&shards[1]), ["c001-config", "c001-api"]);
    }

    #[test]
    fn a_workload_is_ready_when_every_replica_of_its_generation_is() {
        let workload = |generation: i64, observed: i64, ready: i64| {
            serde_json::json!({
                "metadata": {"generation": generation},
                "spec": {"replicas": 2},
                "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": ready},
            })
        };
        assert!(workload_ready(&workload(1, 1, 2)));
        assert!(!workload_ready(&workload(1, 1, 1)));
        assert!(!workload_ready(&workload(2, 1, 2)));
        assert!(!workload_ready(
            &serde_json::json!({"metadata": {"generation": 1}})
        ));
    }

    #[test]
    fn the_scale_manifest_has_one_document_per_canvas() {
        let manifest = scale_manifest(3);
        assert_eq!(manifest.matches("kind: PixelCanvas").count(), 3);
        assert!(manifest.contains("name: c002"));
    }
}
