//! The state file: what the admin API configured (tunnels this node dials, services, binds), kept
//! on disk so that a restart or a crash loses none of it.
//!
//! Every write replaces the whole file atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash at any instant leaves the old state or the new one, never a torn file.
//! Writes happen on a thread of their own, off the data path; changes that queue up while a write
//! is under way are written together (the newest snapshot holds them all). A lock file keeps two
//! nodes from sharing one state file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use log::error;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::oneshot;

/// The format this build writes. It reads version 1 too (which had no identities, secrets,
/// accepted names or ciphers).
pub const VERSION: u64 = 2;
/// Versions this build reads.
const READS: [u64; 2] = [1, 2];

/// Snapshots waiting for the writer at once: one per admin request in flight, at most.
const QUEUE: usize = 1024;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("state file {path} is corrupt ({source}); fix or remove it, it is never overwritten")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state file {path} has version {found}, this menet reads versions 1 and {VERSION}; it is left as it is")]
    Version { path: PathBuf, found: String },
    #[error("state file {path} is inconsistent: {message}")]
    Inconsistent { path: PathBuf, message: String },
    #[error("state file {path} is in use by another menet (lock {lock} held)")]
    Locked { path: PathBuf, lock: PathBuf },
}

/// What is kept. Field names follow the admin API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u64,
    /// This node's identity key as a dialer (Ed25519 seed, hex): acceptors pin the names it
    /// claims to it, so it can reclaim them after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Tunnels this node dials, by name. Accepted tunnels are not kept: their dialer re-dials.
    #[serde(default)]
    pub tunnels: BTreeMap<String, TunnelRecord>,
    /// Names peers may claim: declared ones and those pinned to the identity of their dialer.
    #[serde(default)]
    pub accepted: BTreeMap<String, AcceptedRecord>,
    #[serde(default)]
    pub services: Services,
    #[serde(default)]
    pub bind: Binds,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelRecord {
    pub dest: SocketAddr,
    /// The tunnel's own secret, in clear like the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptedRecord {
    /// The name's own secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The public identity (hex) of the dialer holding the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Declared by the admin API (not only claimed by a dialer).
    #[serde(default)]
    pub declared: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    #[serde(default)]
    pub local: BTreeMap<String, ServiceRecord>,
    #[serde(default)]
    pub remote: BTreeMap<String, ServiceRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRecord {
    pub addr: SocketAddr,
    /// Stored in clear: the file is readable by its owner only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A keyed service's cipher when not RC4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Service name -> tunnel name, per side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binds {
    #[serde(default)]
    pub local: BTreeMap<String, String>,
    #[serde(default)]
    pub remote: BTreeMap<String, String>,
}

impl State {
    pub fn new() -> State {
        State {
            version: VERSION,
            ..State::default()
        }
    }

    fn parse(text: &[u8], path: &Path) -> Result<State, StateError> {
        let corrupt = |source| StateError::Corrupt {
            path: path.to_owned(),
            source,
        };
        let value: serde_json::Value = serde_json::from_slice(text).map_err(corrupt)?;
        match value.get("version") {
            Some(v) if v.as_u64().is_some_and(|v| READS.contains(&v)) => {}
            found => {
                return Err(StateError::Version {
                    path: path.to_owned(),
                    found: found.map_or("(none)".to_owned(), |v| v.to_string()),
                })
            }
        }
        let mut state: State = serde_json::from_value(value).map_err(corrupt)?;
        state.version = VERSION;
        let inconsistent = |message: String| StateError::Inconsistent {
            path: path.to_owned(),
            message,
        };
        for (name, s) in state.services.local.iter().chain(&state.services.remote) {
            if let Some(c) = &s.cipher {
                c.parse::<crate::cipher::CipherKind>()
                    .map_err(|e| inconsistent(format!("service {name}: cipher {e}")))?;
            }
        }
        if let Some(id) = &state.identity {
            crate::handshake::Identity::from_hex(id)
                .map_err(|e| inconsistent(format!("identity: {e}")))?;
        }
        for (name, a) in &state.accepted {
            let ok = a
                .identity
                .as_deref()
                .is_none_or(|id| crate::handshake::from_hex(id).is_some_and(|v| v.len() == 32));
            if !ok {
                return Err(inconsistent(format!(
                    "accepted tunnel {name}: an identity is 64 hex digits"
                )));
            }
        }
        for (side, binds, services) in [
            ("local", &state.bind.local, &state.services.local),
            ("remote", &state.bind.remote, &state.services.remote),
        ] {
            if let Some(service) = binds.keys().find(|s| !services.contains_key(*s)) {
                return Err(StateError::Inconsistent {
                    path: path.to_owned(),
                    message: format!("a bind names {side} service {service}, which is not there"),
                });
            }
        }
        Ok(state)
    }
}

/// Hands snapshots to the writer thread. Dropping it lets the thread finish and exit.
pub struct StateStore {
    path: PathBuf,
    jobs: SyncSender<Job>,
}

struct Job {
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

impl StateStore {
    /// Locks the state file, reads what it holds (`None` if there is no file yet) and starts the
    /// writer. A corrupt file or one from another version is an error: it is never overwritten.
    pub fn open(path: &Path) -> Result<(StateStore, Option<State>), StateError> {
        let io_err = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = parent(path);
        fs::create_dir_all(&dir).map_err(io_err)?;
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err)?;
        // SAFETY: flock on a descriptor we own; the lock lives as long as the writer thread
        // holds the file.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StateError::Locked {
                path: path.to_owned(),
                lock: lock_path,
            });
        }
        let state = match fs::read(path) {
            Ok(text) => Some(State::parse(&text, path)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(e)),
        };
        // Temporary files left by a crash mid-write are not state: the rename never happened.
        remove_stale_temporaries(path);
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let target = path.to_owned();
        std::thread::Builder::new()
            .name("state-writer".to_owned())
            .spawn(move || write_loop(&target, &queue, lock))
            .map_err(io_err)?;
        Ok((
            StateStore {
                path: path.to_owned(),
                jobs,
            },
            state,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and checks the state file at `path` without locking or writing anything
    /// (`menet --check`): `None` if there is none yet.
    pub fn check(path: &Path) -> Result<Option<State>, StateError> {
        match fs::read(path) {
            Ok(text) => Ok(Some(State::parse(&text, path)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Queues `state` to be written; the receiver answers once it is on disk (or why not).
    pub fn save(&self, state: &State) -> oneshot::Receiver<Result<(), String>> {
        let (done, written) = oneshot::channel();
        let bytes = match serde_json::to_vec_pretty(state) {
            Ok(b) => b,
            Err(e) => {
                let _ = done.send(Err(e.to_string()));
                return written;
            }
        };
        match self.jobs.try_send(Job { bytes, done }) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                let _ = job
                    .done
                    .send(Err("too many changes waiting to be written".into()));
            }
            Err(TrySendError::Disconnected(job)) => {
                let _ = job.done.send(Err("the state writer has stopped".into()));
            }
        }
        written
    }
}

fn write_loop(path: &Path, queue: &Receiver<Job>, _lock: File) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        let newest = batch.last().map(|j| j.bytes.as_slice()).unwrap_or_default();
        let result = write_atomically(path, newest).map_err(|e| {
            error!("state file {}: cannot write: {e}", path.display());
            e.to_string()
        });
        crate::metrics::metrics().count_state_write(result.is_ok());
        for job in batch {
            let _ = job.done.send(result.clone());
        }
    }
}

/// The temporary files of `path` are `path.tmp-<random>`.
const TMP_SUFFIX: &str = ".tmp-";

/// Writes `bytes` to `path` so that a crash at any point leaves either the old or the new file.
///
/// The temporary file has an unpredictable name and is created exclusively, without following a
/// symbolic link, with mode 0600 from the start: no other local user can have it open, or have
/// planted a link in its place, to read the keys.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = with_suffix(path, &format!("{TMP_SUFFIX}{:016x}", rand::random::<u64>()));
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(parent(path))?.sync_all()
}

fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = base.to_owned();
    prefix.push(TMP_SUFFIX);
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("menet-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = temp_dir("unit");
        let path = dir.join("sub").join("menet.json");
        let (store, loaded) = StateStore::open(&path).expect("opens");
        assert_eq!(loaded, None);
        assert!(matches!(
            StateStore::open(&path),
            Err(StateError::Locked { .. })
        ));
        let mut state = State::new();
        state.identity = Some(crate::handshake::Identity::generate().to_hex());
        state.tunnels.insert(
            "t".into(),
            TunnelRecord {
                dest: "127.0.0.1:4321".parse().expect("addr"),
                secret: None,
            },
        );
        state.services.local.insert(
            "s".into(),
            ServiceRecord {
                addr: "0.0.0.0:8080".parse().expect("addr"),
                key: Some("secret".into()),
                cipher: Some("aes-256-gcm".into()),
                timeout_ms: Some(5000),
            },
        );
        state.bind.local.insert("s".into(), "t".into());
        let written = store.save(&state);
        assert_eq!(written.blocking_recv().expect("answer"), Ok(()));
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(store);
        // The writer thread lets the lock go once the store is dropped.
        let mut reopened = None;
        for _ in 0..100 {
            if let Ok(r) = StateStore::open(&path) {
                reopened = Some(r);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (_store, loaded) = reopened.expect("reopens");
        assert_eq!(loaded, Some(state));

        for (text, want) in [
            ("{\"version\":1,", "corrupt"),
            ("{\"version\":3}", "version 3"),
            ("[]", "version (none)"),
            ("{\"version\":1,\"tunnels\":{\"t\":{}}}", "corrupt"),
            (
                "{\"version\":1,\"bind\":{\"local\":{\"s\":\"t\"}}}",
                "local service s",
            ),
        ] {
            let err = State::parse(text.as_bytes(), &path).expect_err(text);
            assert!(err.to_string().contains(want), "{text}: {err}");
            assert!(err.to_string().contains("menet.json"), "{err}");
        }
        fs::remove_dir_all(&dir).ok();
    }
}
