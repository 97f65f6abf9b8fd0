//! Counts the status writes scopegate makes, from a watch on the
//! benchmark's TokenPolicies: every `MODIFIED` event whose `status` differs
//! from the object's previous one is one write (a write that changes
//! nothing makes no event, and costs the API server little).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use kube::api::{Api, DynamicObject, WatchEvent, WatchParams};
use serde_json::Value;

use crate::cluster::policy_index;

/// What the watch saw so far.
#[derive(Default)]
struct Seen {
    /// Each policy's last status (`Null` before the first write).
    last: HashMap<usize, Value>,
    /// Whether each policy's last status says `Ready=True`.
    ready: HashMap<usize, bool>,
    /// How many of them do.
    ready_count: usize,
    /// Every status write: when the watch saw it, and for which policy.
    writes: Vec<(Instant, usize)>,
    /// When every expected policy first had `Ready=True` at once.
    all_ready_at: Option<Instant>,
    /// Set when the watch lost events (expired): counts are then a floor.
    gaps: u32,
}

/// Status writes over a time window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Writes {
    /// All writes.
    pub total: usize,
    /// The most writes to one policy.
    pub max_per_policy: usize,
    /// Policies written more than once.
    pub policies_rewritten: usize,
}

/// A running watch that tallies status writes of `expected` policies;
/// dropped, the watch ends.
pub struct StatusTally {
    seen: Arc<Mutex<Seen>>,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for StatusTally {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// The watch task's side of a [`StatusTally`].
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    expected: usize,
}

impl StatusTally {
    /// Watches `api` from `resource_version` (taken after the policies were
    /// created, so creations are not counted).
    pub fn start(api: Api<DynamicObject>, resource_version: String, expected: usize) -> Self {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let recorder = Recorder {
            seen: seen.clone(),
            expected,
        };
        let watch = tokio::spawn(recorder.watch(api, resource_version));
        StatusTally { seen, watch }
    }

    fn lock(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    /// Waits until every policy has had `Ready=True` at once; returns when
    /// that was first seen, or `None` after `timeout`.
    pub async fn wait_all_ready(&self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.lock().all_ready_at {
                return Some(at);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until no status was written for `quiet` (at most `timeout`).
    /// Returns whether it got quiet.
    pub async fn wait_quiet(&self, quiet: Duration, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.lock().writes.last().map(|(at, _)| *at);
            if last.is_none_or(|at| at.elapsed() >= quiet) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The writes seen at or after `from` and before `to`.
    pub fn writes_between(&self, from: Instant, to: Instant) -> Writes {
        let seen = self.lock();
        let mut per_policy: HashMap<usize, usize> = HashMap::new();
        for (_, index) in seen.writes.iter().filter(|(at, _)| *at >= from && *at < to) {
            *per_policy.entry(*index).or_default() += 1;
        }
        Writes {
            total: per_policy.values().sum(),
            max_per_policy: per_policy.values().copied().max().unwrap_or(0),
            policies_rewritten: per_policy.values().filter(|n| **n > 1).count(),
        }
    }

    /// How many times the watch lost events (0: every count is exact).
    pub fn gaps(&self) -> u32 {
        self.lock().gaps
    }
}

impl Recorder {
    async fn watch(self, api: Api<DynamicObject>, mut version: String) {
        loop {
            match self.watch_once(&api, &mut version).await {
                Ok(()) => {} // the server ended the watch: resume where it ended
                Err(error) => {
                    eprintln!("status watch: {error}; relisting (write counts become a floor)");
                    self.lock().gaps += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Ok(current) = crate::cluster::resource_version(&api).await {
                        version = current;
                    }
                }
            }
        }
    }

    async fn watch_once(
        &self,
        api: &Api<DynamicObject>,
        version: &mut String,
    ) -> anyhow::Result<()> {
        let params = WatchParams::default().timeout(290);
        let mut events = Box::pin(api.watch(&params, version).await?);
        while let Some(event) = events.try_next().await? {
            match event {
                WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                    if let Some(v) = &object.metadata.resource_version {
                        version.clone_from(v);
                    }
                    self.record(&object);
                }
                WatchEvent::Deleted(_) => {}
                WatchEvent::Bookmark(bookmark) => {
                    *version = bookmark.metadata.resource_version;
                }
                WatchEvent::Error(status) => {
                    anyhow::bail!("the watch ended with {} {}", status.code, status.message)
                }
            }
        }
        Ok(())
    }

    fn record(&self, object: &DynamicObject) {
        let Some(index) = object.metadata.name.as_deref().and_then(policy_index) else {
            return;
        };
        let status = object.data.get("status").cloned().unwrap_or(Value::Null);
        let now = Instant::now();
        let mut seen = self.lock();
        let previous = seen.last.entry(index).or_insert(Value::Null);
        if *previous == status {
            return; // a spec edit, not a status write
        }
        *previous = status;
        let ready = is_ready(&seen.last[&index]);
        seen.writes.push((now, index));
        let was_ready = seen.ready.insert(index, ready) == Some(true);
        match (was_ready, ready) {
            (false, true) => seen.ready_count += 1,
            (true, false) => seen.ready_count -= 1,
            _ => {}
        }
        if seen.all_ready_at.is_none() && seen.ready_count == self.expected {
            seen.all_ready_at = Some(now);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().expect("the tally lock is never poisoned")
}

/// Whether a status has `Ready=True`.
fn is_ready(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|conditions| {
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}
