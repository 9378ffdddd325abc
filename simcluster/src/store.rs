//! The object store: every object in memory, one global resourceVersion counter, and a
//! broadcast of every change for watches and controllers.
//!
//! All writes go through [`Store::mutate`], which runs a closure under the store lock so a
//! read-modify-write is atomic, stamps the new resourceVersion, appends to the watch history
//! and broadcasts the event. Nothing here knows about HTTP; the API semantics (validation,
//! defaults, finalizers) live in `api`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::resources::Registry;
use crate::status::ApiError;

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    /// The object was created.
    Added,
    /// The object changed.
    Modified,
    /// The object was removed.
    Deleted,
}

/// One change to one object.
#[derive(Debug, Clone)]
pub(crate) struct WatchEvent {
    /// What happened.
    pub(crate) kind: EventType,
    /// Storage key of the resource (`group/plural`).
    pub(crate) key: String,
    /// Namespace of the object ("" for cluster-scoped kinds).
    pub(crate) namespace: String,
    /// The resourceVersion of this change.
    pub(crate) rv: u64,
    /// The object after the change (for `Deleted`, the last state).
    pub(crate) object: Arc<Value>,
    /// The object before the change, for `Modified` and `Deleted`.
    pub(crate) old: Option<Arc<Value>>,
}

/// What a [`Store::mutate`] closure decides.
#[derive(Debug)]
pub(crate) enum Mutation {
    /// Store this object (create or replace).
    Put(Value),
    /// Remove the object.
    Remove,
    /// Change nothing.
    Unchanged,
}

/// The result of a mutation.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The object after (the removed object's final state for a removal).
    pub(crate) after: Option<Arc<Value>>,
    /// Whether the object was removed.
    pub(crate) removed: bool,
}

type Objects = HashMap<String, BTreeMap<(String, String), Arc<Value>>>;

/// A read-only view of all objects, handed to mutation closures.
pub(crate) struct View<'a> {
    objects: &'a Objects,
}

impl View<'_> {
    /// One object.
    pub(crate) fn get(&self, key: &str, ns: &str, name: &str) -> Option<&Arc<Value>> {
        self.objects
            .get(key)?
            .get(&(ns.to_owned(), name.to_owned()))
    }

    /// All objects of a resource, optionally in one namespace.
    pub(crate) fn list(&self, key: &str, ns: Option<&str>) -> Vec<&Arc<Value>> {
        match self.objects.get(key) {
            None => Vec::new(),
            Some(m) => match ns {
                None => m.values().collect(),
                Some(ns) => m
                    .range((ns.to_owned(), String::new())..)
                    .take_while(|((n, _), _)| n == ns)
                    .map(|(_, v)| v)
                    .collect(),
            },
        }
    }
}

const HISTORY: usize = 50_000;
const BROADCAST: usize = 1 << 16;

struct Inner {
    rv: u64,
    objects: Objects,
    history: VecDeque<Arc<WatchEvent>>,
    /// Every event with an rv above this is in `history`.
    floor: u64,
}

/// The in-memory object store shared by the API server and the controllers.
pub struct Store {
    inner: Mutex<Inner>,
    history: usize,
    registry: RwLock<Registry>,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

/// Where a watch starts.
pub(crate) struct WatchStart {
    /// Events to send first (synthetic ADDED events or replayed history).
    pub(crate) initial: Vec<Arc<WatchEvent>>,
    /// Live events after those.
    pub(crate) rx: broadcast::Receiver<Arc<WatchEvent>>,
    /// The store's resourceVersion when the watch started.
    pub(crate) rv: u64,
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether `obj` equals the stored `before` apart from its resourceVersion: a `Put` of it
/// changes nothing, as on a real server.
fn unchanged(obj: &Value, before: &Value) -> bool {
    let mut cmp = obj.clone();
    if let Some(m) = cmp.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert(
            "resourceVersion".into(),
            before["metadata"]["resourceVersion"].clone(),
        );
    }
    &cmp == before
}

impl Store {
    /// An empty store with the built-in kinds registered.
    pub(crate) fn new() -> Self {
        Self::with_history(HISTORY)
    }

    /// A store that keeps only the last `history` events for watches to resume from.
    pub(crate) fn with_history(history: usize) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST);
        Store {
            history: history.max(1),
            inner: Mutex::new(Inner {
                rv: 1,
                objects: HashMap::new(),
                history: VecDeque::new(),
                floor: 1,
            }),
            registry: RwLock::new(Registry::default()),
            tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The served resources.
    pub(crate) fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Change the served resources (CRDs).
    pub(crate) fn with_registry_mut<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut guard = self
            .registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// The current global resourceVersion.
    #[cfg(test)]
    pub(crate) fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Subscribe to every change in the store, for controllers.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.tx.subscribe()
    }

    /// One object.
    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        let inner = self.lock();
        View {
            objects: &inner.objects,
        }
        .get(key, ns, name)
        .cloned()
    }

    /// All objects of a resource (optionally in one namespace) and the store's resourceVersion.
    pub fn list(&self, key: &str, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = View {
            objects: &inner.objects,
        }
        .list(key, ns)
        .into_iter()
        .cloned()
        .collect();
        (items, inner.rv)
    }

    /// Every object of every resource, with its storage key.
    pub(crate) fn all_objects(&self) -> Vec<(String, Arc<Value>)> {
        let inner = self.lock();
        inner
            .objects
            .iter()
            .flat_map(|(k, m)| m.values().map(move |v| (k.clone(), v.clone())))
            .collect()
    }

    /// Storage keys that hold at least one object in the namespace.
    pub(crate) fn keys_in_namespace(&self, ns: &str) -> Vec<String> {
        let inner = self.lock();
        let view = View {
            objects: &inner.objects,
        };
        inner
            .objects
            .keys()
            .filter(|k| !view.list(k, Some(ns)).is_empty())
            .cloned()
            .collect()
    }

    /// Run `f` on the current object under the store lock and commit what it decides.
    ///
    /// A `Put` of an object equal to the stored one (apart from its resourceVersion) changes
    /// nothing, as on a real server.
    ///
    /// # Errors
    /// Whatever `f` returns.
    pub(crate) fn mutate<F>(
        &self,
        key: &str,
        ns: &str,
        name: &str,
        f: F,
    ) -> Result<Outcome, ApiError>
    where
        F: FnOnce(&View<'_>, Option<&Arc<Value>>) -> Result<Mutation, ApiError>,
    {
        let mut inner = self.lock();
        let id = (ns.to_owned(), name.to_owned());
        let before = inner.objects.get(key).and_then(|m| m.get(&id)).cloned();
        let decision = {
            let view = View {
                objects: &inner.objects,
            };
            f(&view, before.as_ref())?
        };
        match decision {
            Mutation::Unchanged => Ok(Outcome {
                after: before,
                removed: false,
            }),
            Mutation::Put(obj) => {
                if let Some(b) = &before
                    && unchanged(&obj, b)
                {
                    return Ok(Outcome {
                        after: before,
                        removed: false,
                    });
                }
                Ok(self.put(&mut inner, key, ns, id, before, obj))
            }
            Mutation::Remove => Ok(self.remove(&mut inner, key, ns, &id, before)),
        }
    }

    /// Stores `obj` at the next resourceVersion and emits ADDED or MODIFIED.
    fn put(
        &self,
        inner: &mut Inner,
        key: &str,
        ns: &str,
        id: (String, String),
        before: Option<Arc<Value>>,
        mut obj: Value,
    ) -> Outcome {
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let obj = Arc::new(obj);
        inner
            .objects
            .entry(key.to_owned())
            .or_default()
            .insert(id, obj.clone());
        let kind = if before.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.emit(
            inner,
            WatchEvent {
                kind,
                key: key.to_owned(),
                namespace: ns.to_owned(),
                rv,
                object: obj.clone(),
                old: before,
            },
        );
        Outcome {
            after: Some(obj),
            removed: false,
        }
    }

    /// Removes the object (if there is one) at the next resourceVersion and emits DELETED
    /// with its final state.
    fn remove(
        &self,
        inner: &mut Inner,
        key: &str,
        ns: &str,
        id: &(String, String),
        before: Option<Arc<Value>>,
    ) -> Outcome {
        let Some(b) = before else {
            return Outcome {
                after: None,
                removed: false,
            };
        };
        inner.rv += 1;
        let rv = inner.rv;
        if let Some(m) = inner.objects.get_mut(key) {
            m.remove(id);
        }
        let mut last = b.as_ref().clone();
        last["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        let last = Arc::new(last);
        self.emit(
            inner,
            WatchEvent {
                kind: EventType::Deleted,
                key: key.to_owned(),
                namespace: ns.to_owned(),
                rv,
                object: last.clone(),
                old: Some(b),
            },
        );
        Outcome {
            after: Some(last),
            removed: true,
        }
    }

    fn emit(&self, inner: &mut Inner, ev: WatchEvent) {
        let ev = Arc::new(ev);
        inner.history.push_back(ev.clone());
        while inner.history.len() > self.history {
            if let Some(old) = inner.history.pop_front() {
                inner.floor = old.rv;
            }
        }
        // No receiver is not an error: nobody watches yet.
        let _ = self.tx.send(ev);
    }

    /// Start a watch of one resource: from `rv` (replaying history), or, with `None`, from
    /// now with synthetic ADDED events for the existing objects.
    ///
    /// # Errors
    /// 410 Gone when `rv` is older than the retained history.
    pub(crate) fn watch(
        &self,
        key: &str,
        ns: Option<&str>,
        rv: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let initial = match rv {
            None => View {
                objects: &inner.objects,
            }
            .list(key, ns)
            .into_iter()
            .map(|o| {
                Arc::new(WatchEvent {
                    kind: EventType::Added,
                    key: key.to_owned(),
                    namespace: meta_str(o, "namespace").to_owned(),
                    rv: inner.rv,
                    object: o.clone(),
                    old: None,
                })
            })
            .collect(),
            Some(rv) if rv < inner.floor => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    inner.floor + 1
                )));
            }
            Some(rv) => {
                let start = inner.history.partition_point(|e| e.rv <= rv);
                inner
                    .history
                    .range(start..)
                    .filter(|e| e.key == key && ns.is_none_or(|n| e.namespace == n))
                    .cloned()
                    .collect()
            }
        };
        Ok(WatchStart {
            initial,
            rx,
            rv: inner.rv,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(store: &Store, name: &str, data: &str) -> Outcome {
        store
            .mutate("/configmaps", "ns", name, |_, _| {
                Ok(Mutation::Put(
                    json!({"metadata": {"name": name, "namespace": "ns"}, "data": {"k": data}}),
                ))
            })
            .expect("put")
    }

    #[test]
    fn resource_versions_increase_and_noop_updates_keep_them() {
        let store = Store::new();
        let a = put(&store, "a", "1");
        let b = put(&store, "a", "2");
        let c = put(&store, "a", "2");
        let rv = |o: &Outcome| {
            o.after
                .as_ref()
                .map(|v| v["metadata"]["resourceVersion"].as_str().map(str::to_owned))
        };
        assert!(rv(&a) < rv(&b));
        assert_eq!(rv(&b), rv(&c));
    }

    #[test]
    fn watch_replays_history_after_rv() {
        let store = Store::new();
        let start = store.resource_version();
        put(&store, "a", "1");
        put(&store, "b", "1");
        store
            .mutate("/configmaps", "ns", "a", |_, _| Ok(Mutation::Remove))
            .expect("remove");
        let w = store
            .watch("/configmaps", Some("ns"), Some(start))
            .expect("watch");
        let kinds: Vec<_> = w.initial.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![EventType::Added, EventType::Added, EventType::Deleted]
        );
        let w = store.watch("/configmaps", None, None).expect("watch");
        assert_eq!(w.initial.len(), 1);
        assert!(store.watch("/configmaps", None, Some(0)).is_err());
    }

    #[test]
    fn watch_from_compacted_history_is_gone() {
        let store = Store::with_history(2);
        let start = store.resource_version();
        for name in ["a", "b", "c"] {
            put(&store, name, "1");
        }
        let err = store
            .watch("/configmaps", None, Some(start))
            .err()
            .expect("gone");
        assert_eq!((err.code, err.reason), (410, "Expired"));
        let w = store
            .watch("/configmaps", None, Some(start + 1))
            .expect("still retained");
        assert_eq!(w.initial.len(), 2);
    }
}
