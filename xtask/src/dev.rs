//! The canvas on this machine, without Kubernetes: redis-server and the three services on
//! loopback, in the foreground: the loop without a cluster (`cargo xtask up` runs the canvas
//! in the cluster instead).
//!
//! The page is served on the frontend's well-known port and calls canvas-api and the gateway
//! on theirs (`pixel_common::ports`), so both allow the page's origin (CORS and the
//! WebSocket Origin check): in a cluster the Ingress puts all three on one origin instead.

use std::{
    fs::{self, File},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use pixel_common::ports::{
    self, CANVAS_API as API_PORT, ENV_API_TOKEN, ENV_API_URL, ENV_CANVAS_COOLDOWN_SECONDS,
    ENV_CANVAS_HEIGHT, ENV_CANVAS_WIDTH, ENV_CORS_ALLOWED_ORIGINS, ENV_IDENTITY_KEY,
    ENV_LISTEN_ADDR, ENV_PUBLIC_API_URL, ENV_PUBLIC_WS_URL, ENV_REDIS_URL, ENV_WS_ALLOWED_ORIGINS,
    FRONTEND as FRONTEND_PORT, GATEWAY as GATEWAY_PORT, READYZ_PATH, WS_PATH,
};
use pixel_harness::{cluster::ensure_port_free, deps, paths, process, redis};

/// The page's origins as a browser on this machine names them.
fn page_origins() -> String {
    format!("http://127.0.0.1:{FRONTEND_PORT},http://localhost:{FRONTEND_PORT}")
}

/// Canvas settings for local play: the example's size, no cooldown.
const CANVAS_ENV: [(&str, &str); 3] = [
    (ENV_CANVAS_WIDTH, "500"),
    (ENV_CANVAS_HEIGHT, "500"),
    (ENV_CANVAS_COOLDOWN_SECONDS, "0"),
];

fn dir() -> PathBuf {
    paths::cache_dir().join("dev")
}

/// The running services.
#[derive(Debug)]
pub struct Local {
    children: Vec<(&'static str, Child)>,
    pub url: String,
}

/// Builds and starts everything.
fn start() -> Result<Local> {
    deps::ensure_debian_packages(&["redis-server"])?;
    for port in [FRONTEND_PORT, API_PORT, GATEWAY_PORT] {
        ensure_port_free(port)?;
    }
    process::cargo_build(false, &["canvas-api", "gateway", "frontend"])?;
    let data = dir().join("redis");
    fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let redis_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let bin = |name: &str| paths::repo_root().join("target/debug").join(name);
    // The gateway's credential for placements, new every run: the page's origin reaches
    // canvas-api too, and must not be able to place through it. The identity key is kept,
    // so identities survive a restart of the loop.
    let random = || {
        use rand::distr::{Alphanumeric, SampleString};
        Alphanumeric.sample_string(&mut rand::rng(), 48)
    };
    let api_token = random();
    let key_file = dir().join("identity-key");
    let identity_key = match fs::read_to_string(&key_file) {
        Ok(key) if key.trim().len() >= 32 => key.trim().to_owned(),
        _ => {
            let key = random();
            fs::write(&key_file, &key)
                .with_context(|| format!("cannot write {}", key_file.display()))?;
            key
        }
    };

    let mut local = Local {
        children: Vec::new(),
        url: format!("http://127.0.0.1:{FRONTEND_PORT}/"),
    };
    let mut spawn = |name: &'static str, cmd: &mut Command| -> Result<()> {
        let log = File::create(dir().join(format!("{name}.log")))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = process::spawn(cmd)?;
        local.children.push((name, child));
        Ok(())
    };
    spawn(
        "redis-server",
        Command::new("redis-server").args(redis::server_args(redis_port, &data)),
    )?;
    redis::wait_until_answering(redis_port, || Ok(()))
        .with_context(|| format!("see {}", dir().join("redis-server.log").display()))?;
    spawn(
        "canvas-api",
        Command::new(bin("canvas-api"))
            .env(ENV_LISTEN_ADDR, format!("127.0.0.1:{API_PORT}"))
            .env(ENV_REDIS_URL, &redis_url)
            .env(ENV_CORS_ALLOWED_ORIGINS, page_origins())
            .env(ENV_API_TOKEN, &api_token)
            .envs(CANVAS_ENV),
    )?;
    spawn(
        "gateway",
        Command::new(bin("gateway"))
            .env(ENV_LISTEN_ADDR, format!("127.0.0.1:{GATEWAY_PORT}"))
            .env(ENV_REDIS_URL, &redis_url)
            .env(ENV_API_URL, format!("http://127.0.0.1:{API_PORT}"))
            .env(ENV_WS_ALLOWED_ORIGINS, page_origins())
            .env(ENV_API_TOKEN, &api_token)
            .env(ENV_IDENTITY_KEY, &identity_key)
            .envs(CANVAS_ENV),
    )?;
    spawn(
        "frontend",
        Command::new(bin("frontend"))
            .env(ENV_LISTEN_ADDR, format!("127.0.0.1:{FRONTEND_PORT}"))
            .env(
                ENV_PUBLIC_API_URL,
                format!("http://127.0.0.1:{API_PORT}/api/v1"),
            )
            .env(
                ENV_PUBLIC_WS_URL,
                format!("ws://127.0.0.1:{GATEWAY_PORT}{WS_PATH}"),
            ),
    )?;
    for port in [API_PORT, GATEWAY_PORT, FRONTEND_PORT] {
        wait_ready(port)?;
    }
    Ok(local)
}

fn wait_ready(port: u16) -> Result<()> {
    let url = format!("http://127.0.0.1:{port}{READYZ_PATH}");
    process::wait_until(&format!("{url} to answer"), Duration::from_secs(30), || {
        Ok(ureq::get(&url).call().is_ok())
    })
    .with_context(|| format!("the logs are in {}", dir().display()))
}

/// `cargo xtask dev`: runs until Ctrl-C or SIGTERM (then stops every process gracefully)
/// or until one of them exits (then stops the others).
pub fn dev() -> Result<()> {
    let (stop, stopped) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop.send(());
    })
    .context("cannot handle Ctrl-C")?;
    let mut local = start()?;
    println!(
        "Open {} to draw. Logs: {}. Stop with Ctrl-C.\n\
         canvas-api http://127.0.0.1:{API_PORT}{}, gateway ws://127.0.0.1:{GATEWAY_PORT}{WS_PATH}",
        local.url,
        ports::API_INFO_PATH,
        dir().display()
    );
    let exited = loop {
        if stopped.recv_timeout(Duration::from_millis(250)).is_ok() {
            break None;
        }
        if let Some((name, status)) = local.children.iter_mut().find_map(|(name, child)| {
            child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (*name, status))
        }) {
            break Some((name, status));
        }
    };
    // Services first, Redis last, each given time to drain.
    for (name, child) in local.children.iter_mut().rev() {
        if !process::terminate(child, Duration::from_secs(15))? {
            eprintln!("{name} did not stop within 15 s; it was killed");
        }
    }
    match exited {
        Some((name, status)) => bail!(
            "{name} exited ({status}); see {}",
            dir().join(format!("{name}.log")).display()
        ),
        None => {
            println!("Stopped.");
            Ok(())
        }
    }
}
