//! What a benchmark run produces: one row per figure, the machine it ran on, and the table
//! printed and written as Markdown and JSON.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::stats;

/// One measured figure beside its peer or limit from the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// The benchmark's name, as `cargo xtask bench NAME` takes it.
    pub name: String,
    /// What is counted, e.g. `placements/s`.
    pub metric: String,
    /// Our figure: the median over the rounds.
    pub ours: f64,
    /// What the peer or limit is, e.g. `redis-benchmark BITFIELD SET`.
    pub peer_name: String,
    /// The peer's or limit's figure: the median over the same rounds.
    pub peer: f64,
    /// `ours / peer`; `None` when the peer measured nothing.
    pub ratio: Option<f64>,
    /// The goal as a ratio, a minimum unless `at_most`; `None` for a figure that is
    /// reported only.
    pub target: Option<f64>,
    /// The target is a maximum: lower is better (latencies, memory, time against a limit).
    #[serde(default)]
    pub at_most: bool,
    /// How many rounds the medians are taken over.
    pub rounds: usize,
    /// Further figures (latencies, error counts), as `label: value` lines.
    pub details: Vec<String>,
}

impl BenchResult {
    /// Builds a row, computing the ratio.
    pub fn new(
        name: &str,
        metric: &str,
        ours: f64,
        peer_name: &str,
        peer: f64,
        target: Option<f64>,
        rounds: usize,
    ) -> Self {
        Self {
            name: name.to_owned(),
            metric: metric.to_owned(),
            ours,
            peer_name: peer_name.to_owned(),
            peer,
            ratio: stats::ratio(ours, peer),
            target,
            at_most: false,
            rounds,
            details: Vec::new(),
        }
    }

    /// The same row with a maximum ratio as its target: lower is better.
    pub fn at_most(mut self, target: f64) -> Self {
        self.target = Some(target);
        self.at_most = true;
        self
    }

    /// `met`, `MISSED`, or `reported` when there is no target.
    pub fn verdict(&self) -> &'static str {
        match self.target {
            None => "reported",
            Some(target) if self.at_most && self.ratio.is_some_and(|r| r <= target) => "met",
            Some(target) if !self.at_most && stats::meets(self.ratio, target) => "met",
            Some(_) => "MISSED",
        }
    }
}

/// The machine a run happened on and how the processes were placed on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// The cores the servers (redis-server, canvas-api) were pinned to, as `taskset -c` takes.
    pub server_cores: String,
    /// The cores the load generators (ours and redis-benchmark) were pinned to.
    pub load_cores: String,
}

/// The whole run, as written to `target/bench/results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Seconds since the Unix epoch when the run finished.
    pub finished_at_unix: u64,
    pub machine: Machine,
    pub results: Vec<BenchResult>,
}

/// The CPU model from `/proc/cpuinfo`'s first `model name` line.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

fn figure(value: f64) -> String {
    if !value.is_finite() {
        "n/a".to_owned()
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// The report as Markdown: the machine, then one table row per result, then the details.
pub fn markdown(report: &Report) -> String {
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {} cores, {}, Linux {}; servers pinned to core(s) {}, load generators to core(s) {}.\n",
        m.cores, m.cpu_model, m.kernel, m.server_cores, m.load_cores
    );
    out.push_str(
        "| benchmark | metric | ours | peer / limit | peer | ratio | target | result |\n\
         |---|---|---:|---|---:|---:|---:|---|\n",
    );
    for r in &report.results {
        let ratio = r
            .ratio
            .map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}x"));
        let target = r.target.map_or_else(
            || "—".to_owned(),
            |t| format!("{} {t}x", if r.at_most { "≤" } else { "≥" }),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.metric,
            figure(r.ours),
            r.peer_name,
            figure(r.peer),
            ratio,
            target,
            r.verdict()
        );
    }
    for r in report.results.iter().filter(|r| !r.details.is_empty()) {
        let _ = writeln!(out, "\n{} (medians of {} rounds):", r.name, r.rounds);
        for line in &r.details {
            let _ = writeln!(out, "- {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_targets_are_met_from_below() {
        let row = |ours| BenchResult::new("b", "ms", ours, "limit", 100.0, None, 1).at_most(1.0);
        assert_eq!(row(80.0).verdict(), "met");
        assert_eq!(row(100.0).verdict(), "met");
        assert_eq!(row(120.0).verdict(), "MISSED");
        assert!(
            markdown(&Report {
                results: vec![row(80.0)],
                ..sample()
            })
            .contains("≤ 1x")
        );
    }

    fn sample() -> Report {
        let mut placements = BenchResult::new(
            "api-placements",
            "placements/s",
            9000.0,
            "redis-benchmark BITFIELD SET",
            30000.0,
            Some(0.5),
            5,
        );
        placements.details.push("p99 12.00 ms".to_owned());
        Report {
            finished_at_unix: 1,
            machine: Machine {
                cores: 2,
                cpu_model: "AMD EPYC".to_owned(),
                kernel: "6.1".to_owned(),
                server_cores: "0".to_owned(),
                load_cores: "1".to_owned(),
            },
            results: vec![
                placements,
                BenchResult::new(
                    "api-snapshot",
                    "snapshots/s",
                    2000.0,
                    "redis GET",
                    500.0,
                    Some(2.0),
                    5,
                ),
                BenchResult::new("api-snapshot-304", "304/s", 1.5, "redis GET", 0.0, None, 5),
            ],
        }
    }

    #[test]
    fn verdicts_follow_ratio_and_target() {
        let report = sample();
        let verdicts: Vec<_> = report.results.iter().map(BenchResult::verdict).collect();
        assert_eq!(verdicts, ["MISSED", "met", "reported"]);
        assert_eq!(report.results[0].ratio, Some(0.3));
        assert_eq!(report.results[2].ratio, None);
    }

    #[test]
    fn markdown_table_has_a_row_per_result() {
        let md = markdown(&sample());
        assert!(md.contains("2 cores, AMD EPYC"), "{md}");
        assert!(
            md.contains(
                "| api-placements | placements/s | 9000 | redis-benchmark BITFIELD SET | 30000 | 0.30x | ≥ 0.5x | MISSED |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| api-snapshot | snapshots/s | 2000 | redis GET | 500 | 4.00x | ≥ 2x | met |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| api-snapshot-304 | 304/s | 1.50 | redis GET | 0.00 | n/a | — | reported |"
            ),
            "{md}"
        );
        assert!(md.contains("- p99 12.00 ms"), "{md}");
    }

    #[test]
    fn report_round_trips_through_json() {
        let report = sample();
        let text = serde_json::to_string_pretty(&report).expect("serializes");
        let back: Report = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, report);
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
                       processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }
}
