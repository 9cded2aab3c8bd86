//! The Redis StatefulSet exactly as the operator renders it, run on a real `redis-server`: the
//! password from the rendered Secret is required, the dangerous commands are gone, and the
//! append-only file is on. Also the rendered NetworkPolicy, matched against the labels of the
//! rendered pods.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Container, PodTemplateSpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::Resource;
use pixel_common::{ports, testing::free_port};
use pixel_operator::{
    api::{PixelCanvas, PixelCanvasSpec},
    children::{
        Child, Component, Credentials, Defaults, Desired, IdentityKeys, Inputs, Names,
        PASSWORD_KEY, desired, naming,
    },
};
use redis::{RedisError, Value, aio::MultiplexedConnection};
use serde_json::json;
use tokio::process::{Child as Process, Command};

/// Generous bound for redis-server to start; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(30);

/// Not the alphanumeric kind the operator generates: a referenced Secret may hold any text, so
/// spaces, quotes, a `$(...)` and a `--flag` must all reach Redis as one intact password.
const PASSWORD: &str = "pa ss'w\"rd $(NOT_A_VAR) --port 1";

/// The Redis pod's data volume (the volumeClaimTemplate), whose mount is Redis's `--dir`.
const DATA_VOLUME: &str = "data";

fn canvas(name: &str, spec: serde_json::Value) -> PixelCanvas {
    let mut canvas = PixelCanvas::new(
        name,
        serde_json::from_value::<PixelCanvasSpec>(spec).expect("valid spec"),
    );
    canvas.meta_mut().namespace = Some("art".to_owned());
    canvas.meta_mut().uid = Some(format!("{name}-uid"));
    canvas
}

fn render(canvas: &PixelCanvas) -> Desired {
    let credentials = Credentials {
        redis_password: PASSWORD.to_owned(),
        api_token: "internal-token-0123456789".to_owned(),
        identity: IdentityKeys {
            current: "identity-key-0123456789-0123456789".to_owned(),
            ..IdentityKeys::default()
        },
        moderator_token: "moderator-token-0123456789".to_owned(),
        oidc_client_secret: String::new(),
    };
    desired(&Inputs::new(canvas, credentials, &Defaults::default()).expect("context"))
}

fn pod_templates(d: &Desired) -> Vec<&PodTemplateSpec> {
    d.apply
        .iter()
        .filter_map(|child| match child {
            Child::StatefulSet(s) => Some(&s.spec.as_ref()?.template),
            Child::Deployment(d) => Some(&d.spec.as_ref()?.template),
            _ => None,
        })
        .collect()
}

/// The one container of the one StatefulSet: Redis.
fn redis_container(d: &Desired) -> &Container {
    let sets: Vec<_> = d
        .apply
        .iter()
        .filter_map(|child| match child {
            Child::StatefulSet(s) => Some(s),
            _ => None,
        })
        .collect();
    let [set] = sets.as_slice() else {
        panic!("expected one StatefulSet, got {}", sets.len())
    };
    let pod = set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let [container] = pod.containers.as_slice() else {
        panic!("expected one container in the Redis pod")
    };
    assert_eq!(container.name, "redis");
    container
}

/// A key of a Secret the operator renders.
fn secret_value(d: &Desired, name: &str, key: &str) -> String {
    let secret = d
        .apply
        .iter()
        .find_map(|child| match child {
            Child::Secret(s) if s.metadata.name.as_deref() == Some(name) => Some(s),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the operator renders no Secret {name}"));
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .unwrap_or_else(|| panic!("Secret {name} has no key {key}"));
    String::from_utf8(bytes.0.clone()).expect("a UTF-8 password")
}

/// The container's environment as the kubelet builds it: literal values, and Secret keys read
/// from the rendered Secrets (a missing one fails, as `optional: false` makes the pod fail).
fn environment(container: &Container, d: &Desired) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let from_secret = var
                .value_from
                .as_ref()
                .and_then(|source| source.secret_key_ref.as_ref());
            let value = match (&var.value, from_secret) {
                (Some(value), None) => value.clone(),
                (None, Some(r)) => secret_value(d, &r.name, &r.key),
                _ => panic!("env {} has a source this test cannot resolve", var.name),
            };
            (var.name.clone(), value)
        })
        .collect()
}

/// Kubernetes' expansion of `command` and `args`: `$(VAR)` becomes the variable's value when
/// it is defined and stays as written when not, `$$` is a literal `$`, and substituted values
/// are not expanded again.
fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&rest[at..at + end + 3]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value after `flag`, which must appear exactly once.
fn value_of<'a>(argv: &'a mut [String], flag: &str) -> &'a mut String {
    let at: Vec<usize> = argv
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == flag)
        .map(|(i, _)| i)
        .collect();
    let [at] = at.as_slice() else {
        panic!("{flag} appears {} times in {argv:?}", at.len())
    };
    argv.get_mut(at + 1)
        .unwrap_or_else(|| panic!("{flag} has no value"))
}

/// A `redis-server` on a free loopback port, killed when dropped.
#[derive(Debug)]
struct Server {
    process: Process,
    port: u16,
    log: PathBuf,
    /// The command line it runs, after the kubelet's expansion and the local rewrites.
    argv: Vec<String>,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Runs the Redis container of `d` as the kubelet would, with only the rewrites that
    /// running on this machine instead of in its pod requires.
    async fn rendered(d: &Desired) -> Self {
        let container = redis_container(d);
        let env = environment(container, d);
        let mut argv: Vec<String> = container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .map(|arg| expand(arg, &env))
            .collect();
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == DATA_VOLUME)
            .expect("the data volume is mounted")
            .mount_path
            .clone();
        Self::start(argv.as_mut_slice(), &env, |argv, port, data| {
            // In the pod Redis has its network namespace to itself; here 6379 may be taken (a
            // developer's Redis, a parallel test), so a free port stands in.
            let listen = value_of(argv, "--port");
            assert_eq!(*listen, ports::REDIS.to_string());
            *listen = port.to_string();
            // `--dir` is where the PVC is mounted, which does not exist here; a temporary
            // directory stands in for the volume.
            let dir = value_of(argv, "--dir");
            assert_eq!(*dir, mount);
            *dir = data.to_str().expect("UTF-8 temp path").to_owned();
        })
        .await
    }

    /// Stock redis-server, to compare command tables with.
    async fn stock() -> Self {
        let mut argv =
            ["redis-server", "--port", "0", "--dir", "", "--save", ""].map(str::to_owned);
        Self::start(&mut argv, &BTreeMap::new(), |argv, port, data| {
            *value_of(argv, "--port") = port.to_string();
            *value_of(argv, "--dir") = data.to_str().expect("UTF-8 temp path").to_owned();
        })
        .await
    }

    async fn start(
        argv: &mut [String],
        env: &BTreeMap<String, String>,
        rewrite: impl FnOnce(&mut [String], u16, &Path),
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pixel-redis-security-")
            .tempdir()
            .expect("temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data directory");
        let port = free_port();
        rewrite(argv, port, &data);
        let mut argv = argv.to_vec();
        // Added: in the pod, listening on every interface means the pod's own; here it would
        // be the host's. Loopback only; with a password set this changes no access rule.
        argv.extend(["--bind", "127.0.0.1"].map(str::to_owned));
        let log = dir.path().join("redis.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let process = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{}` ({e}): this test needs a real Redis; install the Debian \
                     package `redis-server` (apt-get install redis-server)",
                    argv[0]
                )
            });
        let mut server = Self {
            process,
            port,
            log,
            argv,
            data,
            _dir: dir,
        };
        server.wait_until_listening().await;
        server
    }

    async fn wait_until_listening(&mut self) {
        let started = tokio::time::Instant::now();
        loop {
            if let Some(status) = self.process.try_wait().expect("poll redis-server") {
                panic!(
                    "redis-server exited ({status}) at start; its log:\n{}",
                    self.log_text()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "redis-server did not listen on port {} in time; its log:\n{}",
                self.port,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connection that has not authenticated.
    async fn connect(&self) -> MultiplexedConnection {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).expect("client");
        tokio::time::timeout(PATIENCE, client.get_multiplexed_async_connection())
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// The value of a flag on the command line it runs.
    fn flag(&self, flag: &str) -> String {
        value_of(&mut self.argv.clone(), flag).clone()
    }
}

async fn query<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    args: &[&str],
) -> Result<T, RedisError> {
    redis::cmd(args[0]).arg(&args[1..]).query_async(conn).await
}

/// Unknown (renamed away) or denied by an ACL: either way the command does not run.
fn refused(error: &RedisError) -> bool {
    let text = error.to_string().to_lowercase();
    error.code() == Some("NOPERM")
        || text.contains("unknown command")
        || text.contains("unknown redis command")
        || text.contains("no permissions")
}

/// The `field:value` lines of an INFO reply.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':'))
        .map(str::to_owned)
}

#[tokio::test]
async fn the_rendered_redis_wants_the_secrets_password_and_has_no_dangerous_commands() {
    let c = canvas("demo", json!({}));
    let d = render(&c);
    let password = secret_value(&d, &Names::new("demo").redis_secret(), PASSWORD_KEY);
    assert_eq!(password, PASSWORD);
    let server = Server::rendered(&d).await;
    let mut conn = server.connect().await;

    for command in [&["SET", "canvas", "v"][..], &["GET", "canvas"], &["PING"]] {
        let error = query::<Value>(&mut conn, command)
            .await
            .expect_err("refused without the password");
        assert_eq!(error.code(), Some("NOAUTH"), "{command:?}: {error}");
    }
    let error = query::<()>(&mut conn, &["AUTH", "not-the-password"])
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(error.code(), Some("WRONGPASS"), "{error}");
    let error = query::<()>(&mut conn, &["AUTH", &PASSWORD[..PASSWORD.len() - 1]])
        .await
        .expect_err("a truncated password is refused");
    assert_eq!(error.code(), Some("WRONGPASS"), "{error}");
    let error = query::<Value>(&mut conn, &["GET", "canvas"])
        .await
        .expect_err("still unauthenticated after a wrong password");
    assert_eq!(error.code(), Some("NOAUTH"), "{error}");

    query::<()>(&mut conn, &["AUTH", &password])
        .await
        .expect("the Secret's password is accepted");
    query::<()>(&mut conn, &["SET", "canvas", "pixels"])
        .await
        .expect("SET");
    let got: String = query(&mut conn, &["GET", "canvas"]).await.expect("GET");
    assert_eq!(got, "pixels");

    let dangerous: [&[&str]; 4] = [
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["CONFIG", "GET", "*"],
        &["DEBUG", "SLEEP", "0"],
    ];
    for command in dangerous {
        let error = query::<Value>(&mut conn, command)
            .await
            .expect_err("refused even when authenticated");
        assert!(refused(&error), "{command:?}: {error}");
        // Lua runs commands by name inside the server, past any client-side name.
        let script = format!("return redis.call('{}')", command.join("','"));
        let error = query::<Value>(&mut conn, &["EVAL", &script, "0"])
            .await
            .expect_err("refused from a script too");
        assert!(refused(&error), "{script}: {error}");
    }
    let got: String = query(&mut conn, &["GET", "canvas"]).await.expect("GET");
    assert_eq!(got, "pixels", "the data survived every attempt");

    // A command renamed to anything but "" would still be reachable by whoever guesses the
    // name: compare the command table with a stock server's.
    let stock = Server::stock().await;
    let stock_commands: BTreeSet<String> = query(&mut stock.connect().await, &["COMMAND", "LIST"])
        .await
        .expect("COMMAND LIST");
    let commands: BTreeSet<String> = query(&mut conn, &["COMMAND", "LIST"])
        .await
        .expect("COMMAND LIST");
    let extra: Vec<_> = commands.difference(&stock_commands).collect();
    assert!(
        extra.is_empty(),
        "commands under non-standard names: {extra:?}"
    );
    for command in dangerous {
        let name = command[0].to_lowercase();
        assert!(
            stock_commands.contains(&name),
            "the stock server has {name}, so its absence here means something"
        );
        assert!(!commands.contains(&name), "{name} is still in the table");
    }

    // The append-only file is on and already holds the acknowledged write.
    let info: String = query(&mut conn, &["INFO", "persistence"])
        .await
        .expect("INFO");
    assert_eq!(
        info_field(&info, "aof_enabled").as_deref(),
        Some("1"),
        "{info}"
    );
    assert_eq!(
        info_field(&info, "aof_last_write_status").as_deref(),
        Some("ok"),
        "{info}"
    );
    let aof_dir = server.data.join("appendonlydir");
    let mut aof = Vec::new();
    for entry in std::fs::read_dir(&aof_dir).expect("Redis 7 keeps its AOF in appendonlydir") {
        let path = entry.expect("dir entry").path();
        if path.to_string_lossy().ends_with(".incr.aof") {
            aof.extend(std::fs::read(&path).expect("read AOF"));
        }
    }
    assert!(
        aof.windows(b"pixels".len()).any(|w| w == b"pixels"),
        "the SET is not in the AOF under {}",
        aof_dir.display()
    );
    // Without CONFIG, no reply reports the fsync policy; what can be checked is that the
    // flag carries the spec's policy (the default) and that the real server started with it.
    assert_eq!(server.flag("--appendfsync"), "everysec");
    assert_eq!(server.flag("--appendonly"), "yes");

    // A full Redis refuses writes rather than outgrowing its container: the real server
    // runs with half the default 512Mi limit as its maxmemory, and evicts nothing.
    let memory: String = query(&mut conn, &["INFO", "memory"]).await.expect("INFO");
    assert_eq!(
        info_field(&memory, "maxmemory").as_deref(),
        Some("268435456"),
        "{memory}"
    );
    assert_eq!(
        info_field(&memory, "maxmemory_policy").as_deref(),
        Some("noeviction"),
        "{memory}"
    );
}

#[tokio::test]
async fn redis_runs_with_each_append_fsync_policy_of_the_spec() {
    for (policy, redis_name) in [
        ("Always", "always"),
        ("EverySecond", "everysec"),
        ("Never", "no"),
    ] {
        let c = canvas("demo", json!({"redis": {"appendFsync": policy}}));
        let server = Server::rendered(&render(&c)).await;
        assert_eq!(server.flag("--appendfsync"), redis_name, "{policy}");
        let mut conn = server.connect().await;
        query::<()>(&mut conn, &["AUTH", PASSWORD])
            .await
            .expect("AUTH");
        let info: String = query(&mut conn, &["INFO", "persistence"])
            .await
            .expect("INFO");
        assert_eq!(
            info_field(&info, "aof_enabled").as_deref(),
            Some("1"),
            "{policy}: {info}"
        );
    }
}

/// Whether a selector selects a pod with these labels (the Kubernetes semantics).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown operator {other}"),
        }
    });
    by_labels && by_expressions
}

/// Which of these pods (canvas-component, from their labels) a selector selects.
fn selected(selector: &LabelSelector, pods: &[BTreeMap<String, String>]) -> BTreeSet<String> {
    pods.iter()
        .filter(|labels| selects(selector, labels))
        .map(|labels| {
            format!(
                "{}-{}",
                labels[naming::LABEL_INSTANCE],
                labels[naming::LABEL_COMPONENT]
            )
        })
        .collect()
}

// Complements the unit test `only_api_and_gateway_pods_reach_redis`, which checks the
// selectors' fields: here they are matched against the labels of the pods the operator
// renders, for this canvas and for another one in the same namespace.
#[tokio::test]
async fn the_network_policy_admits_only_this_canvas_api_and_gateway_to_redis() {
    let demo = render(&canvas("demo", json!({})));
    let other = render(&canvas("other", json!({})));
    let pods: Vec<BTreeMap<String, String>> = pod_templates(&demo)
        .into_iter()
        .chain(pod_templates(&other))
        .map(|t| {
            t.metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .expect("pod labels")
        })
        .collect();
    assert_eq!(pods.len(), 8, "four components of two canvases");
    let policies: Vec<_> = demo
        .apply
        .iter()
        .filter_map(|child| match child {
            // Redis's policy (canvas-api has one of its own, tested in children/tests.rs).
            Child::NetworkPolicy(p) if child.name() == "demo-redis" => Some(p),
            _ => None,
        })
        .collect();
    let [policy] = policies.as_slice() else {
        panic!(
            "expected one NetworkPolicy for Redis, got {}",
            policies.len()
        )
    };
    let spec = policy.spec.as_ref().expect("spec");
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
    let redis_pods = selected(spec.pod_selector.as_ref().expect("podSelector"), &pods);
    assert_eq!(
        redis_pods,
        BTreeSet::from([format!("demo-{}", Component::Redis.as_str())])
    );

    let [rule] = spec.ingress.as_deref().expect("ingress rules") else {
        panic!("expected one ingress rule")
    };
    let [peer] = rule.from.as_deref().expect("from") else {
        panic!("expected one peer")
    };
    // A namespaceSelector would admit pods of other namespaces, an ipBlock any address.
    assert_eq!(peer.namespace_selector, None);
    assert_eq!(peer.ip_block, None);
    let clients = selected(peer.pod_selector.as_ref().expect("peer podSelector"), &pods);
    assert_eq!(
        clients,
        BTreeSet::from([
            format!("demo-{}", Component::Api.as_str()),
            format!("demo-{}", Component::Gateway.as_str()),
        ])
    );

    let [port] = rule.ports.as_deref().expect("ports") else {
        panic!("expected one port")
    };
    assert_eq!(port.port, Some(IntOrString::Int(i32::from(ports::REDIS))));
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(port.end_port, None);
    // ...which is the port Redis listens on.
    let container = redis_container(&demo);
    let mut args = container.args.clone().expect("args");
    assert_eq!(*value_of(&mut args, "--port"), ports::REDIS.to_string());
    assert_eq!(
        container
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect::<Vec<_>>(),
        vec![i32::from(ports::REDIS)]
    );
}

#[test]
fn expansion_follows_the_kubelet() {
    let env = BTreeMap::from([("PW".to_owned(), "a $(PW) b".to_owned())]);
    assert_eq!(expand("$(PW)", &env), "a $(PW) b");
    assert_eq!(expand("x$(PW)y", &env), "xa $(PW) by");
    assert_eq!(expand("$$(PW)", &env), "$(PW)");
    assert_eq!(expand("$(UNSET)", &env), "$(UNSET)");
    assert_eq!(expand("$PW $(PW", &env), "$PW $(PW");
}
