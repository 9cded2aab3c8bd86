//! Names and labels of a canvas's children, derived from the canvas's name.

use std::collections::BTreeMap;

/// The parts of a canvas, each a set of pods with its own label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Redis,
    Api,
    Gateway,
    Frontend,
}

impl Component {
    /// Every component, in the order they are brought up.
    pub const ALL: [Component; 4] = [
        Component::Redis,
        Component::Api,
        Component::Gateway,
        Component::Frontend,
    ];

    /// The `app.kubernetes.io/component` label and the suffix of the component's objects.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Redis => "redis",
            Component::Api => "api",
            Component::Gateway => "gateway",
            Component::Frontend => "frontend",
        }
    }
}

/// The `app.kubernetes.io/component` of the backup Jobs' pods (not a [`Component`]: they
/// run to completion, and no workload counts them).
pub const BACKUP_COMPONENT: &str = "backup";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = pixel_common::operator_contract::LABEL_MANAGED_BY;
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";

/// `app.kubernetes.io/name` and `part-of` of everything the operator creates.
pub const APP: &str = "pixel-playground";
/// `app.kubernetes.io/managed-by`, and the server-side apply field manager.
pub const MANAGER: &str = pixel_common::operator_contract::MANAGER;

/// Names of one canvas's children.
#[derive(Debug, Clone)]
pub struct Names {
    canvas: String,
}

impl Names {
    pub fn new(canvas: &str) -> Self {
        Self {
            canvas: canvas.to_owned(),
        }
    }

    pub fn canvas(&self) -> &str {
        &self.canvas
    }

    /// Workload and Service of a component: `<canvas>-<component>`.
    /// The claim the Redis StatefulSet makes for its one pod's data volume.
    pub fn redis_claim(&self) -> String {
        format!(
            "{}-{}-0",
            super::redis::DATA_VOLUME,
            self.component(Component::Redis)
        )
    }

    pub fn component(&self, component: Component) -> String {
        format!("{}-{}", self.canvas, component.as_str())
    }

    /// The generated Redis password Secret.
    pub fn redis_secret(&self) -> String {
        format!("{}-redis-auth", self.canvas)
    }

    /// The generated Secret of the canvas's internal credentials (the token the gateway
    /// presents to canvas-api).
    pub fn internal_secret(&self) -> String {
        format!("{}-internal", self.canvas)
    }

    /// The generated Secret of the canvas's moderator token, for people to hold (so it is
    /// not the internal Secret, whose keys only the pods need).
    pub fn moderator_secret(&self) -> String {
        format!("{}-moderator", self.canvas)
    }

    /// The ConfigMap with the canvas settings.
    pub fn config(&self) -> String {
        format!("{}-config", self.canvas)
    }

    /// The backup CronJob.
    pub fn backup(&self) -> String {
        format!("{}-{BACKUP_COMPONENT}", self.canvas)
    }

    /// The Ingress.
    pub fn ingress(&self) -> String {
        self.canvas.clone()
    }

    /// Labels that select a component's pods. Never change: selectors are immutable.
    pub fn selector(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_owned(), APP.to_owned()),
            (LABEL_INSTANCE.to_owned(), self.canvas.clone()),
            (LABEL_COMPONENT.to_owned(), component.as_str().to_owned()),
        ])
    }

    /// Labels that select the backup Jobs' pods.
    pub fn backup_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_owned(), APP.to_owned()),
            (LABEL_INSTANCE.to_owned(), self.canvas.clone()),
            (LABEL_COMPONENT.to_owned(), BACKUP_COMPONENT.to_owned()),
        ])
    }

    /// Every label of a component's objects and pods.
    pub fn labels(&self, component: Option<Component>, version: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (LABEL_NAME.to_owned(), APP.to_owned()),
            (LABEL_INSTANCE.to_owned(), self.canvas.clone()),
            (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
            (LABEL_PART_OF.to_owned(), APP.to_owned()),
        ]);
        if let Some(version) = version_label(version) {
            labels.insert(LABEL_VERSION.to_owned(), version);
        }
        if let Some(component) = component {
            labels.insert(LABEL_COMPONENT.to_owned(), component.as_str().to_owned());
        }
        labels
    }
}

/// An image tag as a label value, which must be at most 63 characters and begin and end
/// alphanumeric: the tag up to its 63rd character, its other ends trimmed; `None` when
/// nothing is left. Any valid tag (up to 128 characters, `_`, `.` and `-` anywhere) is then
/// accepted on every child, where the tag itself would be refused.
fn version_label(tag: &str) -> Option<String> {
    let cut: String = tag.chars().take(63).collect();
    let trimmed = cut.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_valid_tag_gives_a_valid_version_label_or_none() {
        assert_eq!(version_label("0.1.1").as_deref(), Some("0.1.1"));
        assert_eq!(version_label("_v1.").as_deref(), Some("v1"));
        assert_eq!(version_label("___").as_deref(), None);
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(65));
        assert_eq!(version_label(&long), Some("a".repeat(62)));
        let label_value = |value: &str| {
            value.len() <= 63
                && value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric())
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        for tag in [
            "1.0.0-rc.1",
            "sha-0123abc",
            "_x_",
            &"9".repeat(128),
            "a.-_b-",
        ] {
            assert!(
                version_label(tag).as_deref().is_none_or(label_value),
                "{tag}"
            );
        }
    }

    #[test]
    fn children_are_named_after_the_canvas() {
        let names = Names::new("demo");
        assert_eq!(names.component(Component::Api), "demo-api");
        assert_eq!(names.component(Component::Redis), "demo-redis");
        assert_eq!(names.redis_secret(), "demo-redis-auth");
        assert_eq!(names.internal_secret(), "demo-internal");
        assert_eq!(names.moderator_secret(), "demo-moderator");
        assert_eq!(names.config(), "demo-config");
        assert_eq!(names.ingress(), "demo");
    }

    #[test]
    fn selectors_are_a_stable_subset_of_labels() {
        let names = Names::new("demo");
        for component in Component::ALL {
            let selector = names.selector(component);
            let labels = names.labels(Some(component), "1.2.3");
            assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
            assert!(
                !selector.contains_key(LABEL_VERSION),
                "a version in a selector would block upgrades"
            );
        }
        assert_ne!(
            names.selector(Component::Api),
            names.selector(Component::Gateway)
        );
    }
}
