//! Which gateway pod serves a client: each pod's `gateway_connections` gauge, read before and
//! after the client connects. The pods are reached directly (the host routes to pod
//! addresses), not through the Ingress, which would pick one for us.

use std::{fmt, str::FromStr, time::Duration};

use anyhow::{Context, Result, bail};
use pixel_common::ports::GATEWAY_CONNECTIONS_METRIC;
use tokio::time::Instant;

use crate::POLL;

/// One gateway pod's metrics endpoint, `[NAME=]http://<pod IP>:<port>/metrics`; `NAME` (the
/// pod's name, say) labels it in the summary, else its address does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub name: String,
    pub url: String,
}

impl FromStr for Gateway {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (name, url) = match spec.split_once('=') {
            Some((name, url)) if !name.contains("://") => (Some(name.trim()), url.trim()),
            _ => (None, spec.trim()),
        };
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!("{url:?} is not an http:// URL"));
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(format!("{url:?} names no host"));
        }
        let name = match name {
            Some("") => return Err(format!("{spec:?} has an empty name before `=`")),
            Some(name) => name.to_owned(),
            None => authority.to_owned(),
        };
        Ok(Self {
            name,
            url: url.to_owned(),
        })
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.url)
    }
}

/// The value of an unlabelled gauge in a Prometheus/OpenMetrics text exposition.
pub fn gauge(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(name))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

/// Every pod's connection count at one moment; `None` for a pod that did not answer (one
/// scaled away, say).
pub type Counts = Vec<Option<i64>>;

/// Reads each gateway's connections gauge (concurrently, each bounded by a few seconds).
pub async fn counts(gateways: &[Gateway]) -> Counts {
    read_all(gateways)
        .await
        .into_iter()
        .map(Result::ok)
        .collect()
}

async fn read_all(gateways: &[Gateway]) -> Vec<Result<i64>> {
    let reads: Vec<_> = gateways
        .iter()
        .map(|g| {
            let url = g.url.clone();
            tokio::task::spawn_blocking(move || read_gauge(&url))
        })
        .collect();
    let mut counts = Vec::with_capacity(reads.len());
    for read in reads {
        counts.push(read.await.map_err(anyhow::Error::from).and_then(|r| r));
    }
    counts
}

fn read_gauge(url: &str) -> Result<i64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let text = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .body_mut()
        .read_to_string()?;
    let value = gauge(&text, GATEWAY_CONNECTIONS_METRIC)
        .with_context(|| format!("{url} shows no {GATEWAY_CONNECTIONS_METRIC}"))?;
    // A gauge of connections is a whole number.
    Ok(value.round() as i64)
}

/// Fails unless every gateway answers; returns the counts.
pub async fn all_counts(gateways: &[Gateway]) -> Result<Vec<i64>> {
    gateways
        .iter()
        .zip(read_all(gateways).await)
        .map(|(g, c)| c.with_context(|| format!("gateway {} does not serve its metrics", g.name)))
        .collect()
}

/// Which gateway gained the one connection opened since `before`: polls until exactly one
/// answering pod shows one more and no other changed, at most `patience`.
pub async fn which_gained(
    gateways: &[Gateway],
    before: &Counts,
    patience: Duration,
) -> Result<usize> {
    let started = Instant::now();
    let mut now = counts(gateways).await;
    loop {
        if let Some(index) = single_gain(before, &now) {
            return Ok(index);
        }
        if started.elapsed() >= patience {
            bail!(
                "cannot tell which gateway serves the new connection: connections before {}, \
                 after {} (another client connecting at the same time, or a gateway not \
                 listed with --gateway-metrics)",
                show(gateways, before),
                show(gateways, &now)
            );
        }
        tokio::time::sleep(POLL).await;
        now = counts(gateways).await;
    }
}

/// The index of the only pod whose count rose by one, when every other stayed.
fn single_gain(before: &Counts, now: &Counts) -> Option<usize> {
    let mut gained = None;
    for (index, (b, n)) in before.iter().zip(now).enumerate() {
        match (b, n) {
            (Some(b), Some(n)) if n - b == 1 && gained.is_none() => gained = Some(index),
            (Some(b), Some(n)) if n == b => {}
            // A pod that vanished (or came back) holds none of the new connection.
            (None, _) | (_, None) => {}
            _ => return None,
        }
    }
    gained
}

/// Waits until gateway `index` is back at `count` connections (a closed client counted
/// out), at most `patience`.
pub async fn wait_count(
    gateways: &[Gateway],
    index: usize,
    count: i64,
    patience: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let now = counts(gateways).await;
        if now.get(index).copied().flatten() == Some(count) {
            return Ok(());
        }
        if started.elapsed() >= patience {
            bail!(
                "gateway {} still holds {:?} connections, not {count}, after {patience:?}",
                gateways[index],
                now.get(index).copied().flatten()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn show(gateways: &[Gateway], counts: &Counts) -> String {
    gateways
        .iter()
        .zip(counts)
        .map(|(g, c)| match c {
            Some(c) => format!("{}={c}", g.name),
            None => format!("{}=unreachable", g.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_is_named_or_labelled_by_its_address() {
        let named: Gateway = "demo-gateway-1=http://198.18.0.9:9/metrics"
            .parse()
            .expect("parses");
        assert_eq!(named.name, "demo-gateway-1");
        assert_eq!(named.url, "http://198.18.0.9:9/metrics");
        let bare: Gateway = "http://198.18.0.9:9/metrics?a=b".parse().expect("parses");
        assert_eq!(bare.name, "198.18.0.9:9");
        assert_eq!(bare.url, "http://198.18.0.9:9/metrics?a=b");
        assert!("=http://x/metrics".parse::<Gateway>().is_err());
        assert!("name=https://x/metrics".parse::<Gateway>().is_err());
        assert!("http:///metrics".parse::<Gateway>().is_err());
    }

    #[test]
    fn the_gauge_is_read_by_its_exact_name() {
        let text = "# HELP gateway_connections WebSocket clients\n# TYPE gateway_connections gauge\n\
                    gateway_connections_refused_total{reason=\"origin\"} 4\n\
                    gateway_connections 3\n# EOF\n";
        assert_eq!(gauge(text, "gateway_connections"), Some(3.0));
        assert_eq!(gauge(text, "gateway_subscription_live"), None);
    }

    #[test]
    fn one_gain_names_its_pod_and_nothing_else_does() {
        assert_eq!(
            single_gain(&vec![Some(2), Some(5)], &vec![Some(2), Some(6)]),
            Some(1)
        );
        assert_eq!(
            single_gain(&vec![Some(2), Some(5)], &vec![Some(3), Some(5)]),
            Some(0)
        );
        // Nothing yet, two gains, a loss meanwhile: cannot tell.
        assert_eq!(
            single_gain(&vec![Some(2), Some(5)], &vec![Some(2), Some(5)]),
            None
        );
        assert_eq!(
            single_gain(&vec![Some(2), Some(5)], &vec![Some(3), Some(6)]),
            None
        );
        assert_eq!(
            single_gain(&vec![Some(2), Some(5)], &vec![Some(3), Some(4)]),
            None
        );
        assert_eq!(
            single_gain(&vec![Some(2), Some(5)], &vec![Some(4), Some(5)]),
            None
        );
        // A pod scaled away does not count.
        assert_eq!(
            single_gain(&vec![None, Some(5)], &vec![None, Some(6)]),
            Some(1)
        );
        assert_eq!(
            single_gain(&vec![Some(3), Some(5)], &vec![None, Some(6)]),
            Some(1)
        );
    }
}
