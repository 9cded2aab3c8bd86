//! Every address a local cluster uses, from its slot: all inside 198.18.0.0/15 (RFC 2544's
//! benchmarking range), so nothing collides with a real network and no route leads off the
//! machine. Each cluster has its own slot, so the developer's and the test run's clusters
//! can run side by side.

use std::net::Ipv4Addr;

/// The range every address comes from.
pub const RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// A cluster's addresses. Slots 0 to 2 are in use (developer, test, benchmark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPlan {
    slot: u8,
}

impl AddressPlan {
    pub const fn new(slot: u8) -> Self {
        assert!(slot < 3, "three clusters have address slots");
        Self { slot }
    }

    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// The real node's pods (its CNI bridge's subnet): 198.18.<slot>.0/24.
    pub fn real_pods(&self) -> String {
        format!("198.18.{}.0/24", self.slot)
    }

    /// The bridge's own address, the pods' default gateway.
    pub fn bridge_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.slot, 1)
    }

    /// Where KWOK's fake pods take addresses from (never routed: they run nothing).
    pub fn fake_pods(&self) -> String {
        format!("198.18.{}.0/18", 64 * (u16::from(self.slot) + 1))
    }

    /// The first fake node's pod CIDR; each further node takes the next /24.
    pub fn first_fake_node_pods(&self) -> String {
        format!("198.18.{}.0/24", 64 * (u16::from(self.slot) + 1))
    }

    /// The first fake node's address; each further node takes the next one.
    pub fn first_fake_node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 252 + self.slot, 1)
    }

    /// The Service (ClusterIP) range.
    pub fn services(&self) -> String {
        format!("198.19.{}.0/18", 64 * self.slot)
    }

    /// The `kubernetes` Service's ClusterIP: the first address of the Service range.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 64 * self.slot, 1)
    }

    /// The host's end of the link to the node's network namespace. kube-apiserver advertises
    /// it; an nftables rule forwards its port there to kube-apiserver on 127.0.0.1.
    pub fn host_link(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 255, 4 * self.slot + 1)
    }

    /// The node's end of the link: its InternalIP, where kubelet and CoreDNS listen.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 255, 4 * self.slot + 2)
    }

    /// The link's prefix length (a /30: the two ends).
    pub const LINK_PREFIX: u8 = 30;
}

/// Whether `cidr` ("a.b.c.d/n") lies inside `outer`.
pub fn contains(outer: (Ipv4Addr, u8), cidr: &str) -> bool {
    let Some((address, prefix)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(address), Ok(prefix)) = (address.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
        return false;
    };
    prefix >= outer.1 && same_prefix(address, outer.0, outer.1)
}

fn same_prefix(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// Whether two CIDRs share any address.
pub fn overlaps(a: &str, b: &str) -> bool {
    let parse = |cidr: &str| -> (Ipv4Addr, u8) {
        let (address, prefix) = cidr.split_once('/').expect("a CIDR");
        (
            address.parse().expect("an IPv4 address"),
            prefix.parse().expect("a prefix length"),
        )
    };
    let (a, b) = (parse(a), parse(b));
    same_prefix(a.0, b.0, a.1.min(b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans() -> Vec<AddressPlan> {
        (0..3).map(AddressPlan::new).collect()
    }

    fn ranges(plan: &AddressPlan) -> Vec<String> {
        vec![
            plan.real_pods(),
            plan.fake_pods(),
            plan.services(),
            format!("{}/30", plan.host_link()),
            format!("{}/24", plan.first_fake_node_ip()),
        ]
    }

    #[test]
    fn every_range_is_inside_the_benchmarking_range() {
        for plan in plans() {
            for range in ranges(&plan) {
                assert!(contains(RANGE, &range), "{range} of slot {}", plan.slot());
            }
            assert!(contains(RANGE, &format!("{}/32", plan.node_ip())));
        }
    }

    #[test]
    fn no_two_ranges_overlap_within_or_across_clusters() {
        let all: Vec<(u8, String)> = plans()
            .iter()
            .flat_map(|plan| ranges(plan).into_iter().map(|r| (plan.slot(), r)))
            .collect();
        for (i, (slot_a, a)) in all.iter().enumerate() {
            for (slot_b, b) in &all[i + 1..] {
                assert!(
                    !overlaps(a, b),
                    "{a} (slot {slot_a}) overlaps {b} (slot {slot_b})"
                );
            }
        }
    }

    #[test]
    fn addresses_sit_in_their_ranges() {
        for plan in plans() {
            assert!(contains((plan.bridge_gateway(), 24), &plan.real_pods()));
            assert!(contains(
                (plan.kubernetes_service_ip(), 18),
                &plan.services()
            ));
            assert!(contains(
                (plan.host_link(), AddressPlan::LINK_PREFIX),
                &format!("{}/32", plan.node_ip())
            ));
            assert!(contains(
                (
                    plan.first_fake_node_pods()
                        .split('/')
                        .next()
                        .expect("a CIDR")
                        .parse()
                        .expect("an address"),
                    18
                ),
                &plan.fake_pods()
            ));
        }
    }

    #[test]
    fn private_ranges_are_not_inside() {
        for private in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "198.20.0.0/16",
        ] {
            assert!(!contains(RANGE, private), "{private}");
        }
    }
}
