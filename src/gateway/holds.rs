//! Which namespace holds the agents of a plane: set when the gateway gives an agent
//! (one that lists no CRs of its own) the CRs of a namespace, so a tenant who copies the
//! planeID and the public CA into a CR of their own never gets that agent, also while the
//! holder's CR is deleted and recreated. See [`Snapshot::authorise`] for the rule.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::planes::registry::Hold;
use crate::planes::{PlaneKey, Snapshot};

/// How long a namespace keeps its hold once it has no CR of the plane: long enough to
/// delete and recreate a CR (or restore it from Git), short enough that a plane moved to
/// another namespace on purpose is served there soon after.
pub const VACANT_HOLD: Duration = Duration::from_secs(600);

/// Holds on one plane at most: one per namespace and CA that ever held it; only a
/// verified agent creates one, so this bounds what a fleet's history can keep.
const MAX_HOLDS_PER_PLANE: usize = 16;

struct Held {
    hold: Hold,
    /// Since when the snapshot has no CR of the plane in the hold's namespace.
    vacant_since: Option<Instant>,
}

#[derive(Default)]
pub struct Holds {
    by_plane: Mutex<HashMap<PlaneKey, Vec<Held>>>,
}

impl Holds {
    /// The live holds on `key` as of `snapshot` (vacancies timed, expired ones dropped).
    pub fn of(&self, snapshot: &Snapshot, key: &PlaneKey) -> Vec<Hold> {
        let mut by_plane = self.by_plane.lock().unwrap_or_else(|p| p.into_inner());
        let Some(held) = by_plane.get_mut(key) else {
            return Vec::new();
        };
        age(snapshot, key, held, Instant::now());
        let holds = held.iter().map(|h| h.hold.clone()).collect();
        if held.is_empty() {
            by_plane.remove(key);
        }
        holds
    }

    /// Records the hold a grant established (its CAs joined to the namespace's hold).
    pub fn record(&self, key: &PlaneKey, hold: Hold) {
        let mut by_plane = self.by_plane.lock().unwrap_or_else(|p| p.into_inner());
        let held = by_plane.entry(key.clone()).or_default();
        let full = held.len() >= MAX_HOLDS_PER_PLANE;
        match held.iter_mut().find(|h| h.hold.namespace == hold.namespace) {
            Some(existing) => {
                for anchor in hold.anchors {
                    if !existing.hold.anchors.contains(&anchor) {
                        existing.hold.anchors.push(anchor);
                    }
                }
                existing.vacant_since = None;
            }
            None if !full => held.push(Held {
                hold,
                vacant_since: None,
            }),
            None => tracing::warn!(plane = %key, namespace = %hold.namespace,
                "{MAX_HOLDS_PER_PLANE} namespaces already hold this plane's agents; no further hold is recorded"),
        }
    }

    /// Times the vacancies of every plane's holds against a new snapshot.
    pub fn sweep(&self, snapshot: &Snapshot) {
        let now = Instant::now();
        self.by_plane
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, held| {
                age(snapshot, key, held, now);
                !held.is_empty()
            });
    }
}

fn age(snapshot: &Snapshot, key: &PlaneKey, held: &mut Vec<Held>, now: Instant) {
    held.retain_mut(|h| {
        let present = snapshot
            .entries_for(key)
            .any(|e| e.cr.namespace.as_deref() == Some(h.hold.namespace.as_str()));
        if present {
            h.vacant_since = None;
            return true;
        }
        let since = *h.vacant_since.get_or_insert(now);
        now.duration_since(since) < VACANT_HOLD
    });
}
