//! Architecture invariant: the contract is defined once. No Rust source of the repository
//! spells out a `PIXEL_` environment name, a well-known port or a Redis key outside the
//! module that defines it; everything else names the constant.
//!
//! The rules, per line of every `.rs` file under `operator/`, `services/` (with the fuzz
//! workspace and every crate's tests), `xtask/`, `bench/`, `e2e/harness/` and
//! `e2e/browser/`; comment lines (`//`, `///`, `//!`) are not code and are skipped:
//!
//! - an environment name: a string literal that starts with `PIXEL_` (`"PIXEL_…`). Defined
//!   in `services/common/src/ports.rs`, except the tooling's own two, each in the harness
//!   module that reads it ([`TOOLING_ENV`]).
//! - a port: one of the `u16` constants of `ports.rs` (3000, 3001, 3002, 6379, 8080, read
//!   from that file) as a whole number, where it can only be a port: right after a `:`
//!   (`127.0.0.1:3001`, `"gw:3002"`), or after the word `port` and at most a few quotes,
//!   colons, commas, equals signs and spaces (`port: 3001`, `"port": 3001`,
//!   `"--port", "6379"`). A timeout of 3000 ms or a count of 8080 is not one.
//! - a Redis key: any of the string constants of `services/common/src/redis_schema.rs`
//!   (read from that file) anywhere in a line.
//!
//! A test that must spell a format out byte by byte may be excepted by an entry in
//! [`ALLOWED`], which says why.

use std::path::{Path, PathBuf};

use pixel_harness::paths::repo_root;

/// Where the contract is defined.
const PORTS: &str = "services/common/src/ports.rs";
const REDIS_SCHEMA: &str = "services/common/src/redis_schema.rs";

/// The tooling's own environment names (not the services'), and the module defining each.
const TOOLING_ENV: [(&str, &str); 2] = [
    (pixel_harness::paths::ENV_CACHE, "e2e/harness/src/paths.rs"),
    (
        pixel_harness::cluster::ENV_APISERVER_PORT,
        "e2e/harness/src/cluster.rs",
    ),
];

/// The prefix of every environment name, split so this file does not match its own rule.
const ENV_PREFIX: &str = concat!("PIX", "EL_");

/// Files excepted from the rules, each with its reason. None needs it today: every test
/// builds its literals from the constants.
const ALLOWED: &[(&str, &str)] = &[];

/// The directories scanned, relative to the repository root.
const ROOTS: [&str; 6] = [
    "operator",
    "services",
    "xtask",
    "bench",
    "e2e/harness",
    "e2e/browser",
];

/// What the rules look for, read from the defining modules.
#[derive(Debug)]
struct Contract {
    ports: Vec<String>,
    redis_keys: Vec<String>,
}

impl Contract {
    fn read() -> Self {
        let ports = read(PORTS);
        let schema = read(REDIS_SCHEMA);
        let contract = Self {
            ports: ports
                .lines()
                .filter_map(|l| const_value(l, ": u16 = "))
                .map(|v| v.trim_end_matches(';').to_owned())
                .collect(),
            redis_keys: schema
                .lines()
                .filter_map(|l| const_value(l, ": &str = \""))
                .map(|v| v.trim_end_matches("\";").to_owned())
                .collect(),
        };
        assert!(
            contract.ports.len() >= 5,
            "ports found: {:?}",
            contract.ports
        );
        assert!(
            contract.redis_keys.len() >= 7,
            "Redis keys found: {:?}",
            contract.redis_keys
        );
        contract
    }

    /// What `line` of `file` spells out that only its defining module may.
    fn offences(&self, file: &str, line: &str) -> Vec<String> {
        let code = line.trim_start();
        if code.starts_with("//") {
            return Vec::new();
        }
        let mut found = Vec::new();
        for (at, _) in code
            .match_indices(ENV_PREFIX)
            .filter(|(at, _)| code[..*at].ends_with('"'))
        {
            let name: String = code[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let home = TOOLING_ENV
                .iter()
                .find(|(tooling, _)| *tooling == name)
                .map_or(PORTS, |(_, home)| home);
            if file != home {
                found.push(format!("environment name {name} (defined in {home})"));
            }
        }
        if file != PORTS {
            for port in &self.ports {
                if port_literal_in(code, port) {
                    found.push(format!("port {port} (defined in {PORTS})"));
                }
            }
        }
        if file != REDIS_SCHEMA {
            for key in &self.redis_keys {
                if code.contains(key.as_str()) {
                    found.push(format!("Redis key {key:?} (defined in {REDIS_SCHEMA})"));
                }
            }
        }
        found
    }
}

/// The value of `pub const NAME<sep>value` on a line, from `sep` on.
fn const_value<'a>(line: &'a str, sep: &str) -> Option<&'a str> {
    let rest = line.trim().strip_prefix("pub const ")?;
    let (_, value) = rest.split_once(sep)?;
    Some(value)
}

/// Whether `port` occurs in `code` as a whole number where it can only be a port (see the
/// module documentation).
fn port_literal_in(code: &str, port: &str) -> bool {
    code.match_indices(port).any(|(at, _)| {
        let before = &code[..at];
        let after = &code[at + port.len()..];
        let whole = !before.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if !whole {
            return false;
        }
        if before.ends_with(':') {
            return true;
        }
        let gap = before.trim_end_matches(['"', ':', ',', '=', ' ']);
        before.len() - gap.len() <= 5 && gap.to_ascii_lowercase().ends_with("port")
    })
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `.rs` file below `dir`, skipping build output.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_contract_is_spelled_out_only_where_it_is_defined() {
    let contract = Contract::read();
    let root = repo_root();
    let mut files = Vec::new();
    for dir in ROOTS {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "only {} Rust files found", files.len());
    let mut offences = Vec::new();
    for path in files {
        let file = path
            .strip_prefix(&root)
            .expect("below the root")
            .to_string_lossy()
            .into_owned();
        if ALLOWED.iter().any(|(allowed, _)| *allowed == file) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (number, line) in text.lines().enumerate() {
            for offence in contract.offences(&file, line) {
                offences.push(format!("{file}:{}: {offence}", number + 1));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the contract is spelled out outside its modules; use the constants:\n{}",
        offences.join("\n")
    );
}

/// The rules catch what they are meant to, and only that. The planted literals are built
/// at run time, so this file does not spell them out itself.
#[test]
fn planted_literals_are_caught() {
    let contract = Contract::read();
    let file = "xtask/src/somewhere.rs";
    let env = format!(".env(\"{ENV_PREFIX}LISTEN_ADDR\", addr)");
    assert_eq!(contract.offences(file, &env).len(), 1, "{env}");
    assert!(contract.offences(PORTS, &env).is_empty());
    let tooling = format!("var_os(\"{ENV_PREFIX}PLAYGROUND_CACHE\")");
    assert_eq!(contract.offences(file, &tooling).len(), 1);
    assert!(
        contract
            .offences("e2e/harness/src/paths.rs", &tooling)
            .is_empty()
    );
    let port = pixel_common::ports::CANVAS_API;
    for planted in [
        format!("let url = \"http://127.0.0.1:{port}/readyz\";"),
        format!("\"spec\": {{\"ports\": [{{\"port\": {port}}}]}}"),
        format!("args([\"--port\", \"{port}\"])"),
        format!("Some(\"gw:{port}\")"),
    ] {
        assert_eq!(contract.offences(file, &planted).len(), 1, "{planted}");
    }
    for innocent in [
        format!("retry_after_ms: Some({})", 3000),
        format!("#[arg(long, default_value_t = {})]", 3000),
        format!("rss_peak_kib: {},", 3000),
        format!("let n = {port}0;"),
        format!("// listens on :{port}"),
    ] {
        assert!(contract.offences(file, &innocent).is_empty(), "{innocent}");
    }
    let key = format!("&[\"GET\", \"canvas{}pixels\"]", ':');
    assert_eq!(contract.offences(file, &key).len(), 1, "{key}");
    assert!(contract.offences(REDIS_SCHEMA, &key).is_empty());
}
