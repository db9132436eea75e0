//! Pipelined optimistic inline batches: the next batch reads and plans while the previous
//! batch's write is on its way.
//!
//! An optimistic batch ([`super::write`]) reads, plans in memory, and writes in one statement
//! that checks its apps' generations. Alone, the writer would wait for each write before
//! reading the next batch. With several ingest writers, batches pass through two stages:
//!
//! 1. **read and plan**, one batch at a time ([`Pipeline::planning`]): the batch takes a
//!    snapshot of the batches whose writes are in flight, reads from the database, and lays
//!    the in-flight batches' results over what it read ([`Overlay`]: the records they write,
//!    their apps' sequence heads and the generations they set, the calls they leave blocked) —
//!    as if they had committed. Then it registers its own overlay and leaves the stage;
//! 2. **write**, once every batch of its snapshot has finished: if all of them committed what
//!    they had registered, the batch writes; its statement sets a fresh random generation per
//!    app and writes only if the generations are the ones it expects, so it commits only if
//!    nothing else was applied in between. If a batch of its snapshot did not commit its plan,
//!    the batch goes back to stage 1 (its own plan was built on that one), at most
//!    [`REPLANS`] times.
//!
//! A batch whose write finds its state stale runs again under the apps' row locks while it
//! holds the planning stage, so no batch plans on top of it meanwhile: a stale batch costs
//! one locked run and one re-plan of the batch behind it, and the pipeline is clear again.
//!
//! Correctness never depends on the overlay: a wrong or missing overlay only makes a batch
//! stale (it expects a generation that is not there), never makes it write from stale state.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use cti_core::model::*;
use cti_core::store::NewInboxEvent;

use super::complete::{State, StateKeys};
use crate::batch::{Key, Keys, Loaded, Plan};

/// How many times a batch goes back to stage 1 because a batch it planned on did not commit,
/// before it runs under the locks.
pub(super) const REPLANS: usize = 3;

/// What a batch whose write is in flight will have written once it commits. It shares the
/// batch's plan (which the write binds from) and indexes its records: nothing is copied unless
/// a later batch needs a record.
pub(super) struct Overlay {
    plan: Arc<Plan>,
    calls: HashMap<Key, usize>,
    voicemails: HashMap<Key, usize>,
    messages: HashMap<Key, usize>,
    gens: HashMap<AppId, i64>,
    /// Calls of which the batch stores `pending` events.
    blocked: HashSet<Key>,
    /// `Some(true)` once the batch committed exactly this, `Some(false)` once it will not.
    outcome: watch::Sender<Option<bool>>,
}

impl Overlay {
    /// The overlay of a batch that writes `plan`, sets `gens` (app → new generation) and
    /// stores `events[i]` pending where `pending[i]`.
    pub(super) fn of(
        plan: Arc<Plan>,
        gens: impl IntoIterator<Item = (AppId, i64)>,
        events: &[NewInboxEvent],
        pending: impl Fn(usize) -> bool,
    ) -> Self {
        Overlay {
            calls: index(&plan.calls, |c| Some((c.app_id, c.dialpad_call_id))),
            voicemails: index(&plan.voicemails, |v| {
                v.dialpad_call_id.map(|k| (v.app_id, k))
            }),
            messages: index(&plan.messages, |m| Some((m.app_id, m.dialpad_message_id))),
            plan,
            gens: gens.into_iter().collect(),
            blocked: events
                .iter()
                .enumerate()
                .filter(|&(i, _)| pending(i))
                .filter_map(|(_, e)| e.call_id.map(|c| (e.app_id, c)))
                .collect(),
            outcome: watch::Sender::new(None),
        }
    }

    /// Waits until the batch finished; `true` when it committed exactly this overlay.
    pub(super) async fn committed(&self) -> bool {
        let mut rx = self.outcome.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => *v == Some(true),
            Err(_) => false,
        }
    }

    /// Lays this overlay over a state read for `keys`: the calls among them, the sequence
    /// heads and generations of its apps, the blocked calls.
    pub(super) fn apply_state(&self, state: &mut State, keys: &StateKeys) {
        for k in &keys.calls {
            if let Some(&i) = self.calls.get(k) {
                state.loaded.calls.insert(*k, self.plan.calls[i].clone());
            }
            if self.blocked.contains(k) {
                state.blocked.insert(*k);
            }
        }
        for &(app, s) in &self.plan.seqs {
            if let Some(seq) = state.loaded.seqs.get_mut(&app) {
                *seq = s;
            }
        }
        for (app, generation) in state.gens.iter_mut() {
            if let Some(g) = self.gens.get(app) {
                *generation = *g;
            }
        }
    }

    /// Lays this overlay's voicemails and messages among `keys` over `loaded`.
    pub(super) fn apply_records(&self, loaded: &mut Loaded, keys: &Keys) {
        for k in &keys.voicemails {
            if let Some(&i) = self.voicemails.get(k) {
                loaded
                    .voicemails
                    .insert(*k, self.plan.voicemails[i].clone());
            }
        }
        for k in &keys.messages {
            if let Some(&i) = self.messages.get(k) {
                loaded.messages.insert(*k, self.plan.messages[i].clone());
            }
        }
    }
}

/// Position of each keyed record of `records` (a plan writes each record once).
fn index<T>(records: &[T], key: impl Fn(&T) -> Option<Key>) -> HashMap<Key, usize> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| key(r).map(|k| (k, i)))
        .collect()
}

/// The pipeline of a store's optimistic inline batches.
#[derive(Default)]
pub(super) struct Pipeline {
    /// Held by the batch in its read-and-plan stage.
    pub planning: tokio::sync::Mutex<()>,
    /// Registered overlays of batches whose writes are in flight, in registration order.
    in_flight: Mutex<Vec<(u64, Arc<Overlay>)>>,
    next_id: AtomicU64,
    /// Optimistic batches that found their state stale and ran again under the locks.
    reruns: AtomicU64,
}

impl Pipeline {
    /// The overlays of the batches whose writes are in flight, oldest first.
    pub(super) fn in_flight(&self) -> Vec<Arc<Overlay>> {
        let list = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().map(|(_, o)| o.clone()).collect()
    }

    /// Registers a batch's overlay until the returned guard is dropped (after its write); the
    /// overlay counts as not committed unless [`Registered::committed`] said otherwise.
    pub(super) fn register(&self, overlay: Overlay) -> Registered<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let overlay = Arc::new(overlay);
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, overlay.clone()));
        Registered {
            pipeline: self,
            id,
            overlay,
        }
    }

    /// Counts a batch that ran again under the locks.
    pub(super) fn rerun(&self) {
        self.reruns.fetch_add(1, Ordering::Relaxed);
    }

    /// Optimistic batches that ran again under the locks so far.
    pub(super) fn reruns(&self) -> u64 {
        self.reruns.load(Ordering::Relaxed)
    }
}

/// A batch's registered overlay: removed from the pipeline, and its outcome settled (not
/// committed, unless [`Registered::committed`] was called), when dropped.
pub(super) struct Registered<'a> {
    pipeline: &'a Pipeline,
    id: u64,
    overlay: Arc<Overlay>,
}

impl Registered<'_> {
    /// The batch committed exactly its overlay.
    pub(super) fn committed(self) {
        self.overlay.outcome.send_replace(Some(true));
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.pipeline
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.id);
        self.overlay.outcome.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(false);
                true
            } else {
                false
            }
        });
    }
}

/// A fresh generation for each app of `gens` (app → generation read): random, so that a batch
/// expecting it can only find it if the batch that chose it committed.
pub(super) fn next_gens(gens: &[(AppId, i64)]) -> Vec<(AppId, i64, i64)> {
    gens.iter()
        .map(|&(app, read)| {
            let (hi, _) = uuid::Uuid::new_v4().as_u64_pair();
            (app, read, i64::from_ne_bytes(hi.to_ne_bytes()))
        })
        .collect()
}
