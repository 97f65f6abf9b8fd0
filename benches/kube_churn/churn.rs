//! Policy churn: edits at a fixed rate, each timed from its API write to
//! the first Check that reflects it.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject};
use tokio::task::JoinSet;

use crate::Rng;
use crate::checks::{Checker, Latencies};
use crate::cluster::{edit, edit_path};

/// How one edit went.
#[derive(Debug, Clone)]
pub struct EditOutcome {
    /// From sending the write to the first allowed Check of the new version;
    /// `None`: not within the timeout.
    pub served_after: Option<Duration>,
    /// The write's own round trip.
    pub write: Duration,
    /// Checks sent to see it.
    pub polls: u64,
    /// The API refused the write (the edit then counts as not made).
    pub refused: Option<String>,
}

/// All edits of a churn run.
#[derive(Debug, Default)]
pub struct ChurnReport {
    /// Every edit, in the order they resolved.
    pub edits: Vec<EditOutcome>,
}

impl ChurnReport {
    /// Edits the API server accepted.
    pub fn made(&self) -> impl Iterator<Item = &EditOutcome> {
        self.edits.iter().filter(|e| e.refused.is_none())
    }

    /// Write → served latencies of the edits made; one not served counts
    /// as never.
    pub fn served(&self) -> Latencies {
        let mut latencies = Latencies::default();
        for edit in self.made() {
            match edit.served_after {
                Some(took) => latencies.push(took),
                None => latencies.push_never(),
            }
        }
        latencies
    }

    /// Accepted edits never served within the timeout.
    pub fn unserved(&self) -> usize {
        self.made().filter(|e| e.served_after.is_none()).count()
    }

    /// Checks sent to see edits.
    pub fn polls(&self) -> u64 {
        self.edits.iter().map(|e| e.polls).sum()
    }

    /// The write round trips.
    pub fn writes(&self) -> Latencies {
        let mut latencies = Latencies::default();
        self.made().for_each(|e| latencies.push(e.write));
        latencies
    }

    /// The first refusal, if any.
    pub fn first_refusal(&self) -> Option<&str> {
        self.edits.iter().find_map(|e| e.refused.as_deref())
    }
}

/// How often to look for an edit: every 2 ms at first, then every 5 % of
/// the time waited so far (at most every 50 ms), so that a backlog of slow
/// edits does not turn into a Check flood that slows scopegate further.
fn poll_interval(waited: Duration) -> Duration {
    (waited / 20).clamp(Duration::from_millis(2), Duration::from_millis(50))
}

/// Writes version `version` of policy `index` and polls until a Check of
/// its new path is allowed, or `timeout` passes.
async fn one_edit(
    api: Api<DynamicObject>,
    checker: Checker,
    index: usize,
    version: u64,
    timeout: Duration,
) -> EditOutcome {
    let started = Instant::now();
    let written = edit(&api, index, version).await;
    let write = started.elapsed();
    if let Err(error) = written {
        let refused = Some(format!("{error:#}"));
        return EditOutcome {
            served_after: None,
            write,
            polls: 0,
            refused,
        };
    }
    let path = edit_path(version);
    let mut polls = 0;
    let served_after = loop {
        polls += 1;
        if checker.status(index, &path).await.ok() == Some(200) {
            break Some(started.elapsed());
        }
        let waited = started.elapsed();
        if waited >= timeout {
            break None;
        }
        tokio::time::sleep(poll_interval(waited)).await;
    };
    EditOutcome {
        served_after,
        write,
        polls,
        refused: None,
    }
}

/// Edits random policies of `editable` at `rate` per second for
/// `duration` (never one whose previous edit is still unresolved), then
/// waits for every edit to be served or to time out.
pub async fn run(
    api: &Api<DynamicObject>,
    checker: &Checker,
    editable: Range<usize>,
    (rate, duration): (f64, Duration),
    timeout: Duration,
    mut rng: Rng,
) -> ChurnReport {
    let busy: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let mut edits = JoinSet::new();
    let mut report = ChurnReport::default();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let end = Instant::now() + duration;
    let mut version = 0;
    while Instant::now() < end {
        ticks.tick().await;
        let Some(index) = pick_idle(&mut rng, &editable, &busy) else {
            continue; // every editable policy has an edit in flight
        };
        version += 1;
        let (api, checker, busy) = (api.clone(), checker.clone(), busy.clone());
        edits.spawn(async move {
            let outcome = one_edit(api, checker, index, version, timeout).await;
            busy.lock().expect("never poisoned").remove(&index);
            outcome
        });
        while let Some(done) = edits.try_join_next() {
            report.edits.extend(done.ok());
        }
    }
    while let Some(done) = edits.join_next().await {
        report.edits.extend(done.ok());
    }
    report
}

/// A random policy of `range` without an edit in flight (marked busy).
fn pick_idle(rng: &mut Rng, range: &Range<usize>, busy: &Mutex<HashSet<usize>>) -> Option<usize> {
    let mut busy = busy.lock().expect("never poisoned");
    for _ in 0..100 {
        let index = range.start + rng.below(range.len());
        if busy.insert(index) {
            return Some(index);
        }
    }
    None
}
