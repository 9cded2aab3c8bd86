//! `cargo xtask kube-score`: the peer linter on what the operator deploys. Renders the
//! children of every PixelCanvas in `examples/` with the operator's `render` binary and
//! scores them with kube-score, built from its pinned Go module. Fails on any critical
//! finding that `docs/reliability.md` does not list, with its reason, as a deliberate
//! choice: that table is the allowlist, so the docs and the check cannot disagree.

use std::{collections::BTreeSet, fs, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use pixel_harness::{paths, process, toolchain};

/// Where the deliberate findings are listed, under [`SECTION`].
const ALLOWLIST_DOC: &str = "docs/reliability.md";
const SECTION: &str = "## Peer linter";
/// kube-score's grade of a critical finding.
const CRITICAL: u64 = 1;
/// Rendering and scoring a few dozen objects: seconds, unless something hangs.
const STEP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// One critical finding: the check's id and what it says.
type Finding = (String, String);

pub fn run() -> Result<()> {
    let root = paths::repo_root();
    let kube_score = toolchain::ensure_kube_score()?;
    let allowed = allowlist(&fs::read_to_string(root.join(ALLOWLIST_DOC))?)?;
    let out_dir = root.join("target/tmp/kube-score");
    fs::create_dir_all(&out_dir)?;
    let mut unexplained = Vec::new();
    let examples = examples(&root.join("examples"))?;
    ensure!(!examples.is_empty(), "no example manifest in examples/");
    for example in examples {
        let rendered = render(&root, &example)?;
        let name = example.file_name().unwrap_or_default().to_string_lossy();
        let path = out_dir.join(name.as_ref());
        fs::write(&path, &rendered)?;
        // kube-score exits 1 on critical findings; the JSON is judged instead.
        let scored = process::output_unchecked(
            Command::new(&kube_score)
                .args(["score", "--output-format", "json"])
                .arg(&path),
            STEP_TIMEOUT,
        )?;
        let report: Value = serde_json::from_slice(&scored.stdout).with_context(|| {
            format!(
                "kube-score did not print its JSON report for {}: {}",
                path.display(),
                String::from_utf8_lossy(&scored.stderr)
            )
        })?;
        let (ok, critical) = tally(&report)?;
        let explained = critical.iter().filter(|f| allowed.contains(f)).count();
        println!(
            "kube-score {name}: {ok} checks OK, {} critical ({explained} listed as deliberate \
             in {ALLOWLIST_DOC})",
            critical.len()
        );
        unexplained.extend(
            critical
                .into_iter()
                .filter(|finding| !allowed.contains(finding))
                .map(|(id, summary)| format!("{name}: {id}: {summary}")),
        );
    }
    if !unexplained.is_empty() {
        bail!(
            "kube-score found critical problems that {ALLOWLIST_DOC} (\"{SECTION}\") does not \
             list as deliberate:\n  {}",
            unexplained.join("\n  ")
        );
    }
    println!("PASS kube-score: no critical finding outside the documented list");
    Ok(())
}

/// The example manifests that hold a PixelCanvas.
fn examples(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && fs::read_to_string(&path)?.contains("kind: PixelCanvas") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The children the operator applies for `example`.
fn render(root: &Path, example: &Path) -> Result<Vec<u8>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = process::output(
        Command::new(cargo)
            .current_dir(root)
            .args([
                "run",
                "--quiet",
                "--locked",
                "-p",
                "pixel-operator",
                "--bin",
                "render",
                "--",
            ])
            .arg(example),
        STEP_TIMEOUT,
    )?;
    ensure!(
        !output.is_empty(),
        "render printed nothing for {}",
        example.display()
    );
    Ok(output.into_bytes())
}

/// How many checks passed, and the critical findings, from kube-score's JSON report.
fn tally(report: &Value) -> Result<(usize, Vec<Finding>)> {
    let objects = report
        .as_array()
        .context("kube-score's report is not a list")?;
    ensure!(!objects.is_empty(), "kube-score scored no object");
    let (mut ok, mut critical) = (0, Vec::new());
    for object in objects {
        for check in object["checks"].as_array().into_iter().flatten() {
            if check["skipped"].as_bool() == Some(true) {
                continue;
            }
            if check["grade"].as_u64() != Some(CRITICAL) {
                ok += usize::from(check["grade"].as_u64() == Some(10));
                continue;
            }
            let id = check["check"]["id"].as_str().unwrap_or("?").to_owned();
            for comment in check["comments"].as_array().into_iter().flatten() {
                let summary = comment["summary"].as_str().unwrap_or("?").to_owned();
                critical.push((id.clone(), summary));
            }
        }
    }
    Ok((ok, critical))
}

/// The deliberate findings: the rows `| \`check-id\` | summary | reason |` of the doc's
/// [`SECTION`], each with a reason.
fn allowlist(doc: &str) -> Result<BTreeSet<Finding>> {
    let section = doc
        .split_once(SECTION)
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or_default())
        .with_context(|| format!("{ALLOWLIST_DOC} has no \"{SECTION}\" section"))?;
    let mut allowed = BTreeSet::new();
    for line in section.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let [id, summary, reason] = cells.as_slice() else {
            continue;
        };
        let Some(id) = id.strip_prefix('`').and_then(|id| id.strip_suffix('`')) else {
            continue;
        };
        ensure!(
            !reason.is_empty(),
            "{id} ({summary}) is listed without a reason"
        );
        allowed.insert((id.to_owned(), (*summary).to_owned()));
    }
    ensure!(
        !allowed.is_empty(),
        "\"{SECTION}\" in {ALLOWLIST_DOC} lists no finding"
    );
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_allowlist_is_the_docs_table_and_every_row_needs_a_reason() {
        let doc = "# x\n## Peer linter\n\ntext\n\n| check | finding | why |\n|---|---|---|\n\
                   | `container-resources` | CPU limit is not set | throttling |\n\
                   ## Next\n| `other` | elsewhere | not this section |\n";
        assert_eq!(
            allowlist(doc).expect("parsed"),
            BTreeSet::from([(
                "container-resources".to_owned(),
                "CPU limit is not set".to_owned()
            )])
        );
        let no_reason = "## Peer linter\n| `container-resources` | CPU limit is not set |  |\n";
        assert!(allowlist(no_reason).is_err());
        assert!(allowlist("## Peer linter\nnothing listed\n").is_err());
        assert!(allowlist("no section").is_err());
    }

    #[test]
    fn the_committed_allowlist_parses() {
        let doc = fs::read_to_string(paths::repo_root().join(ALLOWLIST_DOC)).expect("doc");
        assert!(!allowlist(&doc).expect("parsed").is_empty());
    }

    #[test]
    fn only_unskipped_critical_checks_are_findings() {
        let report = json!([{"checks": [
            {"check": {"id": "a"}, "grade": 10, "skipped": false, "comments": null},
            {"check": {"id": "b"}, "grade": 1, "skipped": false,
             "comments": [{"summary": "one"}, {"summary": "two"}]},
            {"check": {"id": "c"}, "grade": 1, "skipped": true, "comments": [{"summary": "x"}]},
            {"check": {"id": "d"}, "grade": 5, "skipped": false, "comments": [{"summary": "w"}]}
        ]}]);
        let (ok, critical) = tally(&report).expect("tallied");
        assert_eq!(ok, 1);
        assert_eq!(
            critical,
            vec![
                ("b".to_owned(), "one".to_owned()),
                ("b".to_owned(), "two".to_owned())
            ]
        );
        assert!(tally(&json!([])).is_err(), "nothing scored is a failure");
    }
}
