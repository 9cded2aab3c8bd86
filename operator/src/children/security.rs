//! The Pod Security "restricted" profile, plus a read-only root filesystem, for every pod,
//! and bounded resources when the spec sets none.

use k8s_openapi::{
    api::core::v1::{
        Capabilities, EmptyDirVolumeSource, PodSecurityContext, ResourceRequirements,
        SeccompProfile, SecurityContext, Volume, VolumeMount,
    },
    apimachinery::pkg::api::resource::Quantity,
};

/// The unprivileged user every container runs as.
pub const RUN_AS_USER: i64 = 65532;

pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        // Volumes (Redis's data) are writable by that group.
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The most `/tmp` may hold: the services write nothing there but what a library may spill.
pub const TMP_SIZE_LIMIT: &str = "64Mi";

/// Local disk every container requests and may use: `/tmp` plus its logs, which the
/// kubelet rotates at 5 × 10 MiB; the root filesystem is read-only and Redis writes to its
/// volume, so nothing else lands on the node's disk. A runaway writer is evicted instead of
/// filling the node.
pub const EPHEMERAL_STORAGE_REQUEST: &str = "64Mi";
pub const EPHEMERAL_STORAGE_LIMIT: &str = "256Mi";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";

/// A writable `/tmp`, since the root filesystem is read-only.
pub fn tmp_volume() -> (Volume, VolumeMount) {
    (
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(TMP_SIZE_LIMIT.to_owned())),
                medium: None,
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..Default::default()
        },
    )
}

/// The container's resources: the spec's, else requests of `cpu` and `memory` and a memory
/// limit, so every pod is bounded; either way with local-disk bounds unless the spec sets
/// its own.
pub fn resources(
    spec: Option<&ResourceRequirements>,
    (cpu, memory, memory_limit): (&str, &str, &str),
) -> ResourceRequirements {
    let mut resources = spec
        .cloned()
        .unwrap_or_else(|| default_resources(cpu, memory, memory_limit));
    let set_by_spec = [&resources.requests, &resources.limits]
        .into_iter()
        .flatten()
        .any(|quantities| quantities.contains_key(EPHEMERAL_STORAGE));
    if !set_by_spec {
        for (quantities, amount) in [
            (&mut resources.requests, EPHEMERAL_STORAGE_REQUEST),
            (&mut resources.limits, EPHEMERAL_STORAGE_LIMIT),
        ] {
            quantities
                .get_or_insert_with(Default::default)
                .insert(EPHEMERAL_STORAGE.to_owned(), Quantity(amount.to_owned()));
        }
    }
    resources
}

fn default_resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    let quantity = |q: &str| Quantity(q.to_owned());
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_owned(), quantity(cpu)),
                ("memory".to_owned(), quantity(memory)),
            ]
            .into(),
        ),
        limits: Some([("memory".to_owned(), quantity(memory_limit))].into()),
        ..Default::default()
    }
}
