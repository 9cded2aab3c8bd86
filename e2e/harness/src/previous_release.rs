//! The previous release: the build whose operator made the canvases this one upgrades. The
//! upgrade check installs it from its own commit (its `config/default`, its binaries in an
//! image tagged with its version), makes a canvas, then installs this tree over it. Its
//! tree and binaries live in the machine cache, so a fresh clone on the same machine (CI)
//! builds it no more.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::{
    images::{self, BuiltImage},
    paths, process,
};

/// A released build: its version and the commit of main it was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    pub version: &'static str,
    pub commit: &'static str,
}

/// The last build of main before this version. Move it forward when the version changes:
/// the commit just before the bump.
pub const PREVIOUS: Release = Release {
    version: "0.1.0",
    commit: "46c170bc571ac7456c61eaac8ea5ea0c322bf57e",
};

const GIT_TIMEOUT: Duration = Duration::from_secs(300);
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Written once the source tree is wholly extracted.
const EXTRACTED_MARKER: &str = ".extracted";
/// Written once the release's binaries are built: a release is built once per machine.
const BUILT_MARKER: &str = "built";

/// The previous release, built: its source tree and its app image.
#[derive(Debug, Clone)]
pub struct PreviousBuild {
    pub release: Release,
    /// The release's source tree (`git archive` of its commit).
    pub source: PathBuf,
    pub app_image: BuiltImage,
}

impl PreviousBuild {
    /// The release's own `config/default`: its CRD, RBAC and operator Deployment.
    pub fn config_default(&self) -> PathBuf {
        self.source.join("config/default")
    }
}

/// Extracts [`PREVIOUS`] from this clone's history (fetching the commit from `origin` when
/// the clone lacks it) into the machine cache, builds its binaries there once with its own
/// build script, and makes its app image in `out_dir`.
pub fn build(out_dir: &Path) -> Result<PreviousBuild> {
    let release = PREVIOUS;
    let current = images::package_version(images::VERSION_PACKAGE)?;
    ensure!(
        current != release.version,
        "this build's version {current} is the previous release's: bump the workspace version, \
         or move previous_release::PREVIOUS to the last commit of the version before"
    );
    let dir = paths::cache_dir()
        .join("previous-release")
        .join(release.commit);
    let source = extract(release, &dir.join("src"))?;
    let version = images::package_version_in(&source, images::VERSION_PACKAGE)?;
    ensure!(
        version == release.version,
        "commit {} is version {version}, not {}",
        release.commit,
        release.version
    );
    let binaries = dir.join("bin");
    let built_marker = dir.join(BUILT_MARKER);
    if !built_marker.is_file() {
        // This clone's target directory: the release's crates differ from this tree's by
        // version, so nothing collides but the binaries cargo copies to `release/`, which
        // this tree's next build copies anew; the dependencies are built once for both.
        process::run(
            Command::new(source.join(images::BUILD_SCRIPT))
                .arg(&binaries)
                .env("CARGO_TARGET_DIR", paths::target_dir()),
            BUILD_TIMEOUT,
        )
        .with_context(|| format!("the release build of {} failed", release.version))?;
        fs::write(&built_marker, release.commit)
            .with_context(|| format!("cannot write {}", built_marker.display()))?;
    }
    let app_image = images::build(&images::app_image(&binaries, release.version)?, out_dir)?;
    Ok(PreviousBuild {
        release,
        source,
        app_image,
    })
}

/// `dir`, holding the release commit's tree.
fn extract(release: Release, dir: &Path) -> Result<PathBuf> {
    let root = paths::repo_root();
    if dir.join(EXTRACTED_MARKER).is_file() {
        return Ok(dir.to_owned());
    }
    let object = format!("{}^{{commit}}", release.commit);
    let present = process::output_unchecked(
        Command::new("git")
            .current_dir(&root)
            .args(["cat-file", "-e", &object]),
        GIT_TIMEOUT,
    )?
    .status
    .success();
    if !present {
        process::run(
            Command::new("git").current_dir(&root).args([
                "fetch",
                "--quiet",
                "origin",
                release.commit,
            ]),
            GIT_TIMEOUT,
        )
        .with_context(|| {
            format!(
                "this clone lacks the previous release's commit {} and cannot fetch it",
                release.commit
            )
        })?;
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let archive = dir.join("source.tar");
    process::run(
        Command::new("git")
            .current_dir(&root)
            .args(["archive", "--format=tar", "--output"])
            .arg(&archive)
            .arg(release.commit),
        GIT_TIMEOUT,
    )?;
    // `--touch`: files dated now, not at the commit, so cargo never takes an artifact of a
    // newer tree for fresh.
    process::run(
        Command::new("tar")
            .args(["--extract", "--touch", "--file"])
            .arg(&archive)
            .arg("--directory")
            .arg(dir),
        GIT_TIMEOUT,
    )?;
    fs::remove_file(&archive).with_context(|| format!("cannot remove {}", archive.display()))?;
    fs::write(dir.join(EXTRACTED_MARKER), release.commit)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    Ok(dir.to_owned())
}
