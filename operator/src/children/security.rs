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

/// A writable `/tmp`, since the root filesystem is read-only.
pub fn tmp_volume() -> (Volume, VolumeMount) {
    (
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: None,
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

/// Requests of `cpu` and `memory`, and a memory limit, for containers whose spec sets no
/// resources: every pod is bounded.
pub fn default_resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
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
