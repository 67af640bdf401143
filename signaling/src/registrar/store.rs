//! Durable storage of the location service: a snapshot plus a journal.
//!
//! Layout of the data directory:
//!
//! - `snapshot.json`: `{"generation": g, "records": [...]}`, written to
//!   `snapshot.json.tmp`, fsynced and renamed, so it is either the old or the
//!   new snapshot, never a mix;
//! - `journal.<g>.jsonl`: one [`Record`] per line appended after snapshot `g`.
//!   Records are queued as they come, then appended with one `write` and
//!   made durable with one `fdatasync` by the next sync (group commit;
//!   [`Store::begin_sync`] hands it to another thread): the 200 of every
//!   REGISTER whose record a sync covers goes out after it, never before.
//!
//! A journal is filled with zeros before its first record (its
//! preallocation: 4 MiB, or a quarter more than the last full journal),
//! and records overwrite them. An `fdatasync` that grows the file must
//! commit its new size through ext4's journal; one that only overwrites
//! flushes the data. Measured on this project's machine, 500 syncs of
//! 2 kB each: p99 1.6 to 3.2 ms appending against 0.10 to 0.13 ms
//! overwriting (p50 0.085 against 0.052); in the server at 14,000
//! REGISTERs/s (under strace): p50 0.24 to 0.25 ms and p99 2.5 to 4.9
//! appending, p50 0.17 and p99 1.2 overwriting. Every REGISTER's 200
//! waits for up to two syncs. The zeros end the records: JSON lines hold
//! no NUL byte, and a sync writes after every byte acknowledged before
//! it, so what precedes the first NUL is every acknowledged record,
//! perhaps followed by some of a sync the crash interrupted (ignored or
//! replayed, never acknowledged). A journal outgrowing its zeros is
//! appended to as before.
//!
//! Compaction runs beside the registrar, not in its way: the journal
//! switches to generation `g + 1` at once, and a background thread
//! writes snapshot `g + 1` (the state at the switch), renames it into
//! place, deletes the older journals, and prepares the journal of
//! `g + 2`: its file created, synced and its name made durable by a sync
//! of the directory before any record goes in, so the next switch only
//! opens it. A REGISTER never waits for a snapshot (10,000 bindings took
//! tens of milliseconds to write and sync, a spike in every response
//! behind it), nor for a new journal's metadata: created at the switch,
//! on the core's thread, its fsync took 96 ms once in a 40 s REGISTER
//! storm (ext4 committing the snapshot's blocks), and every REGISTER
//! waited behind it. An empty journal of a later generation is replayed
//! like any other, so a crash leaves nothing to clean.
//!
//! Loading replays the snapshot (generation `s`), then every journal of
//! generation `s` or later in order: after a crash between a journal
//! switch and its snapshot's rename the old snapshot and both journals
//! hold everything. A crash mid-append leaves a torn last line: it is
//! skipped (its 200 was never sent) and cut off so that later appends
//! start on a clean line. Journals older than the snapshot and a
//! half-written snapshot are leftovers of a compaction and are deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Record;

const SNAPSHOT: &str = "snapshot.json";
const SNAPSHOT_TMP: &str = "snapshot.json.tmp";

/// The zeros a journal starts with, at least: about 15,000 records of a
/// REGISTER with one contact, 10,000 being the default compaction point.
pub(super) const MIN_PREALLOCATION: u64 = 4 * 1024 * 1024;

/// The zeros a journal starts with, at most, however long the last one grew.
const MAX_PREALLOCATION: u64 = 256 * 1024 * 1024;

/// Zeros are written and synced this much at a time, so that a journal
/// being prepared does not hold the disk's cache for the live journal's
/// syncs behind tens of megabytes.
const ZEROS_CHUNK: usize = 1024 * 1024;

/// Errors of the registrar store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A store file could not be read, written or synced.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A store file is damaged in a way a crash cannot explain
    /// (a bad snapshot, or a bad journal line that is not the last).
    #[error("{path}:{line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line (0 for the snapshot as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A shared store (Redis) could not be reached or refused the write:
    /// nothing is wrong with the request, try again later.
    #[error("location store {store} unavailable: {reason}")]
    Unavailable {
        /// The store's address.
        store: String,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// Whether the store is out of reach (answer 503 and ask to retry)
    /// rather than broken (500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    generation: u64,
    records: Vec<Record>,
}

/// The open store: appends records to the journal and compacts it.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    generation: u64,
    /// Shared with the [`JournalSync`] in flight, which writes its lines
    /// at the records' end and fsyncs it on another thread while records
    /// are queued here.
    journal: Arc<File>,
    /// Bytes of the journal file known durable, the records' end: the
    /// next sync writes its lines there, and a failed one cuts the file
    /// back to them.
    synced_bytes: u64,
    /// The zeros the next journal prepared is given (see the module
    /// documentation).
    preallocation: u64,
    /// Records queued for the next sync, as journal lines.
    pending: Vec<u8>,
    /// The buffer of the last sync, emptied, for the next one's lines: two
    /// buffers take turns, so a busy store does not allocate (and glibc
    /// does not consolidate its free lists for) a buffer of tens of
    /// kilobytes per sync. Measured at 14,000 REGISTERs/s, that one
    /// allocation was 4.5 % of the SIP core's time.
    spare: Vec<u8>,
    /// Records in the journal, queued ones included.
    journal_records: usize,
    /// Records known durable.
    synced_records: usize,
    /// The snapshot being written in the background, if any; it returns
    /// the generation whose journal it prepared.
    compaction: Option<std::thread::JoinHandle<Result<u64, StoreError>>>,
    /// The generation whose journal is created and durable, empty, ready
    /// for the next switch.
    prepared: Option<u64>,
}

/// One sync of the journal, begun by [`Store::begin_sync`]: the records
/// queued before it began, appended with one `write` and made durable with
/// one `fdatasync`, on another thread while the store queues more.
#[derive(Debug)]
pub struct JournalSync {
    journal: Arc<File>,
    generation: u64,
    /// Where its lines go: the end of the journal's records.
    offset: u64,
    /// The records' lines.
    lines: Vec<u8>,
    /// Records in the journal once these are in.
    records: usize,
    outcome: Option<io::Result<()>>,
}

impl JournalSync {
    /// Where its lines are, to tell one buffer from another.
    #[cfg(test)]
    pub(super) fn buffer(&self) -> *const u8 {
        self.lines.as_ptr()
    }

    /// Writes and waits for the disk.
    pub fn run(&mut self) {
        self.outcome = Some(
            self.journal
                .write_all_at(&self.lines, self.offset)
                .and_then(|()| self.journal.sync_data()),
        );
    }
}

impl Store {
    /// Opens the store in `dir` (created if missing) and returns it with the
    /// records to replay, in order, into [`super::Registrar::from_records`].
    pub fn open(dir: &Path) -> Result<(Self, Vec<Record>), StoreError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let snapshot_path = dir.join(SNAPSHOT);
        let snapshot = match fs::read(&snapshot_path) {
            Ok(bytes) => {
                serde_json::from_slice::<Snapshot>(&bytes).map_err(|e| StoreError::Corrupt {
                    path: snapshot_path.clone(),
                    line: 0,
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Snapshot {
                generation: 0,
                records: Vec::new(),
            },
            Err(e) => return Err(io_error(&snapshot_path)(e)),
        };
        let mut records = snapshot.records;
        // The snapshot's journal and any later one (a switch whose snapshot
        // was not renamed yet), oldest first; the last is appended to.
        let mut generations = journal_generations(dir)?
            .into_iter()
            .filter(|g| *g >= snapshot.generation)
            .collect::<Vec<_>>();
        generations.sort_unstable();
        let generation = generations.last().copied().unwrap_or(snapshot.generation);
        let journal_path = journal_path(dir, generation);
        let (mut journal_records, mut good_bytes) = (0, 0);
        for g in generations {
            let path = self::journal_path(dir, g);
            let bytes = fs::read(&path).map_err(io_error(&path))?;
            let (replayed, good) = parse_journal(&path, &bytes)?;
            (journal_records, good_bytes) = (replayed.len(), good);
            records.extend(replayed);
        }
        let journal = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&journal_path)
            .map_err(io_error(&journal_path))?;
        // Cut a torn tail so that the next record starts on its own line,
        // and zero what follows the records again.
        let preallocation = next_preallocation(good_bytes);
        journal
            .set_len(good_bytes)
            .and_then(|()| write_zeros(&journal, good_bytes, good_bytes + preallocation))
            .and_then(|()| journal.sync_all())
            .map_err(io_error(&journal_path))?;
        remove_leftovers(dir, snapshot.generation)?;
        // Before any load: the first compaction only opens it.
        prepare_journal(dir, generation + 1, preallocation)?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                generation,
                journal: Arc::new(journal),
                pending: Vec::new(),
                spare: Vec::new(),
                journal_records,
                synced_bytes: good_bytes,
                preallocation,
                synced_records: journal_records,
                compaction: None,
                prepared: Some(generation + 1),
            },
            records,
        ))
    }

    /// Appends a record and fsyncs it (with any record written before it).
    /// Only after this returns may the 200 go out. On failure the journal
    /// is cut back to what was synced before.
    pub fn append(&mut self, record: &Record) -> Result<(), StoreError> {
        self.write(record)?;
        self.sync()
    }

    /// Queues a record for the journal without touching the disk: it is
    /// written and made durable by the next sync ([`Store::begin_sync`]),
    /// together with every record queued before it, in one `write` and one
    /// `fdatasync` off the caller's thread. A record that cannot be
    /// serialized is refused and nothing is queued.
    pub fn write(&mut self, record: &Record) -> Result<(), StoreError> {
        let before = self.pending.len();
        if let Err(e) = serde_json::to_writer(&mut self.pending, record) {
            self.pending.truncate(before);
            return Err(StoreError::Corrupt {
                path: journal_path(&self.dir, self.generation),
                line: self.journal_records + 1,
                reason: e.to_string(),
            });
        }
        self.pending.push(b'\n');
        self.journal_records += 1;
        Ok(())
    }

    /// Whether records were queued since the last sync began.
    fn unsynced(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Makes every record written so far durable with one `fdatasync`, on
    /// the caller's thread: [`Store::begin_sync`], run, [`Store::finish_sync`].
    pub fn sync(&mut self) -> Result<(), StoreError> {
        match self.begin_sync() {
            None => Ok(()),
            Some(mut job) => {
                job.run();
                self.finish_sync(job)
            }
        }
    }

    /// The sync of every record queued so far: their `write` and an
    /// `fdatasync`, to run on any thread (the records queued meanwhile are
    /// the next sync's); `None` when nothing is queued. One at a time: the
    /// caller hands it back to [`Store::finish_sync`] before beginning the
    /// next.
    pub fn begin_sync(&mut self) -> Option<JournalSync> {
        self.unsynced().then(|| JournalSync {
            journal: Arc::clone(&self.journal),
            generation: self.generation,
            offset: self.synced_bytes,
            lines: std::mem::replace(&mut self.pending, std::mem::take(&mut self.spare)),
            records: self.journal_records,
            outcome: None,
        })
    }

    /// Takes a sync's outcome. Success makes the records it covered
    /// durable. On failure the journal is cut back to what was synced
    /// before, and the records queued after the sync began are dropped
    /// too: after a failed fsync the kernel may have dropped the dirty
    /// pages, so none of them can be counted as stored, and their
    /// REGISTERs must not be answered 200.
    pub fn finish_sync(&mut self, mut job: JournalSync) -> Result<(), StoreError> {
        let path = journal_path(&self.dir, job.generation);
        let outcome = job
            .outcome
            .take()
            .unwrap_or_else(|| Err(io::Error::other("the sync was never run")));
        let synced_bytes = job.lines.len() as u64;
        job.lines.clear();
        self.spare = job.lines;
        if job.generation != self.generation {
            // A compaction switched journals since: it synced everything
            // before the switch itself.
            return outcome.map_err(|source| StoreError::Io { path, source });
        }
        match outcome {
            Ok(()) => {
                self.synced_bytes += synced_bytes;
                self.synced_records = job.records;
                Ok(())
            }
            Err(source) => {
                // A torn line in the middle would make the journal unreadable.
                let _ = self.journal.set_len(self.synced_bytes);
                self.pending.clear();
                self.journal_records = self.synced_records;
                Err(StoreError::Io { path, source })
            }
        }
    }

    /// Number of records in the current journal: the driver compacts when it grows.
    pub fn journal_records(&self) -> usize {
        self.journal_records
    }

    /// Whether a snapshot is being written in the background.
    pub fn compacting(&mut self) -> bool {
        if self
            .compaction
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
        {
            if let Err(error) = self.wait_compaction() {
                tracing::warn!(%error, "registrar store compaction failed; its journals are kept and replayed");
            }
        }
        self.compaction.is_some()
    }

    /// Compacts: `records` (the registrar's whole state, see
    /// [`super::Registrar::records`]) become the next snapshot and an empty
    /// journal starts now. Only the switch to the new journal happens here;
    /// the snapshot is written by a thread of its own (see the module
    /// documentation). Call it with nothing unsynced and no compaction
    /// running ([`Store::compacting`]); a second one waits for the first.
    pub fn compact(&mut self, records: Vec<Record>) -> Result<(), StoreError> {
        if self.compaction.is_some() {
            self.wait_compaction()?;
        }
        self.sync()?;
        let next = self.generation + 1;
        let new_journal_path = journal_path(&self.dir, next);
        if self.prepared.take() != Some(next) {
            // The last preparation failed: made here, on the caller's thread.
            prepare_journal(&self.dir, next, self.preallocation)?;
        }
        self.journal = Arc::new(
            OpenOptions::new()
                .write(true)
                .open(&new_journal_path)
                .map_err(io_error(&new_journal_path))?,
        );
        // The journal after the next is sized after this one, which is full.
        self.preallocation = next_preallocation(self.synced_bytes);
        let preallocation = self.preallocation;
        self.generation = next;
        self.journal_records = 0;
        self.synced_bytes = 0;
        self.synced_records = 0;
        let dir = self.dir.clone();
        let writer = std::thread::Builder::new()
            .name("registrar-snapshot".to_owned())
            .spawn(move || {
                write_snapshot(&dir, next, records)?;
                prepare_journal(&dir, next + 1, preallocation)?;
                Ok(next + 1)
            })
            .map_err(io_error(&self.dir))?;
        self.compaction = Some(writer);
        Ok(())
    }

    /// Waits for the background snapshot, if one is being written, and
    /// says how it went.
    pub fn wait_compaction(&mut self) -> Result<(), StoreError> {
        match self.compaction.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result.map(|prepared| self.prepared = Some(prepared)),
            Some(Err(_)) => Err(StoreError::Io {
                path: self.dir.clone(),
                source: io::Error::other("the snapshot writer panicked"),
            }),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(error) = self.wait_compaction() {
            tracing::warn!(%error, "registrar store compaction failed; its journals are kept and replayed");
        }
    }
}

/// Writes snapshot `generation` with `records`, renames it into place and
/// deletes the journals before it: what [`Store::compact`] leaves to a
/// thread.
fn write_snapshot(dir: &Path, generation: u64, records: Vec<Record>) -> Result<(), StoreError> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let snapshot = Snapshot {
        generation,
        records,
    };
    let bytes = serde_json::to_vec(&snapshot).map_err(|e| StoreError::Corrupt {
        path: tmp.clone(),
        line: 0,
        reason: e.to_string(),
    })?;
    let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    let snapshot_path = dir.join(SNAPSHOT);
    fs::rename(&tmp, &snapshot_path).map_err(io_error(&snapshot_path))?;
    sync_dir(dir)?;
    remove_journals_before(dir, generation)
}

/// Deletes the journals older than snapshot `generation`: it covers them.
fn remove_journals_before(dir: &Path, generation: u64) -> Result<(), StoreError> {
    for old in journal_generations(dir)?
        .into_iter()
        .filter(|g| *g < generation)
    {
        let path = journal_path(dir, old);
        fs::remove_file(&path).map_err(io_error(&path))?;
    }
    Ok(())
}

/// The generations of the journals in `dir`.
fn journal_generations(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut generations = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let name = entry.map_err(io_error(dir))?.file_name();
        let generation = name
            .to_str()
            .and_then(|n| n.strip_prefix("journal."))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|g| g.parse::<u64>().ok());
        generations.extend(generation);
    }
    Ok(generations)
}

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal.{generation}.jsonl"))
}

/// Parses journal lines up to the first NUL (the preallocated zeros); a
/// bad last line is a torn write and is skipped. Returns the records and
/// the length of the well-formed prefix.
fn parse_journal(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, u64), StoreError> {
    let bytes = &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())];
    let mut records = Vec::new();
    let mut good = 0usize;
    let mut start = 0usize;
    let mut line_number = 0usize;
    while start < bytes.len() {
        line_number += 1;
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|offset| start + offset);
        let line = &bytes[start..end.unwrap_or(bytes.len())];
        let parsed = serde_json::from_slice::<Record>(line);
        match (parsed, end) {
            (Ok(record), Some(end)) => {
                records.push(record);
                start = end + 1;
                good = start;
            }
            (Err(e), Some(end)) if end + 1 < bytes.len() => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_number,
                    reason: e.to_string(),
                })
            }
            // The last line: unterminated or unparsable means the write was torn.
            (Ok(_) | Err(_), _) => break,
        }
    }
    Ok((records, good as u64))
}

/// Deletes a half-written snapshot and the journals older than the
/// snapshot (`generation`), which it covers.
fn remove_leftovers(dir: &Path, generation: u64) -> Result<(), StoreError> {
    remove_journals_before(dir, generation)?;
    let tmp = dir.join(SNAPSHOT_TMP);
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&tmp)(e)),
        _ => Ok(()),
    }
}

/// Creates the journal of `generation` as `preallocation` zeros, and makes
/// it and its name durable before any record goes in. It holds no record
/// yet: it is newer than every journal opened, or an earlier preparation
/// of it failed.
fn prepare_journal(dir: &Path, generation: u64, preallocation: u64) -> Result<(), StoreError> {
    let path = journal_path(dir, generation);
    File::create(&path)
        .and_then(|file| {
            write_zeros(&file, 0, preallocation)?;
            file.sync_all()
        })
        .map_err(io_error(&path))?;
    sync_dir(dir)
}

/// The zeros for a journal after one that holds `bytes` of records.
fn next_preallocation(bytes: u64) -> u64 {
    (bytes + bytes / 4).clamp(MIN_PREALLOCATION, MAX_PREALLOCATION)
}

/// Writes zeros over `from..to` of `file`, syncing each chunk.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0; ZEROS_CHUNK];
    let mut at = from;
    while at < to {
        let chunk = (to - at).min(ZEROS_CHUNK as u64);
        file.write_all_at(&zeros[..chunk as usize], at)?;
        file.sync_data()?;
        at += chunk;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}
