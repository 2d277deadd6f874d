//! What the alerter remembers: every milestone ever recorded and where
//! each delivery stands, in `alerts.json`, replaced atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{AlertError, Milestone};
use tokentally_common::files::{read_bounded, write_atomic};

/// Where one delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Delivered,
    /// A final 4xx, or still failing after `give_up_after`.
    Failed,
    /// The endpoint answered 410 and is disabled.
    Disabled,
    /// Existed before the alerter's first start: recorded, not sent.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub status: Status,
    pub attempts: u32,
    /// Unix ms of the next attempt (pending only).
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub milestone: Milestone,
    /// Endpoint URL → delivery.
    pub deliveries: BTreeMap<String, Delivery>,
    /// Copied to ClickHouse's `milestones` table (alerts on ClickHouse).
    #[serde(default)]
    pub mirrored: bool,
}

/// Everything the alerter remembers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub milestones: BTreeMap<String, Recorded>,
    /// Endpoints disabled by a 410.
    pub disabled: BTreeSet<String>,
}

pub const STATE: &str = "alerts.json";

/// A state file holds every milestone ever recorded, a few hundred bytes
/// each; past this it is garbled or not ours.
const MAX_STATE_BYTES: u64 = 256 << 20;

impl AlertState {
    pub fn load(dir: &Path) -> Result<Option<AlertState>, AlertError> {
        let path = dir.join(STATE);
        let err = |source| AlertError::State {
            dir: dir.display().to_string(),
            source,
        };
        match read_bounded(&path, MAX_STATE_BYTES) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is not valid alert state ({e}); move it aside to start afresh: \
                         milestones already reached are then recorded, not sent again",
                        path.display()
                    ),
                ))
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Replace the state file atomically (write, fsync, rename, fsync dir).
    pub fn store(&self, dir: &Path) -> Result<(), AlertError> {
        let json = serde_json::to_vec_pretty(self).expect("alert state serializes");
        write_atomic(dir, STATE, &json).map_err(|source| AlertError::State {
            dir: dir.display().to_string(),
            source,
        })
    }

    /// The state as `alerts list` shows it: every endpoint URL as
    /// [`crate::display_url`] shows it (a Slack or Discord URL is a
    /// credential; the file itself keeps them whole, as the config does).
    pub fn shown(&self) -> AlertState {
        let shown = |url: &String| crate::display_url(url);
        AlertState {
            milestones: self
                .milestones
                .iter()
                .map(|(id, r)| {
                    let deliveries = r
                        .deliveries
                        .iter()
                        .map(|(url, d)| (shown(url), d.clone()))
                        .collect();
                    let recorded = Recorded {
                        milestone: r.milestone.clone(),
                        deliveries,
                        mirrored: r.mirrored,
                    };
                    (id.clone(), recorded)
                })
                .collect(),
            disabled: self.disabled.iter().map(shown).collect(),
        }
    }
}
