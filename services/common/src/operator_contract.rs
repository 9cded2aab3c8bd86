//! What the operator shows the outside world, by name: the label on its children, its field
//! manager, its leader lease, its metric names and the path of the committed CRD. The
//! operator defines its behaviour with these; the tooling (xtask, the benchmarks) finds its
//! children, reads its metrics and regenerates its CRD with the same constants.

/// The standard label naming the controller that manages an object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`LABEL_MANAGED_BY`] on every child of a canvas, and the operator's
/// server-side apply field manager.
pub const MANAGER: &str = "pixel-operator";

/// The label selector matching every child of every canvas.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER}")
}

/// Annotation on a `PixelCanvas` that rotates its identity key: when its value differs
/// from the one last acted on, the operator makes a new key, keeps the current one as the
/// previous (cookies it signed still verify, and are signed anew) and rolls the gateways.
pub const ROTATE_IDENTITY_KEY_ANNOTATION: &str = "pixel-playground.dev/rotate-identity-key";

/// The default name of the Lease the operator's replicas elect their leader on.
pub const LEASE_NAME: &str = "pixel-operator";

/// Path of the committed CRD, relative to the repository root (`crds/` is generated).
pub const CRD_PATH: &str = "crds/pixelcanvases.pixel-playground.dev.yaml";

/// The operator's Prometheus metrics: the prefix every name carries, and each name as
/// registered (before the prefix and, for counters, the `_total` suffix).
pub mod metrics {
    /// Prefix of every operator metric.
    pub const PREFIX: &str = "pixel_operator";
    /// Counter: reconciles, by `result` (`ok`, `error`).
    pub const RECONCILES: &str = "reconciles";
    /// Counter: failed reconciles, by `reason`.
    pub const RECONCILE_ERRORS: &str = "reconcile_errors";
    /// Histogram: time one reconcile takes.
    pub const RECONCILE_DURATION_SECONDS: &str = "reconcile_duration_seconds";
    /// Counter: mutating requests to the Kubernetes API, by `kind` and `verb`.
    pub const API_WRITES: &str = "api_writes";
    /// Counter: every request to the Kubernetes API, by `verb`.
    pub const API_REQUESTS: &str = "api_requests";
    /// Gauge: 1 while this replica holds the leader lease.
    pub const LEADER: &str = "leader";

    /// A gauge's exposed name: `pixel_operator_leader`.
    pub fn gauge(name: &str) -> String {
        format!("{PREFIX}_{name}")
    }

    /// A counter's exposed name: `pixel_operator_reconciles_total`.
    pub fn counter(name: &str) -> String {
        format!("{PREFIX}_{name}_total")
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn exposed_names_carry_prefix_and_suffix() {
            assert_eq!(super::gauge(super::LEADER), "pixel_operator_leader");
            assert_eq!(
                super::counter(super::API_REQUESTS),
                "pixel_operator_api_requests_total"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_selector_is_label_equals_manager() {
        assert_eq!(
            super::managed_selector(),
            "app.kubernetes.io/managed-by=pixel-operator"
        );
    }
}
