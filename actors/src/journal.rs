//! The state file's journal: one line per change, appended and fsynced before the change is
//! acknowledged, so an admin change costs O(1) whatever the size of the configuration. The
//! writer folds the journal into the snapshot (`state.json`) in the background when it has grown.
//!
//! A line is `<16 hex digits> <JSON change>\n`, the digits the first 8 bytes of the SHA-256 of
//! the JSON. Every change sets one key to a value or removes it, so replaying a journal over a
//! snapshot that already holds some of it gives the same state: a crash between writing a new
//! snapshot and emptying the journal loses nothing and breaks nothing.
//!
//! On load, a last line that is incomplete or fails its check is a write torn by a crash: it is
//! dropped (the change was never acknowledged) with a warning. A bad line with good lines after
//! it is not a torn write: the start stops with an error naming the file and the offset.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{AcceptedRecord, ServiceRecord, State, StateError, TunnelRecord};
use crate::Side;

/// One change to the kept state: a key set to a value, or removed (`None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// The node's identity key (written once, when it is made).
    Identity { identity: String },
    /// A tunnel this node dials.
    Tunnel {
        name: String,
        record: Option<TunnelRecord>,
    },
    /// A name peers may claim (declared, or pinned to its dialer).
    Accepted {
        name: String,
        record: Option<AcceptedRecord>,
    },
    Service {
        side: Side,
        name: String,
        record: Option<ServiceRecord>,
    },
    /// A service's bind: the tunnel it is carried over.
    Bind {
        side: Side,
        service: String,
        tunnel: Option<String>,
    },
    /// Several changes made as one (`PUT /config`): one line, so a crash keeps all or none.
    Batch { changes: Vec<Change> },
}

fn set<V>(map: &mut std::collections::BTreeMap<String, V>, key: &str, value: Option<V>) {
    match value {
        Some(v) => {
            map.insert(key.to_owned(), v);
        }
        None => {
            map.remove(key);
        }
    }
}

impl Change {
    pub fn apply(&self, state: &mut State) {
        match self.clone() {
            Change::Identity { identity } => state.identity = Some(identity),
            Change::Tunnel { name, record } => set(&mut state.tunnels, &name, record),
            Change::Accepted { name, record } => set(&mut state.accepted, &name, record),
            Change::Service { side, name, record } => {
                let services = match side {
                    Side::Local => &mut state.services.local,
                    Side::Remote => &mut state.services.remote,
                };
                set(services, &name, record);
            }
            Change::Bind {
                side,
                service,
                tunnel,
            } => {
                let binds = match side {
                    Side::Local => &mut state.bind.local,
                    Side::Remote => &mut state.bind.remote,
                };
                set(binds, &service, tunnel);
            }
            Change::Batch { changes } => {
                for c in &changes {
                    c.apply(state);
                }
            }
        }
    }
}

fn check(json: &[u8]) -> String {
    let digest = Sha256::digest(json);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends `change` as one journal line to `out`.
pub fn encode(change: &Change, out: &mut Vec<u8>) {
    // A change is plain data: serializing it cannot fail.
    let json = serde_json::to_vec(change).unwrap_or_default();
    out.extend_from_slice(check(&json).as_bytes());
    out.push(b' ');
    out.extend_from_slice(&json);
    out.push(b'\n');
}

/// What a journal held.
#[derive(Debug, Default)]
pub struct Replay {
    /// The good records' changes, in order, to apply over the snapshot.
    pub changes: Vec<Change>,
    /// Bytes of the journal that hold good records: a torn tail starts here.
    pub good_len: u64,
    /// A torn last record was dropped: its offset.
    pub torn_at: Option<u64>,
}

fn decode(line: &[u8]) -> Option<Change> {
    let (sum, json) = (line.get(..16)?, line.get(17..)?);
    if line.get(16) != Some(&b' ') || sum != check(json).as_bytes() {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Reads a journal's bytes. A bad record with good ones after it is an error naming `path` and
/// its offset; a bad or incomplete last one is a torn write, reported in [`Replay::torn_at`].
pub fn replay(bytes: &[u8], path: &Path) -> Result<Replay, StateError> {
    let mut replay = Replay::default();
    let mut offset = 0usize;
    let mut bad: Option<usize> = None;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(n) => (&rest[..n], offset + n + 1),
            None => (rest, bytes.len()),
        };
        let complete = next <= bytes.len() && bytes.get(next - 1) == Some(&b'\n');
        match (decode(line).filter(|_| complete), bad) {
            (Some(_), Some(at)) => {
                return Err(StateError::Journal {
                    path: path.to_owned(),
                    offset: at as u64,
                })
            }
            (Some(change), None) => {
                replay.changes.push(change);
                replay.good_len = next as u64;
            }
            (None, None) => bad = Some(offset),
            (None, Some(_)) => {}
        }
        offset = next;
    }
    if let Some(at) = bad {
        // Everything from the first bad record on is bad: a torn tail (a crash mid-append can
        // leave more than one partial line only if several were in one write; all unacknowledged).
        replay.torn_at = Some(at as u64);
    }
    Ok(replay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes() -> Vec<Change> {
        vec![
            Change::Service {
                side: Side::Local,
                name: "web".into(),
                record: Some(ServiceRecord::plain(
                    "127.0.0.1:8080".parse().expect("addr"),
                )),
            },
            Change::Bind {
                side: Side::Local,
                service: "web".into(),
                tunnel: Some("t1".into()),
            },
            Change::Tunnel {
                name: "t1".into(),
                record: Some(TunnelRecord {
                    dest: "127.0.0.1:4321".parse().expect("addr"),
                    secret: None,
                    peer_identity: None,
                }),
            },
            Change::Bind {
                side: Side::Local,
                service: "web".into(),
                tunnel: None,
            },
        ]
    }

    fn journal(changes: &[Change]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in changes {
            encode(c, &mut out);
        }
        out
    }

    #[test]
    fn a_batch_is_one_line_kept_whole_or_dropped_whole() {
        let batch = Change::Batch { changes: changes() };
        let mut bytes = Vec::new();
        encode(&batch, &mut bytes);
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
        let r = replay(&bytes, Path::new("j")).expect("replays");
        let mut state = State::new();
        for c in &r.changes {
            c.apply(&mut state);
        }
        assert_eq!(state.services.local.len(), 1);
        assert_eq!(state.tunnels.len(), 1);
        // Cut anywhere: none of it is applied (the torn line is dropped).
        let torn = &bytes[..bytes.len() - 2];
        let r = replay(torn, Path::new("j")).expect("replays");
        assert!(r.changes.is_empty());
        assert_eq!(r.torn_at, Some(0));
    }

    #[test]
    fn records_round_trip_and_replay_is_idempotent() {
        let all = changes();
        let bytes = journal(&all);
        let r = replay(&bytes, Path::new("j")).expect("replays");
        assert_eq!(r.changes, all);
        assert_eq!(r.good_len, bytes.len() as u64);
        assert_eq!(r.torn_at, None);
        let mut once = State::new();
        for c in &r.changes {
            c.apply(&mut once);
        }
        assert!(once.bind.local.is_empty());
        assert!(once.services.local.contains_key("web"));
        // Replaying the whole journal again over the result (a crash after compaction, before
        // the journal was emptied) changes nothing.
        let mut twice = once.clone();
        for c in &r.changes {
            c.apply(&mut twice);
        }
        assert_eq!(once, twice);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_a_bad_middle_is_an_error() {
        let all = changes();
        let bytes = journal(&all);
        let last_start = bytes.len() - {
            let mut one = Vec::new();
            encode(&all[3], &mut one);
            one.len()
        };
        // Cut anywhere inside the last record: torn, the first three survive.
        for cut in last_start + 1..bytes.len() {
            let r = replay(&bytes[..cut], Path::new("j")).expect("torn is not an error");
            assert_eq!(r.changes, all[..3], "cut at {cut}");
            assert_eq!(r.torn_at, Some(last_start as u64));
            assert_eq!(r.good_len, last_start as u64);
        }
        // A flipped byte in the last record: torn too.
        let mut flipped = bytes.clone();
        flipped[bytes.len() - 5] ^= 1;
        let r = replay(&flipped, Path::new("j")).expect("torn");
        assert_eq!(r.changes.len(), 3);
        // A flipped byte in the second record, with good ones after it: an error with its offset.
        let mut middle = bytes.clone();
        let second = bytes.iter().position(|&b| b == b'\n').expect("line") + 1;
        middle[second + 30] ^= 1;
        let err = replay(&middle, Path::new("state.json.journal")).expect_err("corrupt");
        let text = err.to_string();
        assert!(text.contains("state.json.journal"), "{text}");
        assert!(text.contains(&format!("offset {second}")), "{text}");
    }
}
