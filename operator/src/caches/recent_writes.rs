//! The children the operator has just written and its stores have not seen yet.
//!
//! A store learns of a write when the write's watch event arrives, a moment after the apply
//! returned. A reconcile in between would read the older object from the store, find it
//! differs from what it wants, and apply it again: at 500 canvases created at once that was
//! one child in six. So each apply's answer is kept here until the store holds that
//! resourceVersion or a later one (resourceVersions of one resource compare as integers
//! since Kubernetes 1.35, KEP-5504), and a read prefers it while the store is behind.
//!
//! The store's events clear what they catch up with: a later version, the object's
//! deletion, or a relist (after which the store is as fresh as the list). So an entry
//! lives for the length of one watch delay, and a change made behind the operator's back
//! after its write is seen as soon as the store has it.

use std::{
    any::{Any, TypeId},
    cmp::Ordering,
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::{ResourceExt, runtime::watcher};

/// What was written, by kind (its Rust type), namespace and name.
#[derive(Default)]
pub struct RecentWrites {
    entries: Mutex<HashMap<Key, Written>>,
}

type Key = (TypeId, String, String);

struct Written {
    resource_version: String,
    object: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for RecentWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentWrites")
            .field("entries", &self.entries().len())
            .finish()
    }
}

impl RecentWrites {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Written>> {
        // A panic elsewhere while holding the lock leaves the map consistent: every
        // operation on it is a single insert, lookup or removal.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `object`, as an apply returned it, until its store catches up.
    pub fn record<K>(&self, object: &K)
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
    {
        let Some(resource_version) = object.resource_version() else {
            return;
        };
        self.entries().insert(
            key::<K>(object),
            Written {
                resource_version,
                object: Arc::new(object.clone()),
            },
        );
    }

    /// What a reconcile should take as the live `K` named `name` in `namespace`, given what
    /// its store holds: the store's object, unless this operator has written a later one.
    pub fn newest<K>(&self, namespace: &str, name: &str, stored: Option<Arc<K>>) -> Option<K>
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
    {
        let key = (TypeId::of::<K>(), namespace.to_owned(), name.to_owned());
        let mut entries = self.entries();
        let written = entries.get(&key).and_then(|written| {
            let behind = stored.as_deref().is_none_or(|stored| {
                stored
                    .resource_version()
                    .is_some_and(|stored| older(&stored, &written.resource_version))
            });
            if behind {
                written.object.downcast_ref::<K>().cloned()
            } else {
                None
            }
        });
        if written.is_none() && stored.is_some() {
            // The store has caught up (or cannot be compared): it is the truth again.
            entries.remove(&key);
        }
        drop(entries);
        written.or_else(|| stored.map(Arc::unwrap_or_clone))
    }

    /// Forgets the writes a store event shows it has caught up with.
    pub fn observe<K>(&self, event: &watcher::Event<K>)
    where
        K: kube::Resource + 'static,
    {
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                let key = key::<K>(object);
                let mut entries = self.entries();
                let caught_up = entries.get(&key).is_some_and(|written| {
                    object
                        .resource_version()
                        .is_none_or(|seen| !older(&seen, &written.resource_version))
                });
                if caught_up {
                    entries.remove(&key);
                }
            }
            watcher::Event::Delete(object) => {
                self.entries().remove(&key::<K>(object));
            }
            watcher::Event::InitDone => {
                // A relist replaced the store: it is the truth again. A write newer than
                // the list is forgotten too, at the cost of at most one apply repeated.
                let kind = TypeId::of::<K>();
                self.entries().retain(|(of, _, _), _| *of != kind);
            }
            watcher::Event::Init => {}
        }
    }

    /// How many writes the stores have yet to see.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key<K: kube::Resource + 'static>(object: &K) -> Key {
    (
        TypeId::of::<K>(),
        object.namespace().unwrap_or_default(),
        object.name_any(),
    )
}

/// Whether resourceVersion `a` is older than `b`. They are positive decimal integers without
/// leading zeros (KEP-5504), so the shorter is the smaller and equal lengths compare as
/// text. Anything else is not comparable, and counts as not older: the store wins.
fn older(a: &str, b: &str) -> bool {
    let comparable =
        |rv: &str| !rv.is_empty() && !rv.starts_with('0') && rv.bytes().all(|b| b.is_ascii_digit());
    comparable(a) && comparable(b) && a.len().cmp(&b.len()).then_with(|| a.cmp(b)) == Ordering::Less
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
    use serde_json::json;

    use super::*;

    fn deployment(name: &str, resource_version: &str, replicas: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "art", "resourceVersion": resource_version},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
        }))
        .expect("a deployment")
    }

    fn replicas(deployment: Option<Deployment>) -> Option<i32> {
        deployment?.spec?.replicas
    }

    #[test]
    fn resource_versions_compare_as_integers() {
        assert!(older("9", "10"));
        assert!(older("199", "200"));
        assert!(!older("200", "200"));
        assert!(!older("201", "200"));
        assert!(!older("x1", "200"), "not comparable: the store wins");
        assert!(!older("0", "200"));
        assert!(!older("", "200"));
    }

    #[test]
    fn a_write_is_read_until_the_store_catches_up_then_the_store_again() {
        let writes = RecentWrites::default();
        writes.record(&deployment("demo-api", "120", 3));
        // Not in the store yet (it was just created), then still the older version.
        assert_eq!(
            replicas(writes.newest::<Deployment>("art", "demo-api", None)),
            Some(3)
        );
        let stale = Arc::new(deployment("demo-api", "99", 2));
        assert_eq!(
            replicas(writes.newest("art", "demo-api", Some(stale.clone()))),
            Some(3)
        );
        // Another kind or name is not affected.
        assert_eq!(writes.newest::<Service>("art", "demo-api", None), None);
        assert_eq!(
            replicas(writes.newest("art", "demo-gateway", Some(stale))),
            Some(2)
        );
        // The store has the write, then someone scales it by hand: the store is the truth.
        assert_eq!(
            replicas(writes.newest(
                "art",
                "demo-api",
                Some(Arc::new(deployment("demo-api", "120", 3)))
            )),
            Some(3)
        );
        assert!(writes.is_empty(), "caught up: nothing kept");
        assert_eq!(
            replicas(writes.newest(
                "art",
                "demo-api",
                Some(Arc::new(deployment("demo-api", "121", 5)))
            )),
            Some(5)
        );
    }

    #[test]
    fn store_events_clear_what_they_catch_up_with() {
        let writes = RecentWrites::default();
        writes.record(&deployment("a", "50", 1));
        writes.record(&deployment("b", "50", 1));
        writes.record(&deployment("c", "50", 1));
        writes.observe(&watcher::Event::Apply(deployment("a", "49", 1)));
        assert_eq!(writes.len(), 3, "an older event clears nothing");
        writes.observe(&watcher::Event::Apply(deployment("a", "51", 1)));
        writes.observe(&watcher::Event::Delete(deployment("b", "50", 1)));
        assert_eq!(writes.len(), 1);
        // A deleted child reads as absent again, so it is re-created.
        assert_eq!(writes.newest::<Deployment>("art", "b", None), None);
        writes.observe(&watcher::Event::<Deployment>::InitDone);
        assert!(writes.is_empty(), "a relist leaves the store the truth");
    }
}
