//! The pinned Go tools: the Kubernetes control plane and the real node's kubelet and
//! kube-proxy, etcd, KWOK and chainsaw, the node's containerd, CoreDNS, Traefik (the Ingress
//! controller) and kube-router (its NetworkPolicy enforcer), Centrifugo (the peer of the
//! gateway fan-out benchmark, built only when that runs), and kube-score (the peer linter).
//!
//! Each lives in its own Go module under `e2e/toolchain/`, whose go.mod/go.sum are the pins.
//! Binaries are built with the Go toolchain and module proxy only, into the machine cache
//! under a key derived from the pins and the build recipe, so they are rebuilt exactly when
//! a pin changes and a fresh clone reuses them.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::{paths, process};

/// Bump when the way binaries are built changes, to invalidate every cached build.
const RECIPE: &str = "2";

/// Oldest Go that builds the pins (the `go` line of their go.mod files).
const MIN_GO: (u32, u32) = (1, 26);

/// One Go module under `e2e/toolchain/` and the binaries built from it.
#[derive(Debug)]
struct Component {
    /// Directory under `e2e/toolchain/`.
    name: &'static str,
    /// The module whose version is the component's version.
    pinned_module: &'static str,
    /// (Go package, binary name).
    binaries: &'static [(&'static str, &'static str)],
}

const KUBERNETES: Component = Component {
    name: "kubernetes",
    pinned_module: "k8s.io/kubernetes",
    binaries: &[
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        (
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-controller-manager",
        ),
        ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
        ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
        ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
        ("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"),
    ],
};
const ETCD: Component = Component {
    name: "etcd",
    pinned_module: "go.etcd.io/etcd/server/v3",
    binaries: &[("go.etcd.io/etcd/server/v3", "etcd")],
};
const KWOK: Component = Component {
    name: "kwok",
    pinned_module: "sigs.k8s.io/kwok",
    binaries: &[
        ("sigs.k8s.io/kwok/cmd/kwok", "kwok"),
        ("sigs.k8s.io/kwok/cmd/kwokctl", "kwokctl"),
    ],
};
const CHAINSAW: Component = Component {
    name: "chainsaw",
    pinned_module: "github.com/kyverno/chainsaw",
    binaries: &[("github.com/kyverno/chainsaw", "chainsaw")],
};
const CONTAINERD: Component = Component {
    name: "containerd",
    pinned_module: "github.com/containerd/containerd/v2",
    binaries: &[
        (
            "github.com/containerd/containerd/v2/cmd/containerd",
            "containerd",
        ),
        (
            "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
            "containerd-shim-runc-v2",
        ),
        ("github.com/containerd/containerd/v2/cmd/ctr", "ctr"),
    ],
};
/// Built from the module's own `main.go`, which links only the plugins the cluster uses.
const COREDNS: Component = Component {
    name: "coredns",
    pinned_module: "github.com/coredns/coredns",
    binaries: &[("pixel-playground.dev/e2e/toolchain/coredns", "coredns")],
};
const TRAEFIK: Component = Component {
    name: "traefik",
    pinned_module: "github.com/traefik/traefik/v3",
    binaries: &[("github.com/traefik/traefik/v3/cmd/traefik", "traefik")],
};
const KUBE_ROUTER: Component = Component {
    name: "kube-router",
    pinned_module: "github.com/cloudnativelabs/kube-router/v2",
    binaries: &[(
        "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
        "kube-router",
    )],
};
/// What a cluster runs; chainsaw, which only the test suites need, is built apart.
const COMPONENTS: [&Component; 7] = [
    &KUBERNETES,
    &ETCD,
    &KWOK,
    &CONTAINERD,
    &COREDNS,
    &TRAEFIK,
    &KUBE_ROUTER,
];
/// Not in [`COMPONENTS`]: only `cargo xtask bench gateway-fanout` needs it.
const CENTRIFUGO: Component = Component {
    name: "centrifugo",
    pinned_module: "github.com/centrifugal/centrifugo/v6",
    binaries: &[("github.com/centrifugal/centrifugo/v6", "centrifugo")],
};
/// Not in [`COMPONENTS`]: only the sign-in tests need it (zitadel/oidc's example
/// OpenID Connect provider: in-memory users from a file, a login form, PKCE).
const OIDC_PROVIDER: Component = Component {
    name: "oidc-provider",
    pinned_module: "github.com/zitadel/oidc/v3",
    binaries: &[("github.com/zitadel/oidc/v3/example/server", "oidc-provider")],
};
/// Not in [`COMPONENTS`]: only the peer-linter step of the tests needs it.
const KUBE_SCORE: Component = Component {
    name: "kube-score",
    pinned_module: "github.com/zegl/kube-score",
    binaries: &[("github.com/zegl/kube-score/cmd/kube-score", "kube-score")],
};
/// Where each tool's release builds set the version it reports, and whether that version
/// keeps its leading `v`.
const VERSION_VARS: [(&str, &str, bool); 4] = [
    (
        "centrifugo",
        "github.com/centrifugal/centrifugo/v6/internal/build.Version",
        false,
    ),
    (
        "containerd",
        "github.com/containerd/containerd/v2/version.Version",
        true,
    ),
    (
        "traefik",
        "github.com/traefik/traefik/v3/pkg/version.Version",
        true,
    ),
    (
        "kube-router",
        "github.com/cloudnativelabs/kube-router/v2/pkg/version.Version",
        true,
    ),
];

/// Paths of the built tools.
#[derive(Debug)]
pub struct Tools {
    pub kubernetes_version: String,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
    pub etcd: PathBuf,
    pub kwok: PathBuf,
    pub kwokctl: PathBuf,
    pub containerd: PathBuf,
    pub containerd_shim: PathBuf,
    pub ctr: PathBuf,
    pub coredns: PathBuf,
    pub traefik: PathBuf,
    pub kube_router: PathBuf,
}

impl Tools {
    pub fn print(&self) {
        println!("Kubernetes {} tools:", self.kubernetes_version);
        for path in [
            &self.kube_apiserver,
            &self.kube_controller_manager,
            &self.kube_scheduler,
            &self.kubectl,
            &self.kubelet,
            &self.kube_proxy,
            &self.etcd,
            &self.kwok,
            &self.kwokctl,
            &self.containerd,
            &self.containerd_shim,
            &self.ctr,
            &self.coredns,
            &self.traefik,
            &self.kube_router,
        ] {
            println!("  {}", path.display());
        }
    }
}

/// How a build reports while it runs, and when it gives up.
#[derive(Debug, Clone)]
struct Progress {
    /// Time between "N packages compiled" lines.
    every: Duration,
    /// Set by the owner of a background build that no longer wants it.
    cancelled: Arc<AtomicBool>,
    /// Build chainsaw too (for the test suites).
    with_chainsaw: bool,
}

impl Progress {
    fn foreground() -> Self {
        Self {
            every: Duration::from_secs(20),
            cancelled: Arc::new(AtomicBool::new(false)),
            with_chainsaw: false,
        }
    }
}

/// Builds whatever is missing from the cache and returns every tool's path.
pub fn ensure() -> Result<Tools> {
    ensure_with(&Progress::foreground())
}

/// The tools, built on another thread while the caller does other work; their builds run
/// at the lowest CPU priority, so they take only the cores that work leaves idle. Dropping
/// the handle stops the builds.
#[derive(Debug)]
pub struct BackgroundBuild {
    cancelled: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<Tools>>>,
}

impl BackgroundBuild {
    /// `with_chainsaw`: also the test suites' runner, which a cluster does not need.
    pub fn start(with_chainsaw: bool) -> Self {
        let progress = Progress {
            // Quieter than in the foreground: the caller's output runs meanwhile.
            every: Duration::from_secs(120),
            cancelled: Arc::new(AtomicBool::new(false)),
            with_chainsaw,
        };
        let cancelled = Arc::clone(&progress.cancelled);
        let thread = thread::spawn(move || ensure_with(&progress));
        Self {
            cancelled,
            thread: Some(thread),
        }
    }

    /// Waits for the builds to finish.
    pub fn wait(mut self) -> Result<Tools> {
        let thread = self.thread.take().expect("waited once");
        match thread.join() {
            Ok(result) => result,
            Err(_) => bail!("the toolchain build panicked"),
        }
    }
}

impl Drop for BackgroundBuild {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.cancelled.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

fn ensure_with(progress: &Progress) -> Result<Tools> {
    check_go()?;
    let mut dirs = Vec::new();
    for component in COMPONENTS {
        dirs.push(ensure_component(component, progress)?);
    }
    if progress.with_chainsaw {
        ensure_component(&CHAINSAW, progress)?;
    }
    let [
        kubernetes,
        etcd,
        kwok,
        containerd,
        coredns,
        traefik,
        kube_router,
    ] = <[PathBuf; 7]>::try_from(dirs).expect("one dir per component");
    Ok(Tools {
        kubernetes_version: pinned_version(&KUBERNETES)?,
        kube_apiserver: kubernetes.join("kube-apiserver"),
        kube_controller_manager: kubernetes.join("kube-controller-manager"),
        kube_scheduler: kubernetes.join("kube-scheduler"),
        kubectl: kubernetes.join("kubectl"),
        kubelet: kubernetes.join("kubelet"),
        kube_proxy: kubernetes.join("kube-proxy"),
        etcd: etcd.join("etcd"),
        kwok: kwok.join("kwok"),
        kwokctl: kwok.join("kwokctl"),
        containerd: containerd.join("containerd"),
        containerd_shim: containerd.join("containerd-shim-runc-v2"),
        ctr: containerd.join("ctr"),
        coredns: coredns.join("coredns"),
        traefik: traefik.join("traefik"),
        kube_router: kube_router.join("kube-router"),
    })
}

/// Builds chainsaw (the test suites' runner) when the cache lacks it and returns its path.
pub fn ensure_chainsaw() -> Result<PathBuf> {
    check_go()?;
    Ok(ensure_component(&CHAINSAW, &Progress::foreground())?.join("chainsaw"))
}

/// Builds the sign-in tests' OpenID Connect provider when the cache lacks it and returns
/// the binary's path.
pub fn ensure_oidc_provider() -> Result<PathBuf> {
    check_go()?;
    Ok(ensure_component(&OIDC_PROVIDER, &Progress::foreground())?.join("oidc-provider"))
}

/// Builds kube-score (the peer linter of the rendered children) when the cache lacks it and
/// returns the binary's path.
pub fn ensure_kube_score() -> Result<PathBuf> {
    check_go()?;
    Ok(ensure_component(&KUBE_SCORE, &Progress::foreground())?.join("kube-score"))
}

/// Builds Centrifugo when the cache lacks it and returns the binary's path.
pub fn ensure_centrifugo() -> Result<PathBuf> {
    check_go()?;
    Ok(ensure_component(&CENTRIFUGO, &Progress::foreground())?.join("centrifugo"))
}

fn module_dir(component: &Component) -> PathBuf {
    paths::repo_root()
        .join("e2e/toolchain")
        .join(component.name)
}

/// The version `go.mod` pins for the component's main module.
fn pinned_version(component: &Component) -> Result<String> {
    let go_mod = read(&module_dir(component).join("go.mod"))?;
    find_require(&go_mod, component.pinned_module).with_context(|| {
        format!(
            "{}/go.mod does not require {}",
            component.name, component.pinned_module
        )
    })
}

/// Finds `module vX.Y.Z` in a go.mod `require` line or block.
fn find_require(go_mod: &str, module: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let line = line.trim().trim_start_matches("require").trim();
        let mut words = line.split_whitespace();
        (words.next()? == module).then(|| words.next().map(str::to_owned))?
    })
}

/// `-ldflags` for a component: Kubernetes binaries report their real version on `/version`
/// (and kubelet in the Node's status), the others where their release builds set it.
fn ldflags(component: &Component, version: &str) -> String {
    let mut flags = vec!["-s".to_owned(), "-w".to_owned()];
    for (name, var, keeps_v) in VERSION_VARS {
        if component.name == name {
            let value = if keeps_v {
                version
            } else {
                version.trim_start_matches('v')
            };
            flags.push(format!("-X {var}={value}"));
        }
    }
    if component.name == KUBERNETES.name {
        let mut parts = version.trim_start_matches('v').split('.');
        let (major, minor) = (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
        for package in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            for (var, value) in [
                ("gitVersion", version),
                ("gitMajor", major),
                ("gitMinor", minor),
                ("gitTreeState", "clean"),
            ] {
                flags.push(format!("-X {package}.{var}={value}"));
            }
        }
    }
    flags.join(" ")
}

/// The cache key: a digest of the pins, the recipe and the Go version that builds them.
fn cache_key(component: &Component, version: &str, go_version: &str) -> Result<String> {
    let dir = module_dir(component);
    let mut hasher = Sha256::new();
    let mut parts = vec![
        RECIPE.to_owned(),
        go_version.to_owned(),
        ldflags(component, version),
        read(&dir.join("go.mod"))?,
        read(&dir.join("go.sum"))?,
    ];
    // A module may hold its own main package (CoreDNS's plugin list).
    let mut sources: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "go"))
        .collect();
    sources.sort();
    for source in sources {
        parts.push(read(&source)?);
    }
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn go_version() -> Result<String> {
    let out = process::output(
        Command::new("go").args(["env", "GOVERSION"]),
        Duration::from_secs(60),
    )
    .context("the Go toolchain is needed to build the local control plane")?;
    Ok(out.trim().to_owned())
}

fn check_go() -> Result<()> {
    let version = go_version()?;
    match parse_go_version(&version) {
        Some(found) if found >= MIN_GO => Ok(()),
        _ => bail!(
            "{version} is too old to build the pinned control plane: install Go {}.{} or newer",
            MIN_GO.0,
            MIN_GO.1
        ),
    }
}

fn parse_go_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.strip_prefix("go")?.split(['.', 'r', 'b']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Returns the component's binary directory, building it first when the cache lacks it.
fn ensure_component(component: &Component, progress: &Progress) -> Result<PathBuf> {
    let version = pinned_version(component)?;
    let go = go_version()?;
    let key = cache_key(component, &version, &go)?;
    let root = paths::cache_dir().join("toolchain");
    let final_dir = root.join(format!("{}-{version}-{key}", component.name));
    if final_dir.join(".complete").exists() {
        return Ok(final_dir);
    }

    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let staging = root.join(format!(".{}-{key}.{}", component.name, std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;

    println!(
        "Building {} {version} with {go} into {} (once per pin and machine)",
        component.name,
        final_dir.display()
    );
    let started = Instant::now();
    for (package, binary) in component.binaries {
        if let Err(error) = build_binary(
            component,
            &version,
            package,
            &staging.join(binary),
            progress,
        ) {
            let _ = fs::remove_dir_all(&staging);
            return Err(error);
        }
    }
    fs::write(staging.join(".complete"), format!("{version}\n"))?;
    // Another build may have finished first; its result is equivalent, so keep that one.
    if fs::rename(&staging, &final_dir).is_err() {
        let _ = fs::remove_dir_all(&staging);
        if !final_dir.join(".complete").exists() {
            bail!(
                "cannot move the build of {} into {}",
                component.name,
                final_dir.display()
            );
        }
    }
    println!(
        "Built {} {version} in {}s",
        component.name,
        started.elapsed().as_secs()
    );
    Ok(final_dir)
}

/// `go build -v` at the lowest CPU priority, printing a progress line now and then
/// (package count and elapsed time).
fn build_binary(
    component: &Component,
    version: &str,
    package: &str,
    output: &Path,
    progress: &Progress,
) -> Result<()> {
    let mut cmd = Command::new("nice");
    cmd.current_dir(module_dir(component))
        .args([
            "-n",
            "19",
            "go",
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            &ldflags(component, version),
            "-o",
        ])
        .arg(output)
        .arg(package)
        .env("CGO_ENABLED", "0")
        // The compiler spends less time collecting garbage (a fifth less build time measured
        // on etcd), at a little more memory.
        .env(
            "GOGC",
            std::env::var("GOGC").unwrap_or_else(|_| "400".to_owned()),
        )
        // Its own process group, so that stopping it stops the compilers it started.
        .process_group(0)
        // The pins are exact: fail rather than resolve anything go.sum does not list.
        .env(
            "GOFLAGS",
            format!(
                "{} -mod=readonly",
                std::env::var("GOFLAGS").unwrap_or_default()
            ),
        )
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let binary = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = process::spawn(&mut cmd)?;
    let stderr = child.stderr.take().context("go build stderr")?;

    let compiled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&compiled);
    // go build -v prints one package per line; anything else is an error worth showing.
    let reader = thread::spawn(move || {
        let mut other = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(' ') || line.starts_with('#') {
                other.push(line);
            } else {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        other
    });
    let started = Instant::now();
    let mut next_report = progress.every;
    // A cold Kubernetes build on two cores takes tens of minutes; an hour means it is stuck.
    let limit = Duration::from_secs(3600);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let elapsed = started.elapsed();
        if progress.cancelled.load(Ordering::Relaxed) {
            kill_group(&mut child);
            bail!("building {binary} was cancelled");
        }
        if elapsed >= limit {
            kill_group(&mut child);
            bail!(
                "building {binary} did not finish within {} minutes",
                limit.as_secs() / 60
            );
        }
        if elapsed >= next_report {
            println!(
                "  {binary}: {} packages compiled, {}s",
                compiled.load(Ordering::Relaxed),
                elapsed.as_secs()
            );
            next_report += progress.every;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let errors = reader.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "building {binary} from {package} failed ({status}):\n{}",
            errors.join("\n")
        );
    }
    println!(
        "  {binary}: done ({} packages, {}s)",
        compiled.load(Ordering::Relaxed),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Kills a `go build` and the compilers it runs, and reaps it.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_pins_its_module() {
        for component in COMPONENTS
            .into_iter()
            .chain([&CHAINSAW, &CENTRIFUGO, &OIDC_PROVIDER])
        {
            let version = pinned_version(component).expect("pinned");
            assert!(version.starts_with('v'), "{}: {version}", component.name);
        }
        assert!(
            pinned_version(&KUBERNETES)
                .expect("pinned")
                .starts_with("v1.36.")
        );
        assert!(pinned_version(&ETCD).expect("pinned").starts_with("v3.6."));
        assert!(pinned_version(&KWOK).expect("pinned").starts_with("v0.8."));
        assert!(
            pinned_version(&CONTAINERD)
                .expect("pinned")
                .starts_with("v2.")
        );
        assert_eq!(pinned_version(&CENTRIFUGO).expect("pinned"), "v6.9.1");
    }

    #[test]
    fn staging_modules_match_the_kubernetes_release() {
        let go_mod = read(&module_dir(&KUBERNETES).join("go.mod")).expect("go.mod");
        let minor = pinned_version(&KUBERNETES)
            .expect("pinned")
            .replacen("v1.", "v0.", 1);
        let replaces: Vec<&str> = go_mod
            .lines()
            .filter(|l| l.contains("=> k8s.io/"))
            .collect();
        assert!(
            replaces.len() > 25,
            "every staging module is replaced: {replaces:?}"
        );
        for line in replaces {
            assert!(
                line.trim_end().ends_with(&minor),
                "{line} should pin {minor}"
            );
        }
    }

    #[test]
    fn finds_requires_in_lines_and_blocks() {
        let go_mod =
            "module x\n\nrequire a.io/b v1.2.3\n\nrequire (\n\tc.io/d v0.1.0 // indirect\n)\n";
        assert_eq!(find_require(go_mod, "a.io/b").as_deref(), Some("v1.2.3"));
        assert_eq!(find_require(go_mod, "c.io/d").as_deref(), Some("v0.1.0"));
        assert_eq!(find_require(go_mod, "e.io/f"), None);
    }

    #[test]
    fn kubernetes_ldflags_set_the_reported_version() {
        let flags = ldflags(&KUBERNETES, "v1.36.3");
        assert!(flags.contains("-X k8s.io/component-base/version.gitVersion=v1.36.3"));
        assert!(flags.contains("-X k8s.io/component-base/version.gitMinor=36"));
        assert!(flags.contains("-X k8s.io/client-go/pkg/version.gitMajor=1"));
        assert!(!ldflags(&ETCD, "v3.6.16").contains("-X"));
        assert!(
            ldflags(&CENTRIFUGO, "v6.9.1").ends_with("/internal/build.Version=6.9.1"),
            "{}",
            ldflags(&CENTRIFUGO, "v6.9.1")
        );
        assert!(
            ldflags(&CONTAINERD, "v2.4.2").ends_with("/v2/version.Version=v2.4.2"),
            "{}",
            ldflags(&CONTAINERD, "v2.4.2")
        );
    }

    #[test]
    fn cache_key_follows_the_go_version() {
        let a = cache_key(&ETCD, "v3.6.16", "go1.26.8").expect("key");
        assert_eq!(a, cache_key(&ETCD, "v3.6.16", "go1.26.8").expect("key"));
        assert_ne!(a, cache_key(&ETCD, "v3.6.16", "go1.26.9").expect("key"));
    }

    #[test]
    fn parses_go_versions() {
        assert_eq!(parse_go_version("go1.26.8"), Some((1, 26)));
        assert_eq!(parse_go_version("go1.27rc1"), Some((1, 27)));
        assert_eq!(parse_go_version("devel"), None);
    }
}
