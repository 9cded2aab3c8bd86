//! The image archives as containerd gets them: each is built, extracted, read back by umoci
//! (`stat`, `ls`, `unpack`) and checked: paths, owners and modes, the configuration, and
//! that the programs in the unpacked root filesystem run with only its own libraries (their
//! loader started with the rootfs's library directories and no cache, and every object it
//! resolves inside the rootfs). The pause and Redis images are the real ones; the app image
//! is built from stand-in binaries (the real ones need a release build, which `cargo xtask
//! image` does). Needs umoci, GNU tar, cc with static glibc, and redis-server/redis-cli:
//! `cargo xtask test` installs them; a missing one fails the test, naming it.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use pixel_harness::{
    images::{self, BuiltImage, Image, NONROOT, PAUSE_USER},
    process,
};
use serde_json::Value;
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(120);

/// An archive extracted and unpacked again.
struct Unpacked {
    _dir: TempDir,
    rootfs: PathBuf,
    /// The OCI image configuration.
    config: Value,
    /// Each layer entry's `uid/gid`, by path (`usr/bin/redis-server`), as the layer holds
    /// it: what containerd applies, whoever runs the test.
    owners: BTreeMap<String, String>,
}

fn run(cmd: &mut Command) -> String {
    process::output(cmd, TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"))
}

fn built(image: &Image, out: &Path) -> BuiltImage {
    let built = images::build(image, out).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(built.reference, image.reference());
    assert_eq!(
        built.reference,
        format!("{}:{}", built.base_name, image.tag)
    );
    assert!(built.archive.is_file(), "{}", built.archive.display());
    built
}

fn is_root() -> bool {
    fs::metadata("/proc/self").expect("/proc/self").uid() == 0
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).expect("read JSON")).expect("JSON")
}

fn blob(layout: &Path, digest: &Value) -> PathBuf {
    let digest = digest.as_str().expect("digest");
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// Extracts the archive (what `ctr images import` reads) and reads it back with umoci.
fn unpack(built: &BuiltImage, tag: &str) -> Unpacked {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    fs::create_dir(&layout).expect("layout dir");
    run(Command::new("tar")
        .arg("--extract")
        .arg("--file")
        .arg(&built.archive)
        .arg("--directory")
        .arg(&layout));
    let mut top: Vec<String> = fs::read_dir(&layout)
        .expect("layout")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["blobs", "index.json", "oci-layout"]);
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["stat", "--image", &image]));
    let tags = run(Command::new("umoci").arg("ls").arg("--layout").arg(&layout));
    assert_eq!(tags.lines().collect::<Vec<_>>(), [tag]);

    let index = json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    // ctr names the image <base-name>:<this>.
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        tag
    );
    let manifest = json(&blob(&layout, &manifests[0]["digest"]));
    let config = json(&blob(&layout, &manifest["config"]["digest"]));
    assert_eq!(config["os"], "linux", "{config}");
    assert_eq!(
        config["architecture"],
        match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let listing = run(Command::new("tar")
        .args(["--list", "--verbose", "--numeric-owner", "--gzip", "--file"])
        .env("TZ", "UTC0")
        .arg(blob(&layout, &layers[0]["digest"])));
    let owners = listing
        .lines()
        .map(|line| {
            // `drwxr-xr-x 0/0 0 1970-01-01 00:00 usr/bin/` or `… bin/sh -> /usr/bin/dash`
            let fields: Vec<&str> = line.splitn(6, ' ').filter(|f| !f.is_empty()).collect();
            let owner = fields.get(1).expect("owner").to_string();
            let name = line
                .rsplit_once(" 1970-01-01 00:00 ")
                .expect("epoch time")
                .1;
            let name = name.split(" -> ").next().expect("name");
            (name.trim_end_matches('/').to_owned(), owner)
        })
        .collect();

    // Unprivileged, umoci can only record owners it cannot set; the listing above has them.
    let bundle = dir.path().join("bundle");
    let mut unpack = Command::new("umoci");
    unpack.arg("unpack");
    if !is_root() {
        unpack.arg("--rootless");
    }
    run(unpack.args(["--image", &image]).arg(&bundle));
    Unpacked {
        rootfs: bundle.join("rootfs"),
        _dir: dir,
        config,
        owners,
    }
}

impl Unpacked {
    fn mode(&self, path: &str) -> u32 {
        let meta =
            fs::symlink_metadata(self.rootfs.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        meta.permissions().mode() & 0o7777
    }

    fn assert_file(&self, path: &str, mode: u32) {
        let meta =
            fs::symlink_metadata(self.rootfs.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(meta.is_file(), "{path} is a regular file");
        assert_eq!(self.mode(path), mode, "mode of {path}");
    }

    fn assert_dir(&self, path: &str, mode: u32) {
        assert!(self.rootfs.join(path).is_dir(), "{path} is a directory");
        assert_eq!(self.mode(path), mode, "mode of {path}");
    }

    /// Everything root's but the paths listed (owned by `uid/gid`).
    fn assert_owners(&self, others: &[(&str, u32)]) {
        assert!(!self.owners.is_empty());
        for (path, owner) in &self.owners {
            let expected = others
                .iter()
                .find(|(p, _)| p == path)
                .map_or("0/0".to_owned(), |(_, id)| format!("{id}/{id}"));
            assert_eq!(*owner, expected, "owner of {path}");
        }
        for (path, _) in others {
            assert!(self.owners.contains_key(*path), "{path} is in the layer");
        }
    }

    fn text(&self, path: &str) -> String {
        fs::read_to_string(self.rootfs.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Every file name in the rootfs.
    fn names(&self) -> Vec<String> {
        fn walk(dir: &Path, names: &mut Vec<String>) {
            for entry in fs::read_dir(dir).expect("read dir") {
                let entry = entry.expect("entry");
                names.push(entry.file_name().to_string_lossy().into_owned());
                if entry.file_type().expect("type").is_dir() {
                    walk(&entry.path(), names);
                }
            }
        }
        let mut names = Vec::new();
        walk(&self.rootfs, &mut names);
        names
    }

    /// The command line running the rootfs's `program` through the rootfs's own loader,
    /// with only the rootfs's library directories (`libraries` holds the host paths ldd
    /// gave, which are the paths in the image too) and no loader cache.
    fn command_line(&self, libraries: &[PathBuf], program: &str) -> Vec<String> {
        let loader = libraries
            .iter()
            .find(|l| {
                l.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("ld-"))
            })
            .expect("a dynamic loader");
        let mut dirs: Vec<String> = libraries
            .iter()
            .filter(|l| *l != loader)
            .map(|l| self.inside(l.parent().expect("lib dir")))
            .collect();
        dirs.sort();
        dirs.dedup();
        vec![
            self.inside(loader),
            "--inhibit-cache".to_owned(),
            "--library-path".to_owned(),
            dirs.join(":"),
            self.inside(Path::new(program)),
        ]
    }

    fn command(&self, libraries: &[PathBuf], program: &str) -> Command {
        let line = self.command_line(libraries, program);
        let mut cmd = Command::new(&line[0]);
        cmd.args(&line[1..]);
        cmd
    }

    /// The host path of an absolute image path.
    fn inside(&self, path: &Path) -> String {
        self.rootfs
            .join(path.strip_prefix("/").unwrap_or(path))
            .to_string_lossy()
            .into_owned()
    }

    /// Asserts that the loader finds every shared object of `program` in the rootfs.
    fn assert_self_contained(&self, libraries: &[PathBuf], program: &str) {
        // `ld.so --list [options] <program>`.
        let line = self.command_line(libraries, program);
        let out = run(Command::new(&line[0]).arg("--list").args(&line[1..]));
        let root = self.rootfs.to_string_lossy().into_owned();
        for line in out.lines().filter(|l| l.contains("=>")) {
            assert!(line.contains(&format!("=> {root}/")), "{program}: {line}");
        }
        assert!(out.contains("libc.so"), "{out}");
    }
}

#[test]
fn the_pause_image_holds_only_a_static_pause_that_exits_0_on_sigterm() {
    let out = tempfile::tempdir().expect("temp dir");
    let image = images::pause_image(&out.path().join("pause-build")).expect("pause image");
    let built = built(&image, out.path());
    assert_eq!(built.reference, "registry.k8s.io/pause:3.10.2");
    assert_eq!(built.base_name, "registry.k8s.io/pause");
    let unpacked = unpack(&built, images::PAUSE_TAG);
    assert_eq!(unpacked.names(), ["pause"]);
    unpacked.assert_file("pause", 0o755);
    unpacked.assert_owners(&[]);
    let config = &unpacked.config["config"];
    assert_eq!(config["User"], format!("{PAUSE_USER}:{PAUSE_USER}"));
    assert_eq!(config["Entrypoint"], serde_json::json!(["/pause"]));

    let pause = unpacked.rootfs.join("pause");
    assert_eq!(
        run(Command::new(&pause).arg("-v")).trim(),
        "pixel-playground pause"
    );
    let mut child = Command::new(&pause)
        .stdin(Stdio::null())
        .spawn()
        .expect("start pause");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    // SIGCHLD only makes it reap; it keeps running.
    std::thread::sleep(Duration::from_millis(200));
    kill(pid, Signal::SIGCHLD).expect("SIGCHLD");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().expect("poll").is_none(),
        "pause exited on SIGCHLD"
    );
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let mut status = None;
    process::wait_until("pause to exit", Duration::from_secs(10), || {
        status = child.try_wait()?;
        Ok(status.is_some())
    })
    .expect("pause exits on SIGTERM");
    assert!(status.expect("status").success(), "{status:?}");
}

#[test]
fn unchanged_inputs_keep_the_archive_and_a_rebuild_is_identical() {
    let out = tempfile::tempdir().expect("temp dir");
    let image = images::pause_image(&out.path().join("pause-build")).expect("pause image");
    let first = built(&image, out.path());
    let bytes = fs::read(&first.archive).expect("archive");
    let modified = fs::metadata(&first.archive)
        .expect("archive")
        .modified()
        .ok();
    let again = built(&image, out.path());
    assert_eq!(again, first);
    assert_eq!(
        fs::metadata(&again.archive)
            .expect("archive")
            .modified()
            .ok(),
        modified,
        "an unchanged image is not rewritten"
    );
    // Without the cache: the same bytes.
    for entry in fs::read_dir(out.path()).expect("out dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "key") {
            fs::remove_file(path).expect("remove key");
        }
    }
    let rebuilt = built(&image, out.path());
    assert!(
        fs::read(&rebuilt.archive).expect("archive") == bytes,
        "the rebuild differs"
    );
}

#[test]
fn the_redis_image_runs_redis_server_and_the_readiness_probe_from_its_own_files() {
    let out = tempfile::tempdir().expect("temp dir");
    let image = images::redis_image().expect("redis image");
    let built = built(&image, out.path());
    assert!(
        built
            .reference
            .starts_with("docker.io/library/pixel-playground-redis:"),
        "{}",
        built.reference
    );
    let unpacked = unpack(&built, &image.tag);
    for program in images::REDIS_PROGRAMS {
        unpacked.assert_file(&format!("usr/bin/{program}"), 0o755);
    }
    assert_eq!(
        fs::read_link(unpacked.rootfs.join("bin/sh")).expect("bin/sh"),
        Path::new("/usr/bin/dash")
    );
    unpacked.assert_dir("data", 0o755);
    unpacked.assert_dir("tmp", 0o1777);
    unpacked.assert_owners(&[("data", NONROOT), ("home/nonroot", NONROOT)]);
    assert!(
        unpacked
            .text("etc/passwd")
            .contains(&format!("nonroot:x:{NONROOT}:{NONROOT}:")),
        "{}",
        unpacked.text("etc/passwd")
    );
    assert!(
        unpacked
            .text("etc/group")
            .contains(&format!("nonroot:x:{NONROOT}:"))
    );
    let config = &unpacked.config["config"];
    assert_eq!(config["User"], format!("{NONROOT}:{NONROOT}"));
    assert_eq!(config["Cmd"], serde_json::json!(["redis-server"]));
    assert_eq!(config["WorkingDir"], "/data");
    assert_eq!(
        config["Env"],
        serde_json::json!(["PATH=/usr/local/bin:/usr/bin:/bin"])
    );

    let mut libraries = Vec::new();
    for program in images::REDIS_PROGRAMS {
        let host = images::shared_libraries(&Path::new("/usr/bin").join(program)).expect("ldd");
        for library in &host {
            unpacked.assert_file(
                library.to_str().expect("UTF-8").trim_start_matches('/'),
                fs::metadata(library)
                    .expect("host lib")
                    .permissions()
                    .mode()
                    & 0o7777,
            );
        }
        libraries.extend(host);
    }
    libraries.sort();
    libraries.dedup();
    for program in images::REDIS_PROGRAMS {
        unpacked.assert_self_contained(&libraries, &format!("/usr/bin/{program}"));
    }
    let version = run(unpacked
        .command(&libraries, "/usr/bin/redis-server")
        .arg("--version"));
    assert!(version.starts_with("Redis server v="), "{version}");

    // The server as the operator starts it (a port of our own), and its readiness probe
    // (`sh -c "redis-cli … ping | grep -q PONG"`) with the image's sh, redis-cli and grep.
    let data = tempfile::tempdir().expect("data dir");
    let port = process::free_port().expect("port").to_string();
    let mut server = unpacked.command(&libraries, "/usr/bin/redis-server");
    server
        .args(["--port", &port, "--bind", "127.0.0.1", "--dir"])
        .arg(data.path())
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ])
        .args(["--requirepass", "probe-secret"])
        .args(["--rename-command", "FLUSHALL", ""]);
    let mut group = process::Group::new(Duration::from_secs(10));
    group
        .spawn("redis-server", &mut server, &data.path().join("redis.log"))
        .expect("start the image's redis-server");
    let cli = unpacked
        .command_line(&libraries, "/usr/bin/redis-cli")
        .join(" ");
    let grep = unpacked.command_line(&libraries, "/usr/bin/grep").join(" ");
    let probe = |password: &str| {
        let mut sh = unpacked.command(&libraries, "/usr/bin/dash");
        sh.args([
            "-c",
            "$CLI -p \"$PORT\" --no-auth-warning -a \"$REDIS_PASSWORD\" ping | $GREP -q PONG",
        ])
        .env("CLI", &cli)
        .env("GREP", &grep)
        .env("PORT", &port)
        .env("REDIS_PASSWORD", password);
        process::output_unchecked(&mut sh, TIMEOUT).expect("run the probe")
    };
    process::wait_until(
        "the image's redis-server to pass its readiness probe",
        Duration::from_secs(30),
        || {
            group.check_running()?;
            Ok(probe("probe-secret").status.success())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}",
            fs::read_to_string(data.path().join("redis.log")).unwrap_or_default()
        )
    });
    assert!(
        !probe("wrong").status.success(),
        "the probe passes only with the password"
    );
}

#[test]
fn the_app_image_lays_out_the_binaries_with_glibc_and_no_shell() {
    // Stand-ins for the four release binaries: dynamically linked, like the real ones.
    let binaries = tempfile::tempdir().expect("binaries dir");
    for binary in images::APP_BINARIES {
        fs::copy("/bin/true", binaries.path().join(binary)).expect("stand-in binary");
    }
    let out = tempfile::tempdir().expect("temp dir");
    let image = images::app_image(binaries.path(), "0.0.0-test").expect("app image");
    let built = built(&image, out.path());
    assert_eq!(
        built.reference,
        "docker.io/library/pixel-playground:0.0.0-test"
    );
    assert_eq!(built.base_name, "docker.io/library/pixel-playground");
    let unpacked = unpack(&built, "0.0.0-test");

    for binary in images::APP_BINARIES {
        unpacked.assert_file(&format!("usr/local/bin/{binary}"), 0o755);
    }
    let libraries = images::shared_libraries(Path::new("/bin/true")).expect("ldd");
    for library in &libraries {
        unpacked.assert_file(
            library.to_str().expect("UTF-8").trim_start_matches('/'),
            fs::metadata(library)
                .expect("host lib")
                .permissions()
                .mode()
                & 0o7777,
        );
    }
    for binary in images::APP_BINARIES {
        let program = format!("/usr/local/bin/{binary}");
        unpacked.assert_self_contained(&libraries, &program);
        run(&mut unpacked.command(&libraries, &program));
    }
    unpacked.assert_file("etc/ssl/certs/ca-certificates.crt", 0o644);
    assert_eq!(
        fs::read(unpacked.rootfs.join("etc/ssl/certs/ca-certificates.crt")).expect("bundle"),
        fs::read("/etc/ssl/certs/ca-certificates.crt").expect("host bundle")
    );
    let passwd = unpacked.text("etc/passwd");
    assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    assert!(
        passwd.contains(&format!("\nnonroot:x:{NONROOT}:{NONROOT}:")),
        "{passwd}"
    );
    assert!(
        unpacked
            .text("etc/group")
            .contains(&format!("nonroot:x:{NONROOT}:"))
    );
    unpacked.assert_dir("tmp", 0o1777);
    unpacked.assert_dir("home/nonroot", 0o700);
    unpacked.assert_owners(&[("home/nonroot", NONROOT)]);

    // No shell, no package manager.
    assert!(!unpacked.rootfs.join("bin").exists());
    assert!(!unpacked.rootfs.join("usr/bin").exists());
    let names = unpacked.names();
    for forbidden in ["sh", "dash", "bash", "busybox", "apt", "apt-get", "dpkg"] {
        assert!(
            !names.iter().any(|n| n == forbidden),
            "{forbidden} in {names:?}"
        );
    }

    let config = &unpacked.config["config"];
    assert_eq!(config["User"], format!("{NONROOT}:{NONROOT}"));
    assert!(config["Entrypoint"].is_null(), "{config}");
    assert!(config["Cmd"].is_null(), "{config}");
    let env = config["Env"].as_array().expect("Env");
    assert!(env.contains(&"PATH=/usr/local/bin".into()), "{env:?}");
}
