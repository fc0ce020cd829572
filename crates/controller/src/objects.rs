//! The vault objects the controller has fetched, shared by every `AzureKeyVaultSecret` that uses
//! them: one GET per object per refresh however many resources (in however many namespaces)
//! name it.
//!
//! A slot per (identity, vault, type, name, version). A reconcile asks for the object no older
//! than its own refresh interval; concurrent askers wait for the one fetch in flight (single
//! flight). When a fetch finds new content, every other user of the slot is returned for an
//! immediate reconcile, which then finds the fresh value. A failed fetch is remembered for a
//! short time so that a vault outage costs one GET per slot per back-off, not one per resource.
//! A Key Vault event marks matching slots stale and returns their users.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use render::render::{FetchKey, Fetched};
use tokio::time::Instant;

use crate::crd::AzureKeyVaultSecret;

/// One shared vault object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// [`mount::identity::Identity::cache_key`]: objects are shared only within one identity.
    pub identity: String,
    pub vault_url: String,
    pub fetch: FetchKey,
}

/// A fetch failure, as the controller reports it (no secret material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailure {
    /// Short condition reason: `VaultUnavailable`, `VaultAccessDenied`, `VaultObjectNotFound`,
    /// `VaultRequestInvalid`, ...
    pub reason: &'static str,
    pub message: String,
    /// Whether retrying can help (throttling, outages) or not (403, 404).
    pub transient: bool,
}

/// A fetched object with a digest of its content.
#[derive(Debug, Clone)]
pub struct Value {
    pub fetched: Arc<Fetched>,
    /// SHA-256 (hex) of version and content: equal digests, equal objects.
    pub digest: String,
    pub fetched_at: Instant,
}

#[derive(Default)]
struct SlotState {
    value: Option<Value>,
    failure: Option<(FetchFailure, Instant)>,
    /// A Key Vault event said the object changed: the next ask fetches.
    stale: bool,
    users: HashSet<ObjectRef<AzureKeyVaultSecret>>,
}

#[derive(Default)]
struct Slot {
    /// Held while fetching: single flight.
    fetching: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
}

/// What [`ObjectCache::get`] did.
#[derive(Debug)]
pub struct Got {
    pub result: Result<Value, FetchFailure>,
    /// Whether this call went to the vault.
    pub fetched: bool,
    /// Other users of the object to reconcile now (its content changed).
    pub notify: Vec<ObjectRef<AzureKeyVaultSecret>>,
}

/// The shared objects. Cheap to clone.
#[derive(Clone, Default)]
pub struct ObjectCache {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: Mutex<HashMap<Arc<SlotKey>, Arc<Slot>>>,
    /// Which slot each resource uses (to move it when its spec changes); the key is shared with
    /// `slots`, not copied per resource.
    used_by: Mutex<HashMap<ObjectRef<AzureKeyVaultSecret>, Arc<SlotKey>>>,
}

/// How long a failed fetch is answered from memory, at most.
const FAILURE_MEMORY: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sorted(mut v: Vec<ObjectRef<AzureKeyVaultSecret>>) -> Vec<ObjectRef<AzureKeyVaultSecret>> {
    v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    v
}

/// SHA-256 over a fetched object's version and content.
pub fn digest(f: &Fetched) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |b: &[u8]| {
        ctx.update(&(b.len() as u64).to_be_bytes());
        ctx.update(b);
    };
    match f {
        Fetched::Secret(s) => {
            field(b"secret");
            field(s.version.as_bytes());
            field(s.value.as_bytes());
            field(s.content_type.as_deref().unwrap_or("").as_bytes());
            field(s.kid.as_deref().unwrap_or("").as_bytes());
        }
        Fetched::Key(k) => {
            field(b"key");
            field(k.version.as_bytes());
            field(serde_json::to_string(&k.jwk).unwrap_or_default().as_bytes());
        }
        Fetched::Cert(c) => {
            field(b"cert");
            field(c.version.as_bytes());
            field(&c.cer_der);
        }
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ObjectCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, key: &SlotKey) -> Arc<Slot> {
        self.slot_entry(key).1
    }

    /// The slot of `key` (created when missing) and its shared key.
    fn slot_entry(&self, key: &SlotKey) -> (Arc<SlotKey>, Arc<Slot>) {
        let mut slots = lock(&self.inner.slots);
        if let Some((k, slot)) = slots.get_key_value(key) {
            return (k.clone(), slot.clone());
        }
        let k = Arc::new(key.clone());
        let slot = Arc::new(Slot::default());
        slots.insert(k.clone(), slot.clone());
        (k, slot)
    }

    /// Records that `user` uses `key` (and no longer the slot it used before).
    pub fn register(&self, user: &ObjectRef<AzureKeyVaultSecret>, key: &SlotKey) {
        {
            let used_by = lock(&self.inner.used_by);
            if used_by.get(user).is_some_and(|k| **k == *key) {
                drop(used_by);
                let slot = self.slot(key);
                let mut st = lock(&slot.state);
                if !st.users.contains(user) {
                    st.users.insert(user.clone());
                }
                return;
            }
        }
        let (shared, slot) = self.slot_entry(key);
        let previous = lock(&self.inner.used_by).insert(user.clone(), shared);
        if let Some(prev) = previous.filter(|p| **p != *key) {
            self.drop_user(user, &prev);
        }
        lock(&slot.state).users.insert(user.clone());
    }

    /// Forgets `user` (its resource was deleted).
    pub fn unregister(&self, user: &ObjectRef<AzureKeyVaultSecret>) {
        if let Some(prev) = lock(&self.inner.used_by).remove(user) {
            self.drop_user(user, &prev);
        }
    }

    fn drop_user(&self, user: &ObjectRef<AzureKeyVaultSecret>, key: &SlotKey) {
        let mut slots = lock(&self.inner.slots);
        let empty = match slots.get(key) {
            Some(slot) => {
                let mut st = lock(&slot.state);
                st.users.remove(user);
                st.users.is_empty()
            }
            None => false,
        };
        if empty {
            slots.remove(key);
        }
    }

    /// Number of slots (distinct vault objects in use).
    pub fn len(&self) -> usize {
        lock(&self.inner.slots).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The object no older than `max_age`, fetched with `fetch` when needed (once for all
    /// concurrent askers).
    pub async fn get<F, Fut>(
        &self,
        key: &SlotKey,
        caller: &ObjectRef<AzureKeyVaultSecret>,
        max_age: Duration,
        fetch: F,
    ) -> Got
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Fetched, FetchFailure>>,
    {
        let slot = self.slot(key);
        if let Some(r) = Self::fresh(&slot, max_age) {
            return Got {
                result: r,
                fetched: false,
                notify: Vec::new(),
            };
        }
        let _guard = slot.fetching.lock().await;
        // Another asker may have fetched while this one waited.
        if let Some(r) = Self::fresh(&slot, max_age) {
            return Got {
                result: r,
                fetched: false,
                notify: Vec::new(),
            };
        }
        let outcome = fetch().await;
        let now = Instant::now();
        let mut st = lock(&slot.state);
        match outcome {
            Ok(fetched) => {
                let digest = digest(&fetched);
                let changed = st.value.as_ref().is_some_and(|v| v.digest != digest);
                let recovered = st.failure.is_some();
                let value = Value {
                    fetched: Arc::new(fetched),
                    digest,
                    fetched_at: now,
                };
                st.value = Some(value.clone());
                st.failure = None;
                st.stale = false;
                let notify = if changed || recovered {
                    sorted(st.users.iter().filter(|u| *u != caller).cloned().collect())
                } else {
                    Vec::new()
                };
                Got {
                    result: Ok(value),
                    fetched: true,
                    notify,
                }
            }
            Err(failure) => {
                let first = st.failure.is_none();
                st.failure = Some((failure.clone(), now));
                st.stale = false;
                let notify = if first {
                    sorted(st.users.iter().filter(|u| *u != caller).cloned().collect())
                } else {
                    Vec::new()
                };
                Got {
                    result: Err(failure),
                    fetched: true,
                    notify,
                }
            }
        }
    }

    fn fresh(slot: &Slot, max_age: Duration) -> Option<Result<Value, FetchFailure>> {
        let st = lock(&slot.state);
        if st.stale {
            return None;
        }
        if let Some((failure, at)) = &st.failure {
            let memory = FAILURE_MEMORY.min(max_age);
            if at.elapsed() < memory {
                return Some(Err(failure.clone()));
            }
            return None;
        }
        match &st.value {
            Some(v) if v.fetched_at.elapsed() < max_age => Some(Ok(v.clone())),
            _ => None,
        }
    }

    /// A Key Vault event for vault `vault` (its name: the first label of the vault host, any
    /// identity), `name` and object kinds: marks the matching slots stale and returns their
    /// users.
    pub fn invalidate_vault(
        &self,
        vault: &str,
        kinds: &[model::ObjectKind],
        name: &str,
    ) -> Vec<ObjectRef<AzureKeyVaultSecret>> {
        let label = |u: &str| {
            u.trim_start_matches("https://")
                .split(['/', '.', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        };
        let want = vault.to_ascii_lowercase();
        let slots = lock(&self.inner.slots);
        let mut users = HashSet::new();
        for (key, slot) in slots.iter() {
            if label(&key.vault_url) == want
                && key.fetch.name.eq_ignore_ascii_case(name)
                && kinds.contains(&key.fetch.object_type)
            {
                let mut st = lock(&slot.state);
                st.stale = true;
                users.extend(st.users.iter().cloned());
            }
        }
        sorted(users.into_iter().collect())
    }

    /// Every registered resource.
    pub fn users(&self) -> Vec<ObjectRef<AzureKeyVaultSecret>> {
        lock(&self.inner.used_by).keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::ObjectKind;
    use render::render::FetchedSecret;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use zeroize::Zeroizing;

    fn key(name: &str) -> SlotKey {
        SlotKey {
            identity: "ambient".into(),
            vault_url: "https://kv.vault.azure.net".into(),
            fetch: FetchKey {
                object_type: ObjectKind::Secret,
                name: name.into(),
                version: None,
            },
        }
    }

    fn user(n: &str) -> ObjectRef<AzureKeyVaultSecret> {
        ObjectRef::new(n).within("ns")
    }

    fn secret(v: &str) -> Fetched {
        Fetched::Secret(FetchedSecret {
            version: v.into(),
            value: Zeroizing::new(format!("value-{v}")),
            content_type: None,
            kid: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn one_fetch_per_refresh_for_all_users_and_change_notifies_the_others() {
        let cache = ObjectCache::new();
        let k = key("s");
        let (a, b, c) = (user("a"), user("b"), user("c"));
        for u in [&a, &b, &c] {
            cache.register(u, &k);
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let fetch = |v: &'static str| {
            let calls = calls.clone();
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(secret(v))
            }
        };
        // Three concurrent askers: one GET.
        let r = Duration::from_secs(60);
        let (x, y, z) = tokio::join!(
            cache.get(&k, &a, r, fetch("1")),
            cache.get(&k, &b, r, fetch("1")),
            cache.get(&k, &c, r, fetch("1")),
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            [x.fetched, y.fetched, z.fetched]
                .iter()
                .filter(|f| **f)
                .count(),
            1
        );
        assert!(x.notify.is_empty() && y.notify.is_empty() && z.notify.is_empty());
        // Within the interval: no GET.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!cache.get(&k, &a, r, fetch("1")).await.fetched);
        // After it: one GET; unchanged content notifies nobody.
        tokio::time::advance(Duration::from_secs(31)).await;
        let g = cache.get(&k, &b, r, fetch("1")).await;
        assert!(g.fetched && g.notify.is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // New version: the other users are returned for an immediate reconcile, and they find
        // the fresh value without another GET.
        tokio::time::advance(Duration::from_secs(61)).await;
        let g = cache.get(&k, &c, r, fetch("2")).await;
        assert_eq!(g.notify, vec![a.clone(), b.clone()]);
        let g = cache.get(&k, &a, r, fetch("3")).await;
        assert!(!g.fetched);
        assert_eq!(g.result.unwrap().fetched.version(), "2");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_remembered_briefly_and_events_force_a_fetch() {
        let cache = ObjectCache::new();
        let k = key("s");
        let (a, b) = (user("a"), user("b"));
        cache.register(&a, &k);
        cache.register(&b, &k);
        let r = Duration::from_secs(600);
        let down = || async {
            Err(FetchFailure {
                reason: "VaultUnavailable",
                message: "down".into(),
                transient: true,
            })
        };
        let g = cache.get(&k, &a, r, down).await;
        assert!(g.fetched && g.result.is_err());
        assert_eq!(g.notify, vec![b.clone()], "first failure tells the others");
        let g = cache.get(&k, &b, r, down).await;
        assert!(!g.fetched, "answered from memory");
        tokio::time::advance(FAILURE_MEMORY).await;
        let g = cache.get(&k, &b, r, || async { Ok(secret("1")) }).await;
        assert!(g.fetched && g.result.is_ok());
        assert_eq!(g.notify, vec![a.clone()], "recovery tells the others");

        // An event for another object changes nothing; one for this object forces a fetch.
        assert!(cache
            .invalidate_vault("KV", &[ObjectKind::Secret], "other")
            .is_empty());
        let users = cache.invalidate_vault("KV", &[ObjectKind::Secret], "S");
        assert_eq!(users, vec![a.clone(), b.clone()]);
        let g = cache.get(&k, &a, r, || async { Ok(secret("2")) }).await;
        assert!(g.fetched);
    }

    #[tokio::test]
    async fn users_move_between_slots_and_empty_slots_go() {
        let cache = ObjectCache::new();
        let a = user("a");
        cache.register(&a, &key("s1"));
        assert_eq!(cache.len(), 1);
        cache.register(&a, &key("s2"));
        assert_eq!(cache.len(), 1, "s1 had no other user");
        cache.register(&user("b"), &key("s2"));
        cache.unregister(&a);
        assert_eq!(cache.len(), 1);
        cache.unregister(&user("b"));
        assert!(cache.is_empty());
    }
}
