//! The state file: what the admin API configured (tunnels this node dials, services, binds), kept
//! on disk so that a restart or a crash loses none of it.
//!
//! Two files: the snapshot `PATH` (JSON, as a person reads it) and the journal `PATH.journal`
//! (one line per change since the snapshot, [`crate::journal`]). A change is appended to the
//! journal and fsynced before it is acknowledged: O(1) whatever the configuration's size. When
//! the journal has grown past the snapshot's size (and 1 MiB), the writer folds it in: a new
//! snapshot replaces the old one atomically (temporary file, fsync, rename, fsync of the
//! directory), then the journal is emptied. A crash at any instant leaves files that load to
//! every acknowledged change. Writes happen on a thread of their own, off the data path; changes
//! that queue up while a write is under way share one fsync. A lock file keeps two nodes from
//! sharing one state file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use log::{error, info, warn};

use tokio::sync::oneshot;

use crate::journal::{self, Change};
pub use crate::model::{
    AcceptedRecord, Binds, ServiceRecord, Services, State, StateError, TunnelRecord, VERSION,
};

/// Snapshots waiting for the writer at once: one per admin request in flight, at most.
const QUEUE: usize = 1024;

/// Hands changes to the writer thread. Dropping it lets the thread finish and exit.
pub struct StateStore {
    /// The state file (its journal beside it), for log lines.
    path: PathBuf,
    /// The writer thread's queue, bounded ([`QUEUE`]).
    jobs: SyncSender<Job>,
}

/// The journal grows to this before it is folded into the snapshot, at least (by default:
/// `[state] compact_bytes`).
pub const COMPACT_MIN: u64 = 1 << 20;

enum Job {
    /// Append these changes; answer once they are fsynced.
    Record {
        changes: Vec<Change>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Replace everything with this state (a new snapshot, an empty journal).
    Replace {
        state: Box<State>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Fold the journal into the snapshot now (a clean shutdown).
    Compact {
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The journal of the state file at `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    with_suffix(path, ".journal")
}

/// Reads the snapshot and the journal: the state they make (`None` if neither exists), and the
/// journal's good length when a torn tail was dropped. Writes nothing.
fn load(path: &Path) -> Result<(Option<State>, Option<u64>), StateError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { path, source }
    };
    let snapshot = match read_private(path) {
        Ok(text) => Some(State::parse_only(&text, path)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(path)(e)),
    };
    let jpath = journal_path(path);
    let bytes = match read_private(&jpath) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(&jpath)(e)),
    };
    let replay = journal::replay(&bytes, &jpath)?;
    if let Some(at) = replay.torn_at {
        warn!(
            "journal {}: a torn record at offset {at} (a write cut by a crash, never acknowledged) is dropped",
            jpath.display()
        );
    }
    let torn = replay.torn_at.map(|_| replay.good_len);
    if snapshot.is_none() && replay.changes.is_empty() {
        return Ok((None, torn));
    }
    let mut state = snapshot.unwrap_or_else(State::new);
    for change in &replay.changes {
        change.apply(&mut state);
    }
    state.validate(path)?;
    Ok((Some(state), torn))
}

impl StateStore {
    /// Locks the state file, reads what it holds (`None` if there is nothing yet) and starts the
    /// writer. A corrupt file or one from another version is an error: it is never overwritten.
    pub fn open(path: &Path) -> Result<(StateStore, Option<State>), StateError> {
        StateStore::open_with(path, COMPACT_MIN)
    }

    /// [`StateStore::open`], folding the journal in once it outgrows `compact_min` and the
    /// snapshot.
    pub fn open_with(
        path: &Path,
        compact_min: u64,
    ) -> Result<(StateStore, Option<State>), StateError> {
        let io_err = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = parent(path);
        // Directories menet makes are its own alone.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err)?;
        check_private(path)?;
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
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
        let (state, torn) = load(path)?;
        // Temporary files left by a crash mid-write are not state: the rename never happened.
        remove_stale_temporaries(path);
        let jpath = journal_path(path);
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&jpath)
            .map_err(|source| StateError::Io {
                path: jpath.clone(),
                source,
            })?;
        if let Some(good) = torn {
            // The torn tail goes, so new records follow the last good one.
            journal
                .set_len(good)
                .and_then(|()| journal.sync_all())
                .map_err(|source| StateError::Io {
                    path: jpath.clone(),
                    source,
                })?;
        }
        let writer = Writer {
            compact_min,
            snapshot_len: fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            journal_len: journal.metadata().map(|m| m.len()).unwrap_or(0),
            path: path.to_owned(),
            state: state.clone().unwrap_or_else(State::new),
            journal,
        };
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("state-writer".to_owned())
            .spawn(move || writer.run(&queue, lock))
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

    /// Reads and checks the state file at `path` and its journal without locking or writing
    /// anything (`menet --check`, `menet --dump-state`): `None` if there is nothing yet.
    pub fn check(path: &Path) -> Result<Option<State>, StateError> {
        load(path).map(|(state, _)| state)
    }

    fn send(&self, job: Job) {
        let refuse = |job: Job, why: &str| {
            let done = match job {
                Job::Record { done, .. } | Job::Replace { done, .. } | Job::Compact { done } => {
                    done
                }
            };
            let _ = done.send(Err(why.to_owned()));
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => refuse(job, "too many changes waiting to be written"),
            Err(TrySendError::Disconnected(job)) => refuse(job, "the state writer has stopped"),
        }
    }

    /// Queues `changes` to be journaled; the receiver answers once they are on disk (or why not).
    pub fn record(&self, changes: Vec<Change>) -> oneshot::Receiver<Result<(), String>> {
        let (done, written) = oneshot::channel();
        self.send(Job::Record { changes, done });
        written
    }

    /// Queues a whole new state (a new snapshot and an empty journal).
    pub fn save(&self, state: &State) -> oneshot::Receiver<Result<(), String>> {
        let (done, written) = oneshot::channel();
        self.send(Job::Replace {
            state: Box::new(state.clone()),
            done,
        });
        written
    }

    /// Queues a compaction: the journal folded into the snapshot.
    pub fn compact(&self) -> oneshot::Receiver<Result<(), String>> {
        let (done, written) = oneshot::channel();
        self.send(Job::Compact { done });
        written
    }
}

/// The writer thread: the journal open for appending, and the state it and the snapshot make.
struct Writer {
    /// The state file; the journal is beside it, `PATH.journal`.
    path: PathBuf,
    /// Fold the journal in once it is larger than this and the snapshot.
    compact_min: u64,
    /// What snapshot and journal hold together: what the next snapshot will be.
    state: State,
    /// The journal, open for appending.
    journal: File,
    /// Bytes in the journal: compared with the snapshot's to decide a compaction.
    journal_len: u64,
    /// Bytes in the last snapshot written.
    snapshot_len: u64,
}

impl Writer {
    fn run(mut self, queue: &Receiver<Job>, _lock: File) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            batch.extend(queue.try_iter());
            let mut bytes = Vec::new();
            let mut waiting = Vec::new();
            for job in batch {
                match job {
                    Job::Record { changes, done } => {
                        for change in &changes {
                            journal::encode(change, &mut bytes);
                            change.apply(&mut self.state);
                        }
                        waiting.push(done);
                    }
                    Job::Replace { state, done } => {
                        // What was recorded before it is in it (the Registry's whole view).
                        self.state = *state;
                        let result = self.append(&bytes).and_then(|()| self.snapshot());
                        bytes.clear();
                        for d in waiting.drain(..) {
                            let _ = d.send(result.clone());
                        }
                        let _ = done.send(result);
                    }
                    Job::Compact { done } => {
                        let result = self.append(&bytes).and_then(|()| self.snapshot());
                        bytes.clear();
                        for d in waiting.drain(..) {
                            let _ = d.send(result.clone());
                        }
                        let _ = done.send(result);
                    }
                }
            }
            if !waiting.is_empty() {
                let result = self.append(&bytes);
                for done in waiting {
                    let _ = done.send(result.clone());
                }
            }
            // Folded in after the answers went: the next change waits for it, none before.
            if self.journal_len > self.compact_min.max(self.snapshot_len) {
                let started = std::time::Instant::now();
                match self.snapshot() {
                    Ok(()) => info!(
                        "state file {}: journal folded into the snapshot in {} ms",
                        self.path.display(),
                        started.elapsed().as_millis()
                    ),
                    Err(e) => error!("state file {}: cannot compact: {e}", self.path.display()),
                }
            }
        }
    }

    /// Appends `bytes` to the journal and fsyncs it.
    fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        let result = self
            .journal
            .write_all(bytes)
            .and_then(|()| self.journal.sync_data());
        crate::metrics::metrics().count_state_write(result.is_ok());
        match result {
            Ok(()) => {
                self.journal_len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                error!(
                    "journal {}: cannot write: {e}",
                    journal_path(&self.path).display()
                );
                // Whatever part of it reached the file goes, so that a later append does not
                // leave a bad record in the middle (a corrupt journal to the next start). If even
                // that fails, it is a torn tail the next start drops.
                let _ = self
                    .journal
                    .set_len(self.journal_len)
                    .and_then(|()| self.journal.sync_data());
                Err(e.to_string())
            }
        }
    }

    /// Writes the state as the new snapshot, then empties the journal. A crash in between
    /// leaves a journal that replays over the new snapshot to the same state.
    fn snapshot(&mut self) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| e.to_string())?;
        let written = write_atomically(&self.path, &bytes);
        crate::metrics::metrics().count_state_write(written.is_ok());
        written.map_err(|e| {
            error!("state file {}: cannot write: {e}", self.path.display());
            e.to_string()
        })?;
        self.snapshot_len = bytes.len() as u64;
        self.journal
            .set_len(0)
            .and_then(|()| self.journal.sync_all())
            .map_err(|e| {
                error!(
                    "journal {}: cannot empty: {e}",
                    journal_path(&self.path).display()
                );
                e.to_string()
            })?;
        self.journal_len = 0;
        Ok(())
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

/// Reads a whole file without following a symbolic link at its name.
fn read_private(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok(bytes)
}

/// Refuses a state directory or file another local user could read or replace: the directory
/// must be this user's and writable by no one else; each file that exists must be a regular file
/// (not a link), this user's, and writable by no one else (readable by others: a warning, as
/// menet itself makes them 0600).
pub fn check_private(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let unsafe_at = |path: &Path, problem: String| StateError::Unsafe {
        path: path.to_owned(),
        problem,
    };
    let dir = parent(path);
    let meta = fs::metadata(&dir).map_err(|source| StateError::Io {
        path: dir.clone(),
        source,
    })?;
    if meta.uid() != me {
        return Err(unsafe_at(
            &dir,
            format!(
                "(a directory) belongs to user {}, not to this user ({me})",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_at(
            &dir,
            format!(
                "(a directory) is writable by others (mode {:o})",
                meta.mode() & 0o7777
            ),
        ));
    }
    for file in [
        path.to_owned(),
        journal_path(path),
        with_suffix(path, ".lock"),
    ] {
        let meta = match fs::symlink_metadata(&file) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(StateError::Io { path: file, source }),
        };
        if !meta.file_type().is_file() {
            return Err(unsafe_at(
                &file,
                "is not a regular file (a link?)".to_owned(),
            ));
        }
        if meta.uid() != me {
            return Err(unsafe_at(
                &file,
                format!("belongs to user {}, not to this user ({me})", meta.uid()),
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(unsafe_at(
                &file,
                format!("is writable by others (mode {:o})", meta.mode() & 0o7777),
            ));
        }
        if meta.mode() & 0o044 != 0 {
            warn!(
                "{} is readable by other users (mode {:o}): it holds keys and secrets; chmod 600 it",
                file.display(),
                meta.mode() & 0o7777
            );
        }
    }
    Ok(())
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
                peer_identity: None,
            },
        );
        state.services.local.insert(
            "s".into(),
            ServiceRecord {
                key: Some("secret".into()),
                cipher: Some("aes-256-gcm".into()),
                timeout_ms: Some(5000),
                ..ServiceRecord::plain("0.0.0.0:8080".parse().expect("addr"))
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
            ("{\"version\":4}", "version 4"),
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
