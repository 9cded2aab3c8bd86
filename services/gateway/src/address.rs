//! The per-address connection limit: which remote address a connection comes from (through
//! trusted proxies' `X-Forwarded-For`), and how many connections each address holds.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
};

/// An address range, `a.b.c.d/n`, `x::y/n`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(ipnet::IpNet);

/// A `--trusted-proxies` entry that is not an address or an address range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or an address range like 10.0.0.0/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(Self)
            .map_err(|_| CidrError(text.to_owned()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Cidr {
    /// Whether `address` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.contains(&address.to_canonical())
    }
}

/// The default `--trusted-proxies`: loopback only (a proxy in the same pod). No private
/// range: behind a load balancer that translates addresses, or beside any pod of the
/// cluster, a private peer is not necessarily a proxy that wrote an honest entry. The
/// operator adds the Ingress controller's ranges the canvas names.
pub const DEFAULT_TRUSTED_PROXIES: &str = pixel_common::ports::LOOPBACK_PROXIES;

/// The address a connection is counted against: its peer, or, when the peer is a trusted
/// proxy, the right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries
/// further left were written by the client and prove nothing).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |address: IpAddr| trusted.iter().any(|range| range.contains(address));
    let mut address = peer.to_canonical();
    let Some(forwarded_for) = forwarded_for else {
        return address;
    };
    for hop in forwarded_for.rsplit(',') {
        if !is_trusted(address) {
            break;
        }
        match hop.trim().parse::<IpAddr>() {
            Ok(hop) => address = hop.to_canonical(),
            // A malformed entry: nothing left of it can be believed.
            Err(_) => break,
        }
    }
    address
}

/// Connections per remote address, at most `max` each (0: no limit).
#[derive(Debug)]
pub struct AddressLimits {
    max: usize,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its address; released when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    address: IpAddr,
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl AddressLimits {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            held: Arc::default(),
        }
    }

    /// A slot for `address`, unless it holds `max` connections already.
    pub fn acquire(&self, address: IpAddr) -> Option<AddressSlot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(address).or_insert(0);
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            address,
            held: Arc::clone(&self.held),
        })
    }

    /// How many addresses hold a connection (the map never outgrows the connections).
    pub fn addresses(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(list: &str) -> Vec<Cidr> {
        list.split(',').map(|r| r.parse().expect("range")).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn ranges_parse_and_match() {
        let private = ranges("10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7");
        for inside in [
            "10.1.2.3",
            "172.31.0.1",
            "192.168.9.9",
            "fd00::7",
            "::ffff:10.0.0.1",
        ] {
            assert!(private.iter().any(|r| r.contains(ip(inside))), "{inside}");
        }
        for outside in [
            "172.32.0.1",
            "8.8.8.8",
            "2001:db8::1",
            "11.0.0.0",
            "127.0.0.1",
        ] {
            assert!(
                !private.iter().any(|r| r.contains(ip(outside))),
                "{outside}"
            );
        }
        assert!(ranges("0.0.0.0/0")[0].contains(ip("1.2.3.4")));
        assert!(ranges("203.0.113.7")[0].contains(ip("203.0.113.7")));
        assert!(!ranges("203.0.113.7")[0].contains(ip("203.0.113.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    /// By default only a proxy in the pod is believed: a private peer (another pod, a
    /// translating load balancer) that writes `X-Forwarded-For` is counted as itself.
    #[test]
    fn by_default_only_loopback_is_a_trusted_proxy() {
        let trusted = ranges(DEFAULT_TRUSTED_PROXIES);
        for peer in [
            "10.0.0.5",
            "172.16.0.1",
            "192.168.1.1",
            "fd00::1",
            "198.18.0.7",
        ] {
            assert_eq!(
                client_address(ip(peer), Some("203.0.113.9"), &trusted),
                ip(peer),
                "{peer}"
            );
        }
        for peer in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                client_address(ip(peer), Some("203.0.113.9"), &trusted),
                ip("203.0.113.9"),
                "{peer}"
            );
        }
    }

    #[test]
    fn the_client_address_is_the_first_untrusted_hop_from_the_right() {
        let trusted = ranges("10.0.0.0/8");
        // Direct: the peer, whatever the client wrote.
        assert_eq!(
            client_address(ip("8.8.8.8"), Some("1.1.1.1"), &trusted),
            ip("8.8.8.8")
        );
        // Through the Ingress (10.x): the address it saw; the forged entry left of it is ignored.
        assert_eq!(
            client_address(ip("10.0.0.5"), Some("6.6.6.6, 9.9.9.9"), &trusted),
            ip("9.9.9.9")
        );
        // Two proxies in the cluster.
        assert_eq!(
            client_address(ip("10.0.0.5"), Some("9.9.9.9,10.0.0.9"), &trusted),
            ip("9.9.9.9")
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), None, &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), Some("junk"), &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(
            client_address(ip("10.0.0.5"), Some("9.9.9.9"), &[]),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn slots_are_counted_per_address_and_released() {
        let limits = AddressLimits::new(2);
        let (a, b) = (ip("1.1.1.1"), ip("2.2.2.2"));
        let first = limits.acquire(a).expect("first");
        let _second = limits.acquire(a).expect("second");
        assert!(limits.acquire(a).is_none(), "a is full");
        let other = limits.acquire(b).expect("b has its own count");
        drop(first);
        let _third = limits.acquire(a).expect("a released slot");
        drop(other);
        assert_eq!(limits.addresses(), 1, "released addresses are forgotten");
        let unlimited = AddressLimits::new(0);
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.acquire(a)).collect();
        assert_eq!(held.len(), 1000);
    }
}
