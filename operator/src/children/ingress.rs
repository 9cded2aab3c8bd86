//! The Ingress: `/api` to canvas-api, `/ws` and `/auth` (sign-in) to the gateway, everything
//! else to the frontend.

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use pixel_common::ports;

use super::{Inputs, naming::Component};

/// The Ingress, when the spec enables it.
pub fn ingress(inputs: &Inputs) -> Option<Ingress> {
    let spec = &inputs.canvas.spec.ingress;
    if !spec.enabled {
        return None;
    }
    let path = |prefix: &str, component: Component| HTTPIngressPath {
        path: Some(prefix.to_owned()),
        path_type: "Prefix".to_owned(),
        backend: IngressBackend {
            service: Some(IngressServiceBackend {
                name: inputs.names.component(component),
                port: Some(ServiceBackendPort {
                    name: Some("http".to_owned()),
                    number: None,
                }),
            }),
            resource: None,
        },
    };
    let mut metadata = inputs.metadata(inputs.names.ingress(), None);
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: spec.host.clone(),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![
                        path("/api", Component::Api),
                        path(ports::WS_PATH, Component::Gateway),
                        path(ports::AUTH_PATH_PREFIX, Component::Gateway),
                        path("/", Component::Frontend),
                    ],
                }),
            }]),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: spec.host.clone().map(|h| vec![h]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Where users open the canvas: the Ingress host, or `None` without a host or an Ingress.
pub fn url(inputs: &Inputs) -> Option<String> {
    let spec = &inputs.canvas.spec.ingress;
    let host = spec.host.as_ref().filter(|_| spec.enabled)?;
    let scheme = if spec.tls_secret_name.is_some() {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{host}/"))
}
