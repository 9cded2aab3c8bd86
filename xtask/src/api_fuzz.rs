//! `cargo xtask api-fuzz`: canvas-api's OpenAPI document fuzzed by schemathesis against a
//! running canvas-api on a real redis-server, both on loopback. Fails on any failed check
//! (5xx, an answer outside the document, a wrong content type, …) and when fewer than
//! [`MIN_REQUESTS`] requests were made, counted from schemathesis's own NDJSON report.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use pixel_common::ports::{
    ENV_API_TOKEN, ENV_CANVAS_COOLDOWN_SECONDS, ENV_CANVAS_HEIGHT, ENV_CANVAS_WIDTH,
    ENV_LISTEN_ADDR, ENV_MODERATOR_TOKEN, ENV_REDIS_URL, READYZ_PATH,
};
use pixel_harness::{
    deps, paths,
    process::{self, free_port},
};

/// The schemathesis release the venv holds; the venv is keyed by it.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// The issue's floor.
const MIN_REQUESTS: u64 = 1000;
/// Test cases per operation and phase: about 2,500 requests over the thirteen operations.
const MAX_EXAMPLES: u32 = 150;
/// The internal token the fuzzed canvas-api requires on placements.
const FUZZ_API_TOKEN: &str = "api-fuzz-internal-token";
/// The moderator token it requires on the moderation API.
const FUZZ_MODERATOR_TOKEN: &str = "api-fuzz-moderator-token";
/// Fixed, so a failure reproduces; schemathesis prints it too.
const SEED: u64 = 20_261_125;
/// A small canvas, so generated coordinates land on it; no cooldown, so placements succeed.
const CANVAS: [(&str, &str); 3] = [
    (ENV_CANVAS_WIDTH, "64"),
    (ENV_CANVAS_HEIGHT, "64"),
    (ENV_CANVAS_COOLDOWN_SECONDS, "0"),
];
/// `since` ahead of the canvas is valid by the document and answered `410 history_gone`, as
/// docs/protocol.md says; schemathesis's positive-data check must count it as accepted.
///
/// A rollback the document allows may still be refused as the document's descriptions say:
/// not exactly one of its two shapes (`400`), an area off this canvas or a version ahead of
/// it (`400`), a point the history no longer reaches (`410`). Unbanning a player without a
/// ban is `404 not_banned`.
///
/// Each operation is fuzzed with the credential its security scheme names (and, by the
/// `ignored_auth` check, without it).
fn schemathesis_config() -> String {
    format!(
        r#"[auth.openapi.internalToken]
bearer = "{FUZZ_API_TOKEN}"

[auth.openapi.moderatorToken]
bearer = "{FUZZ_MODERATOR_TOKEN}"

[[operations]]
include-path = "/api/v1/history"
checks.positive_data_acceptance.expected-statuses = ["2xx", 410]

[[operations]]
include-path = "/api/v1/moderation/rollbacks"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 410]

[[operations]]
include-path-regex = "^/api/v1/moderation/bans/"
include-method = "DELETE"
checks.positive_data_acceptance.expected-statuses = ["2xx", 404]
"#
    )
}

/// `cargo xtask api-fuzz`, also run by `cargo xtask test`.
pub fn run() -> Result<()> {
    deps::ensure_debian_packages(&["python3-venv", "redis-server"])?;
    let schemathesis = ensure_schemathesis()?;
    let api_bin = process::cargo_build(false, &["canvas-api"])?.join("canvas-api");

    let dir = tempfile::Builder::new()
        .prefix("pixel-api-fuzz")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let mut servers = Servers(process::Group::new(Duration::from_secs(10)));
    let redis_port = free_port()?;
    servers.spawn(
        "redis-server",
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path()),
        dir.path(),
    )?;
    servers.wait("redis-server to answer PING", || Ok(redis_pong(redis_port)))?;
    let api_port = free_port()?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    servers.spawn(
        "canvas-api",
        Command::new(&api_bin)
            .env(ENV_LISTEN_ADDR, format!("127.0.0.1:{api_port}"))
            .env(ENV_REDIS_URL, format!("redis://127.0.0.1:{redis_port}"))
            .env(ENV_API_TOKEN, FUZZ_API_TOKEN)
            .env(ENV_MODERATOR_TOKEN, FUZZ_MODERATOR_TOKEN)
            .env("RUST_LOG", "warn")
            .envs(CANVAS),
        dir.path(),
    )?;
    let ready = format!("{api_url}{READYZ_PATH}");
    servers
        .wait("canvas-api to be ready", || {
            Ok(ureq::get(&ready).call().is_ok())
        })
        .with_context(|| format!("see {}", dir.path().join("canvas-api.log").display()))?;

    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, schemathesis_config())?;
    let reports = dir.path().join("reports");
    let ndjson = reports.join("events.ndjson");
    let mut cmd = Command::new(&schemathesis);
    cmd.current_dir(dir.path())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{api_url}/api/v1/openapi.json")])
        .args(["--checks", "all"])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", &SEED.to_string()])
        // No --max-time: with it, fuzzing repeats until the time is spent.
        .args(["--request-timeout", "10"])
        .args(["--report", "junit,ndjson"])
        .arg("--report-dir")
        .arg(&reports)
        .arg("--report-ndjson-path")
        .arg(&ndjson)
        .env("NO_COLOR", "1")
        // Loopback only, whatever proxy the environment names.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    println!("== schemathesis {SCHEMATHESIS_VERSION} against canvas-api at {api_url}");
    let out = process::output_unchecked(&mut cmd, Duration::from_secs(1200))?;
    let report = String::from_utf8_lossy(&out.stdout);
    servers.0.check_running()?;
    if !out.status.success() {
        bail!(
            "schemathesis found failures ({}); canvas-api's log: {}\n{report}{}",
            out.status,
            dir.path().join("canvas-api.log").display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut events = String::new();
    File::open(&ndjson)
        .and_then(|mut file| file.read_to_string(&mut events))
        .with_context(|| format!("cannot read schemathesis's report {}", ndjson.display()))?;
    let tally = Tally::from_ndjson(&events)?;
    println!("{}", report.trim_end());
    let server_errors: u64 = tally
        .statuses
        .iter()
        .filter(|(status, _)| **status >= 500)
        .map(|(_, count)| count)
        .sum();
    if server_errors > 0 || tally.unanswered > 0 {
        bail!(
            "{server_errors} answers were 5xx and {} requests got no answer: {:?}",
            tally.unanswered,
            tally.statuses
        );
    }
    if tally.requests < MIN_REQUESTS {
        bail!(
            "schemathesis made {} requests, fewer than the {MIN_REQUESTS} required",
            tally.requests
        );
    }
    println!(
        "api-fuzz: {} requests, every check passed; answers by status: {:?}",
        tally.requests, tally.statuses
    );
    Ok(())
}

/// The venv with the pinned schemathesis, made once per machine; returns its executable.
fn ensure_schemathesis() -> Result<PathBuf> {
    let venv = paths::cache_dir().join(format!("schemathesis-{SCHEMATHESIS_VERSION}"));
    let exe = venv.join("bin/schemathesis");
    let marker = venv.join(".installed");
    if marker.exists() && exe.exists() {
        return Ok(exe);
    }
    if venv.exists() {
        // A half-made venv from an interrupted install.
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    // Debian's interpreter, whose venv module python3-venv provides.
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    println!(
        "Installing schemathesis {SCHEMATHESIS_VERSION} into {}",
        venv.display()
    );
    process::run(
        Command::new(python).args(["-m", "venv"]).arg(&venv),
        Duration::from_secs(300),
    )?;
    process::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")),
        Duration::from_secs(900),
    )
    .context("cannot install schemathesis from PyPI")?;
    let version = process::output(Command::new(&exe).arg("--version"), Duration::from_secs(60))?;
    if !version.contains(SCHEMATHESIS_VERSION) {
        bail!("the venv's schemathesis says `{}`", version.trim());
    }
    File::create(&marker)?.write_all(SCHEMATHESIS_VERSION.as_bytes())?;
    Ok(exe)
}

/// A PING over RESP on a short-lived connection.
fn redis_pong(port: u16) -> bool {
    let answer = || -> std::io::Result<bool> {
        let mut stream =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    answer().unwrap_or(false)
}

/// The processes this run started (stopped when dropped, also on error).
struct Servers(process::Group);

impl Servers {
    fn spawn(&mut self, name: &'static str, cmd: &mut Command, log_dir: &Path) -> Result<()> {
        self.0
            .spawn(name, cmd, &log_dir.join(format!("{name}.log")))
            .map(drop)
    }

    /// Polls `done` for 30 s at most, failing early when a server exits.
    fn wait(&mut self, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done()? {
            self.0.check_running()?;
            if Instant::now() >= deadline {
                bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// What schemathesis sent and got, from its NDJSON events: each finished scenario lists its
/// interactions (one request and its response, or none when the request failed).
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    requests: u64,
    unanswered: u64,
    statuses: BTreeMap<u16, u64>,
}

impl Tally {
    fn from_ndjson(events: &str) -> Result<Self> {
        let mut tally = Self::default();
        for (number, line) in events.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let event: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("line {} of the NDJSON report", number + 1))?;
            let Some(interactions) = event
                .pointer("/ScenarioFinished/recorder/interactions")
                .and_then(serde_json::Value::as_object)
            else {
                continue;
            };
            for interaction in interactions.values() {
                tally.requests += 1;
                match interaction
                    .pointer("/response/status_code")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|status| u16::try_from(status).ok())
                {
                    Some(status) => *tally.statuses.entry(status).or_default() += 1,
                    None => tally.unanswered += 1,
                }
            }
        }
        Ok(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_from_finished_scenarios() {
        let events = r#"{"Initialize": {"seed": 1}}
{"ScenarioStarted": {"id": "a"}}
{"ScenarioFinished": {"phase": "examples", "status": "skip", "recorder": {"label": "GET /x"}}}
{"ScenarioFinished": {"recorder": {"label": "GET /x", "interactions": {"1": {"request": {}, "response": {"status_code": 200}}, "2": {"request": {}, "response": {"status_code": 400}}}}}}
{"ScenarioFinished": {"recorder": {"label": "POST /y", "interactions": {"3": {"request": {}, "response": {"status_code": 200}}, "4": {"request": {}, "response": null}}}}}

"#;
        let tally = Tally::from_ndjson(events).expect("parses");
        assert_eq!(tally.requests, 4);
        assert_eq!(tally.unanswered, 1);
        assert_eq!(tally.statuses, BTreeMap::from([(200, 2), (400, 1)]));
        assert!(Tally::from_ndjson("not json\n").is_err());
    }

    #[test]
    fn pong_needs_a_redis() {
        let port = free_port().expect("a free port");
        assert!(!redis_pong(port));
    }
}
