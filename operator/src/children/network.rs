//! NetworkPolicies: who may open a port of the canvas's pods. Redis takes only the canvas's
//! canvas-api and gateway; canvas-api takes only the gateway, the Ingress controller's
//! namespaces and the metrics scrapers' (`spec.networkPolicy`), so that nothing else in
//! the cluster reaches its internal endpoints.

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
        util::intstr::IntOrString,
    },
};
use pixel_common::ports;

use super::{
    Inputs,
    naming::{APP, Component, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME},
};

/// The label every namespace carries with its own name (set by the API server).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Only this canvas's canvas-api and gateway pods may connect to its Redis, on its port.
pub fn redis(inputs: &Inputs) -> NetworkPolicy {
    let clients = pods_of(inputs, &[Component::Api, Component::Gateway]);
    policy(inputs, Component::Redis, ports::REDIS, vec![clients])
}

/// canvas-api's port admits this canvas's gateway pods and every pod of the namespaces
/// `spec.networkPolicy` names (its Ingress controller, its metrics scrapers), and the
/// addresses of a host-network controller (`ingressControllerCIDRs`), which is in no
/// namespace a policy can name. `None` when `spec.networkPolicy.enabled` is off.
pub fn api(inputs: &Inputs) -> Option<NetworkPolicy> {
    let spec = &inputs.canvas.spec.network_policy;
    if !spec.enabled {
        return None;
    }
    let mut namespaces: Vec<String> = spec
        .ingress_controller_namespaces
        .iter()
        .chain(&spec.metrics_namespaces)
        .cloned()
        .collect();
    namespaces.sort();
    namespaces.dedup();
    let mut peers = vec![pods_of(inputs, &[Component::Gateway])];
    if !namespaces.is_empty() {
        peers.push(NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: NAMESPACE_NAME_LABEL.to_owned(),
                    operator: "In".to_owned(),
                    values: Some(namespaces),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    peers.extend(
        spec.ingress_controller_cidrs
            .iter()
            .map(|cidr| NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.clone(),
                    except: None,
                }),
                ..Default::default()
            }),
    );
    Some(policy(inputs, Component::Api, ports::CANVAS_API, peers))
}

/// The pods of these components of this canvas (in its namespace).
fn pods_of(inputs: &Inputs, components: &[Component]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(
                [
                    (LABEL_NAME.to_owned(), APP.to_owned()),
                    (LABEL_INSTANCE.to_owned(), inputs.names.canvas().to_owned()),
                ]
                .into(),
            ),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: LABEL_COMPONENT.to_owned(),
                operator: "In".to_owned(),
                values: Some(components.iter().map(|c| c.as_str().to_owned()).collect()),
            }]),
        }),
        ..Default::default()
    }
}

/// The policy `<canvas>-<component>`: the component's pods take connections to `port`
/// from `peers` only.
fn policy(
    inputs: &Inputs,
    component: Component,
    port: u16,
    peers: Vec<NetworkPolicyPeer>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: inputs.metadata(inputs.names.component(component), Some(component)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(inputs.names.selector(component)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(peers),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(port))),
                    protocol: Some("TCP".to_owned()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}
