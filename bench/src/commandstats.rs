//! Where Redis spends a placement: its `INFO commandstats` over one round of ours, split
//! into the placement script's whole time (`EVALSHA`) and the commands the script calls.
//! What the script takes beyond its commands is Lua itself: the bridge each `redis.call`
//! crosses, and turning the call's keys and arguments into Lua strings.

use std::collections::BTreeMap;

/// Microseconds Redis spent per placement, by command.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptTime {
    /// The whole script call (`EVALSHA`, or `EVAL`), commands included.
    pub script_us: f64,
    /// Each command the script called, the most expensive first.
    pub commands: Vec<(String, f64)>,
}

impl ScriptTime {
    /// From `INFO commandstats` taken after `placements` placements (the statistics reset
    /// before them). `None` when no script ran.
    pub fn of(info: &str, placements: u64) -> Option<Self> {
        if placements == 0 {
            return None;
        }
        let per_placement = |usec: u64| usec as f64 / placements as f64;
        let mut script_us = None;
        let mut commands = Vec::new();
        for (name, usec) in usec_by_command(info) {
            match name.as_str() {
                "evalsha" | "eval" => *script_us.get_or_insert(0.0) += per_placement(usec),
                // Not the script's: the benchmark's own calls around the round, and
                // canvas-api's health checks.
                "info" | "config|resetstat" | "ping" => {}
                _ => commands.push((name, per_placement(usec))),
            }
        }
        commands.sort_by(|a, b| b.1.total_cmp(&a.1));
        Some(Self {
            script_us: script_us?,
            commands,
        })
    }

    /// The commands' share of the script's time.
    pub fn commands_us(&self) -> f64 {
        self.commands.iter().map(|(_, us)| us).sum()
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let each: Vec<String> = self
            .commands
            .iter()
            .map(|(name, us)| format!("{} {us:.2}", name.to_ascii_uppercase()))
            .collect();
        format!(
            "Redis per placement (INFO commandstats, last round): the script {:.1} µs, of which \
             its commands {:.1} µs ({}); the rest is Lua and its bridge to the commands",
            self.script_us,
            self.commands_us(),
            each.join(", "),
        )
    }
}

/// `cmdstat_<name>:calls=..,usec=..,...` lines: each command's total microseconds.
fn usec_by_command(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let usec = fields
                .split(',')
                .find_map(|field| field.strip_prefix("usec="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), usec))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Commandstats\r\n\
        cmdstat_evalsha:calls=10,usec=2000,usec_per_call=200.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_set:calls=200,usec=400,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_xadd:calls=100,usec=150,usec_per_call=1.50,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_config|resetstat:calls=1,usec=30,usec_per_call=30.00\r\n\
        cmdstat_info:calls=1,usec=70,usec_per_call=70.00\r\n\
        cmdstat_ping:calls=3,usec=2,usec_per_call=0.67\r\n";

    #[test]
    fn splits_the_script_from_its_commands_per_placement() {
        let time = ScriptTime::of(INFO, 100).expect("a script ran");
        assert_eq!(time.script_us, 20.0);
        assert_eq!(
            time.commands,
            vec![("set".to_owned(), 4.0), ("xadd".to_owned(), 1.5)]
        );
        assert_eq!(time.commands_us(), 5.5);
        assert!(
            time.describe()
                .contains("the script 20.0 µs, of which its commands 5.5 µs (SET 4.00, XADD 1.50)"),
            "{}",
            time.describe()
        );
    }

    #[test]
    fn no_script_or_no_placements_is_no_figure() {
        assert_eq!(ScriptTime::of("cmdstat_get:calls=1,usec=5\r\n", 10), None);
        assert_eq!(ScriptTime::of(INFO, 0), None);
    }
}
