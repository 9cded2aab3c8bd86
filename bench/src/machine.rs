//! The machine a run measures on, and how its cores are split between the servers and the
//! load generators.

use anyhow::{Context, Result, bail};

use crate::report::{self, Machine};

/// Expands a Linux CPU list (`0-3,6`) into core numbers.
fn parse_cpu_list(list: &str) -> Result<Vec<u32>> {
    let mut cores = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (first.parse()?, last.parse()?);
                if last < first || last - first > 4096 {
                    bail!("bad CPU range `{part}`");
                }
                cores.extend(first..=last);
            }
            None => cores.push(part.parse()?),
        }
    }
    if cores.is_empty() {
        bail!("empty CPU list `{list}`");
    }
    Ok(cores)
}

/// Splits the cores this process may use: the first half for the servers, the rest for
/// the load generators. With one core both share it.
fn split_cores(cores: &[u32]) -> (String, String) {
    let join = |part: &[u32]| {
        part.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if cores.len() < 2 {
        return (join(cores), join(cores));
    }
    let (server, load) = cores.split_at(cores.len() / 2);
    (join(server), join(load))
}

/// This process's cores, split, with the CPU model and kernel for the report.
pub fn detect() -> Result<Machine> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let allowed = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?;
    let cores = parse_cpu_list(allowed)?;
    let (server_cores, load_cores) = split_cores(&cores);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Ok(Machine {
        cores: cores.len(),
        cpu_model: report::cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU".to_owned()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned()),
        server_cores,
        load_cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_expand() {
        assert_eq!(parse_cpu_list("0-1\n").expect("parses"), [0, 1]);
        assert_eq!(parse_cpu_list("0,2-4,7").expect("parses"), [0, 2, 3, 4, 7]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }

    #[test]
    fn cores_are_split_between_servers_and_load() {
        assert_eq!(split_cores(&[0, 1]), ("0".to_owned(), "1".to_owned()));
        assert_eq!(
            split_cores(&[0, 1, 2, 3]),
            ("0,1".to_owned(), "2,3".to_owned())
        );
        assert_eq!(split_cores(&[5]), ("5".to_owned(), "5".to_owned()));
    }
}
