//! Container images built without a daemon, as OCI image archives (a tar of an OCI image
//! layout) that `ctr -n k8s.io images import --base-name <base_name> <archive>` takes:
//!
//! - the app image, `pixel-playground:<operator version>`: the release binaries that
//!   `config/image/build.sh` builds (the Dockerfile's build command too), laid out as the
//!   Dockerfile lays them out on distroless cc-debian12, with glibc, CA certificates and the
//!   `nonroot` user, and no shell;
//! - the Redis image, `pixel-playground-redis:<Debian redis-server version>`: Debian's
//!   redis-server and redis-cli, the `sh` and `grep` the operator's readiness probe runs, and the
//!   `sleep`, `cat` and `rm` of the backup Job's dump script;
//! - the pause image, `registry.k8s.io/pause:3.10.2`: the sandbox image, our own static
//!   `e2e/images/pause.c`.
//!
//! Each image is one layer, described by a [`Layout`] (paths, owners, modes; every
//! executable with the shared objects `ldd` finds for it, at the paths it finds them). The
//! layout is staged in a directory, GNU tar writes the layer from it (owners and times set
//! by flags, so no root is needed), umoci makes the image (`init`, `new`, `raw add-layer`,
//! `config`, `gc`), and GNU tar packs the layout directory into the archive. Times are the
//! epoch, so equal inputs give equal digests; an archive whose inputs are unchanged is kept.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::{deps, paths, process};

/// The app image's repository; the operator's default `spec.image.repository`.
pub const APP_REPOSITORY: &str = "pixel-playground";
/// The Redis image's repository; its tag is Debian's redis-server version.
pub const REDIS_REPOSITORY: &str = "pixel-playground-redis";
/// The pause image: the name and tag the node's containerd is configured with as its
/// sandbox image.
pub const PAUSE_REPOSITORY: &str = "registry.k8s.io/pause";
pub const PAUSE_TAG: &str = "3.10.2";

/// The app image's binaries, each its package's only binary of that name, in
/// `/usr/local/bin` (`config/image/build.sh` builds the same list; a test compares them).
pub const APP_BINARIES: [&str; 5] = [
    "pixel-operator",
    "canvas-api",
    "gateway",
    "frontend",
    "backup",
];
/// The package whose version tags the app image.
pub const VERSION_PACKAGE: &str = "pixel-operator";
/// The shared build command, relative to the repository root.
pub const BUILD_SCRIPT: &str = "config/image/build.sh";
/// The pause program's source, relative to the repository root.
pub const PAUSE_SOURCE: &str = "e2e/images/pause.c";

/// The unprivileged user (and group) of the app and Redis images: distroless's `nonroot`,
/// and the uid the operator's pod security contexts set
/// (`operator/src/children/security.rs`; a test compares them).
pub const NONROOT: u32 = 65532;
/// The pause image's user and group, as upstream's.
pub const PAUSE_USER: u32 = 65535;

/// The CA bundle of the host's `ca-certificates`, at the same path in the app image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// What the images take from the host: the tools that build them and the files they hold.
const HOST_PACKAGES: [&str; 6] = [
    "umoci",
    "ca-certificates",
    "redis-server",
    "redis-tools",
    "gcc",
    "libc6-dev",
];
/// Host programs in the Redis image, each at `/usr/bin/<name>`: the server, what the
/// readiness probe runs (`sh -c "redis-cli … ping | grep -q PONG"`), and what the backup
/// Job's dump script runs besides them (`pixel_common::backup::dump_script`).
pub const REDIS_PROGRAMS: [&str; 7] = [
    "redis-server",
    "redis-cli",
    "dash",
    "grep",
    "sleep",
    "cat",
    "rm",
];

/// Every time in the images (files, config, history): equal inputs, equal digests.
const EPOCH: &str = "1970-01-01T00:00:00Z";
/// Bumped when the recipe below changes what an image holds for the same inputs, so cached
/// archives are rebuilt.
const RECIPE: &str = "pixel-harness images 3";

const TOOL_TIMEOUT: Duration = Duration::from_secs(300);
/// A cold release build of the binaries on a busy 2-core machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// An image archive on disk, ready for `ctr -n k8s.io images import --base-name
/// <base_name> <archive>`, which names the image `reference`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The fully normalized reference the kubelet asks containerd for, e.g.
    /// `docker.io/library/pixel-playground:0.1.0`.
    pub reference: String,
    /// The reference without its tag, e.g. `docker.io/library/pixel-playground`: the
    /// archive's index names only the tag, and ctr prefixes it with this.
    pub base_name: String,
    pub archive: PathBuf,
}

/// Builds the three images into `out_dir`: installs the host packages they need when
/// missing, runs `config/image/build.sh` (a release build of the binaries into
/// `out_dir/bin`), compiles the pause program, and writes each archive (kept when its inputs
/// are unchanged).
pub fn build_all(out_dir: &Path) -> Result<Vec<BuiltImage>> {
    deps::ensure_debian_packages(&HOST_PACKAGES)?;
    let binaries = out_dir.join("bin");
    process::run(
        Command::new(paths::repo_root().join(BUILD_SCRIPT)).arg(&binaries),
        BUILD_TIMEOUT,
    )
    .context("the release build of the app image's binaries failed")?;
    let version = package_version(VERSION_PACKAGE)?;
    let images = [
        app_image(&binaries, &version)?,
        redis_image()?,
        pause_image(&out_dir.join("pause-build"))?,
    ];
    images.iter().map(|image| build(image, out_dir)).collect()
}

/// Where `cargo xtask image`, `cargo xtask up` and the tests write the archives.
pub fn output_dir() -> PathBuf {
    paths::repo_root().join("target").join("images")
}

/// Builds the pause image alone (the real node needs it before anything else runs).
pub fn build_pause(out_dir: &Path) -> Result<BuiltImage> {
    deps::ensure_debian_packages(&["umoci", "gcc", "libc6-dev"])?;
    build(&pause_image(&out_dir.join("pause-build"))?, out_dir)
}

/// A digest of an image archive's bytes: which build of a tag a node runs.
pub fn archive_digest(archive: &Path) -> Result<String> {
    let bytes = fs::read(archive).with_context(|| format!("cannot read {}", archive.display()))?;
    let digest = Sha256::digest(&bytes);
    Ok(digest[..12].iter().map(|b| format!("{b:02x}")).collect())
}

/// The built image of `repository` (one of the constants above).
pub fn find<'a>(built: &'a [BuiltImage], repository: &str) -> Result<&'a BuiltImage> {
    let base_name = normalized_repository(repository);
    built
        .iter()
        .find(|image| image.base_name == base_name)
        .with_context(|| format!("no {repository} image among those built"))
}

/// An image to build: its name, its one layer, its configuration.
#[derive(Debug, Clone)]
pub struct Image {
    /// As a user writes it (`pixel-playground`, `registry.k8s.io/pause`).
    pub repository: String,
    pub tag: String,
    pub layout: Layout,
    pub config: Config,
}

/// The parts of the OCI image configuration these images set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// `uid:gid`.
    pub user: String,
    /// Empty: none (pods set `command`).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

impl Image {
    /// The repository as containerd's CRI looks it up, e.g. `docker.io/library/pixel-playground`.
    pub fn base_name(&self) -> String {
        normalized_repository(&self.repository)
    }

    pub fn reference(&self) -> String {
        format!("{}:{}", self.base_name(), self.tag)
    }

    /// The archive's file name without extension: the repository's last part and the tag.
    fn file_stem(&self) -> String {
        let name = self
            .repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository);
        format!("{name}-{}", self.tag)
    }

    /// A digest of everything the archive is made from: the recipe, umoci's version, the
    /// name, the configuration, and every entry (a file by its contents).
    fn input_key(&self, umoci_version: &str) -> Result<String> {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(RECIPE.as_bytes());
        field(umoci_version.as_bytes());
        field(self.reference().as_bytes());
        field(format!("{:?}", self.config).as_bytes());
        for (path, entry) in &self.layout.entries {
            field(path.as_bytes());
            field(format!("{:o} {} {}", entry.mode, entry.uid, entry.gid).as_bytes());
            match &entry.content {
                Content::Dir => field(b"dir"),
                Content::Text(text) => field(text.as_bytes()),
                Content::Symlink(target) => field(format!("-> {target}").as_bytes()),
                Content::File(source) => field(&file_digest(source)?),
            }
        }
        Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Docker's normalization of a repository name, which containerd's CRI (so the kubelet)
/// uses: `pixel-playground` → `docker.io/library/pixel-playground`, `user/app` →
/// `docker.io/user/app`; a name whose first part is a registry host stays as it is.
pub fn normalized_repository(name: &str) -> String {
    match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => name.to_owned(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    }
}

/// A Debian package version as an image tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`): the
/// epoch dropped, every other character replaced by `_`. `5:7.0.15-1~deb12u10` →
/// `7.0.15-1_deb12u10`.
pub fn tag_from_debian_version(version: &str) -> Result<String> {
    let upstream = version.trim();
    let upstream = upstream.split_once(':').map_or(upstream, |(_, rest)| rest);
    let tag: String = upstream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    ensure!(
        tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'),
        "Debian version {version:?} makes no image tag"
    );
    Ok(tag)
}

/// The shared objects in `ldd`'s output, at the paths ldd found them (the dynamic loader at
/// its own path); the vDSO has no file. A library ldd could not find is an error naming it.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim) {
        if line.is_empty() || line == "statically linked" {
            continue;
        }
        // Drop the load address: `libc.so.6 => /lib/…/libc.so.6 (0x00007f…)`.
        let line = line
            .rsplit_once(" (0x")
            .map_or(line, |(before, _)| before)
            .trim();
        match line.split_once("=>") {
            Some((name, found)) => {
                let found = found.trim();
                if found == "not found" {
                    bail!("ldd found no {}", name.trim());
                }
                // Old glibc printed `linux-vdso.so.1 =>  (0x…)`: nothing to copy.
                if !found.is_empty() {
                    libraries.push(PathBuf::from(found));
                }
            }
            // The loader (`/lib64/ld-linux-x86-64.so.2`) has a path; the vDSO has none.
            None if line.starts_with('/') => libraries.push(PathBuf::from(line)),
            None => {}
        }
    }
    Ok(libraries)
}

/// The shared objects `binary` loads, as [`parse_ldd`] reads them; none for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = process::output_unchecked(Command::new("ldd").arg(binary), TOOL_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        return parse_ldd(&stdout)
            .with_context(|| format!("{} needs a library this host lacks", binary.display()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    bail!(
        "`ldd {}` failed ({}): {}",
        binary.display(),
        out.status,
        stderr.trim()
    )
}

/// What an entry of a layer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Dir,
    /// A copy of this host file (symlinks followed).
    File(PathBuf),
    Text(String),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub content: Content,
    /// Permission bits, with setuid, setgid and sticky (`/tmp` is `0o1777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The tree of an image's layer: entries by path relative to `/` (`usr/local/bin/gateway`).
/// Every parent directory is an entry too (root's, `0755`, unless set otherwise).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    entries: BTreeMap<String, Entry>,
}

impl Layout {
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries
            .iter()
            .map(|(path, entry)| (path.as_str(), entry))
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path.trim_start_matches('/'))
    }

    pub fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
        self.insert(path, Content::Dir, mode, (uid, gid))
    }

    /// A root-owned copy of the host file `source`.
    pub fn file(&mut self, path: &str, source: &Path, mode: u32) -> Result<()> {
        self.insert(path, Content::File(source.to_owned()), mode, (0, 0))
    }

    /// A root-owned file holding `text`.
    pub fn text(&mut self, path: &str, text: &str, mode: u32) -> Result<()> {
        self.insert(path, Content::Text(text.to_owned()), mode, (0, 0))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, Content::Symlink(target.to_owned()), 0o777, (0, 0))
    }

    /// The host executable `source` at `path` (root's, `0755`), and every shared object it
    /// loads at the path `ldd` found it, with the host file's permissions.
    pub fn executable(&mut self, path: &str, source: &Path) -> Result<()> {
        self.file(path, source, 0o755)?;
        for library in shared_libraries(source)? {
            let mode = fs::metadata(&library)
                .with_context(|| format!("cannot read {}", library.display()))?
                .permissions()
                .mode()
                & 0o7777;
            let in_image = library
                .to_str()
                .with_context(|| format!("{} is not UTF-8", library.display()))?;
            self.file(in_image, &library, mode)?;
        }
        Ok(())
    }

    /// Adds an entry and the parent directories it lacks. The same entry twice is one; an
    /// explicit directory replaces an implied one; any other clash is an error.
    fn insert(&mut self, path: &str, content: Content, mode: u32, owner: (u32, u32)) -> Result<()> {
        let path = path.trim_matches('/');
        ensure!(
            !path.is_empty() && path.split('/').all(|part| !matches!(part, "" | "." | "..")),
            "{path:?} is not a plain path in an image"
        );
        let parts: Vec<&str> = path.split('/').collect();
        for depth in 1..parts.len() {
            let parent = parts[..depth].join("/");
            let existing = self.entries.entry(parent.clone()).or_insert(Entry {
                content: Content::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            ensure!(
                existing.content == Content::Dir,
                "{parent} in the image is both a directory and a file"
            );
        }
        let entry = Entry {
            content,
            mode,
            uid: owner.0,
            gid: owner.1,
        };
        match self.entries.get(path) {
            Some(existing) if *existing == entry => {}
            Some(existing) if existing.content == Content::Dir && entry.content == Content::Dir => {
                self.entries.insert(path.to_owned(), entry);
            }
            Some(existing) => bail!("{path} in the image is both {existing:?} and {entry:?}"),
            None => {
                self.entries.insert(path.to_owned(), entry);
            }
        }
        Ok(())
    }
}

/// What the app and Redis images share: `root` and `nonroot` (65532, home
/// `/home/nonroot`) as in distroless, name lookups in files then DNS, and a `/tmp`.
fn base_layout() -> Result<Layout> {
    let mut layout = Layout::default();
    layout.text(
        "etc/passwd",
        &format!(
            "root:x:0:0:root:/root:/sbin/nologin\n\
             nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        ),
        0o644,
    )?;
    layout.text(
        "etc/group",
        &format!("root:x:0:\nnonroot:x:{NONROOT}:\n"),
        0o644,
    )?;
    // Without it glibc asks DNS before /etc/hosts.
    layout.text(
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files dns\n",
        0o644,
    )?;
    layout.dir("root", 0o700, 0, 0)?;
    layout.dir("home/nonroot", 0o700, NONROOT, NONROOT)?;
    layout.dir("tmp", 0o1777, 0, 0)?;
    Ok(layout)
}

/// The app image's tree: `/usr/local/bin/<binary>` for each of [`APP_BINARIES`] found in
/// `binaries`, the shared objects they load, the host's CA bundle, the users; no shell.
pub fn app_layout(binaries: &Path) -> Result<Layout> {
    let mut layout = base_layout()?;
    for binary in APP_BINARIES {
        let source = binaries.join(binary);
        ensure!(source.is_file(), "{} is missing", source.display());
        layout.executable(&format!("usr/local/bin/{binary}"), &source)?;
    }
    ensure!(
        Path::new(CA_BUNDLE).is_file(),
        "{CA_BUNDLE} is missing: install the ca-certificates package"
    );
    layout.file(CA_BUNDLE, Path::new(CA_BUNDLE), 0o644)?;
    Ok(layout)
}

/// `pixel-playground:<version>` from the binaries in `binaries`: the Dockerfile's user, no
/// entrypoint (pods set `command`).
pub fn app_image(binaries: &Path, version: &str) -> Result<Image> {
    Ok(Image {
        repository: APP_REPOSITORY.to_owned(),
        tag: version.to_owned(),
        layout: app_layout(binaries)?,
        config: Config {
            user: format!("{NONROOT}:{NONROOT}"),
            env: vec![
                "PATH=/usr/local/bin".to_owned(),
                format!("SSL_CERT_FILE={CA_BUNDLE}"),
            ],
            ..Config::default()
        },
    })
}

/// The Redis image's tree: [`REDIS_PROGRAMS`] from the host at `/usr/bin/<name>` with the
/// shared objects they load, `/bin/sh` → dash, a `/data` of the unprivileged user.
pub fn redis_layout() -> Result<Layout> {
    let mut layout = base_layout()?;
    for program in REDIS_PROGRAMS {
        let source = ["/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(program))
            .find(|path| path.is_file())
            .with_context(|| format!("{program} is not installed in /usr/bin or /bin"))?;
        layout.executable(&format!("usr/bin/{program}"), &source)?;
    }
    layout.symlink("bin/sh", "/usr/bin/dash")?;
    layout.dir("data", 0o755, NONROOT, NONROOT)?;
    Ok(layout)
}

/// `pixel-playground-redis:<version>` from the host's redis-server (the operator sets
/// `command: [redis-server]` and its arguments).
pub fn redis_image() -> Result<Image> {
    let version = process::output(
        Command::new("dpkg-query").args(["-W", "-f=${Version}", "redis-server"]),
        TOOL_TIMEOUT,
    )
    .context("cannot read the version of Debian's redis-server: is it installed?")?;
    Ok(Image {
        repository: REDIS_REPOSITORY.to_owned(),
        tag: tag_from_debian_version(&version)?,
        layout: redis_layout()?,
        config: Config {
            user: format!("{NONROOT}:{NONROOT}"),
            cmd: vec!["redis-server".to_owned()],
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_owned()],
            working_dir: Some("/data".to_owned()),
            ..Config::default()
        },
    })
}

/// Compiles [`PAUSE_SOURCE`] statically into `work_dir/pause` and returns the pause image:
/// `/pause` alone, run as 65535.
pub fn pause_image(work_dir: &Path) -> Result<Image> {
    fs::create_dir_all(work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    let binary = work_dir.join("pause");
    process::output(
        Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&binary)
            .arg(paths::repo_root().join(PAUSE_SOURCE)),
        TOOL_TIMEOUT,
    )
    .context("cannot compile the pause program (cc and libc6-dev's static glibc)")?;
    ensure!(
        shared_libraries(&binary)?.is_empty(),
        "{} is not static",
        binary.display()
    );
    let mut layout = Layout::default();
    layout.file("pause", &binary, 0o755)?;
    Ok(Image {
        repository: PAUSE_REPOSITORY.to_owned(),
        tag: PAUSE_TAG.to_owned(),
        layout,
        config: Config {
            user: format!("{PAUSE_USER}:{PAUSE_USER}"),
            entrypoint: vec!["/pause".to_owned()],
            ..Config::default()
        },
    })
}

/// Writes `image` as `out_dir/<name>-<tag>.oci.tar`, unless the archive there was made from
/// the same inputs (`<name>-<tag>.key` holds their digest).
pub fn build(image: &Image, out_dir: &Path) -> Result<BuiltImage> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let stem = image.file_stem();
    let built = BuiltImage {
        reference: image.reference(),
        base_name: image.base_name(),
        archive: out_dir.join(format!("{stem}.oci.tar")),
    };
    let umoci_version = process::output(Command::new("umoci").arg("--version"), TOOL_TIMEOUT)?;
    let key = image.input_key(umoci_version.trim())?;
    let key_file = out_dir.join(format!("{stem}.key"));
    if built.archive.is_file() && fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        return Ok(built);
    }
    let _ = fs::remove_file(&key_file);
    let work = out_dir.join(format!("{stem}.work"));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let rootfs = work.join("rootfs");
    stage(&image.layout, &rootfs)?;
    let layer = work.join("layer.tar");
    write_layer(&image.layout, &rootfs, &layer, &work.join("files"))?;
    let layout_dir = work.join("oci");
    make_image(image, &layout_dir, &layer)?;
    let partial = out_dir.join(format!("{stem}.oci.tar.partial"));
    tar(Command::new("tar")
        .args(["--create", "--file"])
        .arg(&partial)
        .args(reproducible_tar_flags(0, 0))
        // umoci writes its blobs for its user only.
        .args(["--sort=name", "--mode=a+rX,u+w"])
        .arg("--directory")
        .arg(&layout_dir)
        .args(["oci-layout", "index.json", "blobs"]))?;
    fs::rename(&partial, &built.archive)
        .with_context(|| format!("cannot write {}", built.archive.display()))?;
    fs::write(&key_file, &key).with_context(|| format!("cannot write {}", key_file.display()))?;
    fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    Ok(built)
}

/// Materializes `layout` under `rootfs` with its modes (owners are the layer's flags).
fn stage(layout: &Layout, rootfs: &Path) -> Result<()> {
    fs::create_dir(rootfs).with_context(|| format!("cannot create {}", rootfs.display()))?;
    for (path, entry) in layout.entries() {
        let target = rootfs.join(path);
        let written = match &entry.content {
            Content::Dir => fs::create_dir(&target),
            Content::File(source) => fs::copy(source, &target).map(drop),
            Content::Text(text) => fs::write(&target, text),
            Content::Symlink(link) => symlink(link, &target),
        };
        written.with_context(|| match &entry.content {
            Content::File(source) => {
                format!("cannot copy {} to {}", source.display(), target.display())
            }
            _ => format!("cannot create {}", target.display()),
        })?;
        if !matches!(entry.content, Content::Symlink(_)) {
            fs::set_permissions(&target, fs::Permissions::from_mode(entry.mode))
                .with_context(|| format!("cannot set the mode of {}", target.display()))?;
        }
    }
    Ok(())
}

/// GNU tar's flags for entries owned by `uid:gid` (numbers only) dated [`EPOCH`].
fn reproducible_tar_flags(uid: u32, gid: u32) -> Vec<String> {
    vec![
        "--format=gnu".to_owned(),
        "--numeric-owner".to_owned(),
        // `:N` is a number even where a user is named N.
        format!("--owner=:{uid}"),
        format!("--group=:{gid}"),
        "--mtime=@0".to_owned(),
    ]
}

/// Writes the layer: the entries in path order (parents first), one tar run per stretch of
/// entries with the same owner, appended to the first.
fn write_layer(layout: &Layout, rootfs: &Path, layer: &Path, list: &Path) -> Result<()> {
    let mut runs: Vec<((u32, u32), Vec<&str>)> = Vec::new();
    for (path, entry) in layout.entries() {
        match runs.last_mut() {
            Some((owner, paths)) if *owner == (entry.uid, entry.gid) => paths.push(path),
            _ => runs.push(((entry.uid, entry.gid), vec![path])),
        }
    }
    for (index, ((uid, gid), paths)) in runs.iter().enumerate() {
        let mut names = paths.join("\n");
        names.push('\n');
        fs::write(list, names).with_context(|| format!("cannot write {}", list.display()))?;
        tar(Command::new("tar")
            .arg(if index == 0 { "--create" } else { "--append" })
            .arg("--file")
            .arg(layer)
            .args(reproducible_tar_flags(*uid, *gid))
            .arg("--no-recursion")
            .arg("--directory")
            .arg(rootfs)
            .arg("--verbatim-files-from")
            .arg("--files-from")
            .arg(list))?;
    }
    Ok(())
}

fn tar(cmd: &mut Command) -> Result<()> {
    process::output(cmd, TOOL_TIMEOUT).map(drop)
}

/// umoci: a new layout holding `image.tag`, the layer, the configuration, nothing unused.
fn make_image(image: &Image, layout_dir: &Path, layer: &Path) -> Result<()> {
    let layout_arg = layout_dir
        .to_str()
        .with_context(|| format!("{} is not UTF-8", layout_dir.display()))?;
    let image_arg = format!("{layout_arg}:{}", image.tag);
    umoci(&["init", "--layout", layout_arg])?;
    umoci(&["new", "--image", &image_arg])?;
    let layer_arg = layer
        .to_str()
        .with_context(|| format!("{} is not UTF-8", layer.display()))?;
    let created_by = format!("{RECIPE}: {}", image.reference());
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &image_arg,
        "--history.created",
        EPOCH,
        "--history.created_by",
        &created_by,
        layer_arg,
    ])?;
    let mut config: Vec<String> = [
        "config",
        "--image",
        &image_arg,
        "--created",
        EPOCH,
        "--no-history",
        "--config.user",
        &image.config.user,
    ]
    .map(str::to_owned)
    .to_vec();
    for variable in &image.config.env {
        config.extend(["--config.env".to_owned(), variable.clone()]);
    }
    if image.config.entrypoint.is_empty() {
        config.extend(["--clear".to_owned(), "config.entrypoint".to_owned()]);
    }
    for part in &image.config.entrypoint {
        config.extend(["--config.entrypoint".to_owned(), part.clone()]);
    }
    if image.config.cmd.is_empty() {
        config.extend(["--clear".to_owned(), "config.cmd".to_owned()]);
    }
    for part in &image.config.cmd {
        config.extend(["--config.cmd".to_owned(), part.clone()]);
    }
    if let Some(dir) = &image.config.working_dir {
        config.extend(["--config.workingdir".to_owned(), dir.clone()]);
    }
    umoci(&config.iter().map(String::as_str).collect::<Vec<_>>())?;
    umoci(&["gc", "--layout", layout_arg])
}

fn umoci(args: &[&str]) -> Result<()> {
    process::output(Command::new("umoci").args(args), TOOL_TIMEOUT).map(drop)
}

fn file_digest(path: &Path) -> Result<Vec<u8>> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0; 1 << 16];
    loop {
        let read = std::io::Read::read(&mut file, &mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            return Ok(hash.finalize().to_vec());
        }
        hash.update(&buffer[..read]);
    }
}

/// The version of the workspace package `package`, from `cargo metadata`.
pub fn package_version(package: &str) -> Result<String> {
    package_version_in(&paths::repo_root(), package)
}

/// The version of `package` in the workspace at `root`.
pub fn package_version_in(root: &Path, package: &str) -> Result<String> {
    version_in_metadata(&workspace_metadata(root)?, package)
}

/// `cargo metadata --no-deps` of the workspace at `root` (its own packages and targets).
fn workspace_metadata(root: &Path) -> Result<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    process::output(
        Command::new(cargo).current_dir(root).args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ]),
        TOOL_TIMEOUT,
    )
}

/// The version of `package` in `cargo metadata --no-deps` output.
pub fn version_in_metadata(metadata: &str, package: &str) -> Result<String> {
    let metadata: serde_json::Value =
        serde_json::from_str(metadata).context("cargo metadata printed no JSON")?;
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == package)
        .and_then(|p| p["version"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("cargo metadata lists no package {package}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_as_the_kubelet_asks_for_them() {
        assert_eq!(
            normalized_repository("pixel-playground"),
            "docker.io/library/pixel-playground"
        );
        assert_eq!(
            normalized_repository("someone/app"),
            "docker.io/someone/app"
        );
        assert_eq!(
            normalized_repository("registry.k8s.io/pause"),
            "registry.k8s.io/pause"
        );
        assert_eq!(normalized_repository("localhost/app"), "localhost/app");
        assert_eq!(
            normalized_repository("127.0.0.1:5000/app"),
            "127.0.0.1:5000/app"
        );
        let image = Image {
            repository: PAUSE_REPOSITORY.to_owned(),
            tag: PAUSE_TAG.to_owned(),
            layout: Layout::default(),
            config: Config::default(),
        };
        assert_eq!(image.reference(), "registry.k8s.io/pause:3.10.2");
        assert_eq!(image.base_name(), "registry.k8s.io/pause");
        assert_eq!(image.file_stem(), "pause-3.10.2");
    }

    #[test]
    fn debian_versions_become_tags() {
        for (version, tag) in [
            ("5:7.0.15-1~deb12u10", "7.0.15-1_deb12u10"),
            ("7.2.4-1+b1\n", "7.2.4-1_b1"),
            ("1.0", "1.0"),
        ] {
            assert_eq!(tag_from_debian_version(version).expect(version), tag);
        }
        assert_eq!(
            tag_from_debian_version(&"9".repeat(300))
                .expect("long")
                .len(),
            128
        );
        for bad in ["", "1:", ".5", "-1"] {
            assert!(tag_from_debian_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ldd_output_gives_every_file_and_the_loader() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd5a1e2000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f4501387000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f44ff21e000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f45013bb000)\n";
        assert_eq!(
            parse_ldd(output).expect("parses"),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
        assert!(
            parse_ldd("\tlinux-vdso.so.1 =>  (0x00007ffd5a1e2000)\n")
                .expect("old vDSO line")
                .is_empty()
        );
        assert!(
            parse_ldd("\tstatically linked\n")
                .expect("static")
                .is_empty()
        );
        let missing = parse_ldd("\tlibgone.so.3 => not found\n").expect_err("missing");
        assert!(missing.to_string().contains("libgone.so.3"), "{missing}");
    }

    #[test]
    fn ldd_runs_on_real_binaries() {
        let libraries = shared_libraries(Path::new("/bin/sh")).expect("ldd /bin/sh");
        assert!(
            libraries.iter().any(|l| l.ends_with("libc.so.6")),
            "{libraries:?}"
        );
        assert!(
            libraries.iter().all(|l| l.is_absolute() && l.exists()),
            "{libraries:?}"
        );
    }

    #[test]
    fn layouts_add_parents_and_refuse_clashes() {
        let mut layout = Layout::default();
        layout.text("/etc/ssl/x", "x", 0o644).expect("file");
        let parent = layout.get("etc/ssl").expect("parent");
        assert_eq!(
            (&parent.content, parent.mode, parent.uid),
            (&Content::Dir, 0o755, 0)
        );
        // An explicit directory replaces the implied one; the same entry twice is one.
        layout.dir("etc", 0o750, 7, 7).expect("explicit dir");
        assert_eq!(layout.get("etc").map(|e| e.uid), Some(7));
        layout.text("etc/ssl/x", "x", 0o644).expect("same entry");
        assert!(layout.text("etc/ssl/x", "y", 0o644).is_err());
        assert!(layout.text("etc/ssl/x/below", "y", 0o644).is_err());
        assert!(layout.text("etc/../x", "y", 0o644).is_err());
        let paths: Vec<&str> = layout.entries().map(|(path, _)| path).collect();
        assert_eq!(paths, ["etc", "etc/ssl", "etc/ssl/x"]);
    }

    #[test]
    fn metadata_gives_the_package_version() {
        let metadata = r#"{"packages":[{"name":"a","version":"1.0.0"},
            {"name":"pixel-operator","version":"0.3.1"}]}"#;
        assert_eq!(
            version_in_metadata(metadata, "pixel-operator").expect("found"),
            "0.3.1"
        );
        assert!(version_in_metadata(metadata, "b").is_err());
    }

    /// The operator's pods run as the images' user.
    #[test]
    fn the_images_user_is_the_one_the_operator_sets() {
        let path = paths::repo_root().join("operator/src/children/security.rs");
        let source = fs::read_to_string(&path).expect("security.rs");
        let uid: u32 = source
            .lines()
            .find_map(|l| l.trim().strip_prefix("pub const RUN_AS_USER: i64 = "))
            .and_then(|v| v.trim_end_matches(';').parse().ok())
            .expect("RUN_AS_USER in security.rs");
        assert_eq!(uid, NONROOT);
    }

    /// The shared build script builds exactly the image's binaries, and each is a binary
    /// target of the workspace package of that name.
    #[test]
    fn the_build_script_builds_the_image_binaries() {
        let script = fs::read_to_string(paths::repo_root().join(BUILD_SCRIPT)).expect("script");
        let listed = script
            .lines()
            .find_map(|l| l.strip_prefix("binaries=\""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("a binaries=\"…\" line");
        assert_eq!(listed.split(' ').collect::<Vec<_>>(), APP_BINARIES);
        let metadata = workspace_metadata(&paths::repo_root()).expect("cargo metadata");
        let metadata: serde_json::Value = serde_json::from_str(&metadata).expect("json");
        for binary in APP_BINARIES {
            let package = metadata["packages"]
                .as_array()
                .expect("packages")
                .iter()
                .find(|p| p["name"] == binary)
                .unwrap_or_else(|| panic!("no package {binary}"));
            assert!(
                package["targets"]
                    .as_array()
                    .expect("targets")
                    .iter()
                    .any(|t| {
                        t["name"] == binary
                            && t["kind"]
                                .as_array()
                                .is_some_and(|k| k.contains(&"bin".into()))
                    }),
                "package {binary} has no binary {binary}"
            );
        }
    }
}
