//! NetworkPolicies: who may open a port of the canvas's pods. Redis takes only the canvas's
//! canvas-api, gateway and backup Jobs; canvas-api, the gateway and the frontend take only the Ingress
//! controller's namespaces and the metrics scrapers' (`spec.networkPolicy`), and canvas-api
//! the gateway too, so that nothing else in the cluster reaches a canvas pod.

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
    naming::{APP, BACKUP_COMPONENT, Component, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME},
};

/// The label every namespace carries with its own name (set by the API server).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Only this canvas's canvas-api and gateway pods may connect to its Redis, on its port.
/// With `spec.backup`, its backup Jobs' pods too, which read it over the replication
/// protocol.
pub fn redis(inputs: &Inputs) -> NetworkPolicy {
    let mut components = vec![Component::Api.as_str(), Component::Gateway.as_str()];
    if inputs.canvas.spec.backup.is_some() {
        components.push(BACKUP_COMPONENT);
    }
    let clients = pods_of(inputs, &components);
    policy(inputs, Component::Redis, ports::REDIS, vec![clients])
}

/// The policy of a stateless component's port: it admits every pod of the namespaces
/// `spec.networkPolicy` names (its Ingress controller, its metrics scrapers) and the
/// addresses of a host-network controller (`ingressControllerCIDRs`), which is in no
/// namespace a policy can name; canvas-api admits this canvas's gateway pods as well.
/// `None` when `spec.networkPolicy.enabled` is off.
pub fn stateless(inputs: &Inputs, component: Component) -> Option<NetworkPolicy> {
    let port = match component {
        Component::Redis => return None,
        Component::Api => ports::CANVAS_API,
        Component::Gateway => ports::GATEWAY,
        Component::Frontend => ports::FRONTEND,
    };
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
    let mut peers = Vec::new();
    if component == Component::Api {
        peers.push(pods_of(inputs, &[Component::Gateway.as_str()]));
    }
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
    Some(policy(inputs, component, port, peers))
}

/// The backup Jobs' pods serve nothing: their policy admits no one. `None` without
/// `spec.backup` or with `spec.networkPolicy.enabled` off.
pub fn backup(inputs: &Inputs) -> Option<NetworkPolicy> {
    if inputs.canvas.spec.backup.is_none() || !inputs.canvas.spec.network_policy.enabled {
        return None;
    }
    Some(NetworkPolicy {
        metadata: inputs.metadata(inputs.names.backup(), None),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(inputs.names.backup_selector()),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(Vec::new()),
            ..Default::default()
        }),
    })
}

/// The pods of these components of this canvas (in its namespace).
fn pods_of(inputs: &Inputs, components: &[&str]) -> NetworkPolicyPeer {
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
                values: Some(components.iter().map(|&c| c.to_owned()).collect()),
            }]),
        }),
        ..Default::default()
    }
}

/// The policy `<canvas>-<component>`: the component's pods take connections to `port`
/// from `peers` only; no peers, no connection (a rule with an empty `from` would admit
/// every source).
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
            ingress: Some(if peers.is_empty() {
                Vec::new()
            } else {
                vec![NetworkPolicyIngressRule {
                    from: Some(peers),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(i32::from(port))),
                        protocol: Some("TCP".to_owned()),
                        ..Default::default()
                    }]),
                }]
            }),
            ..Default::default()
        }),
    }
}
