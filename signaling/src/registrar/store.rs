//! Durable storage of the location service: a snapshot plus a journal.
//!
//! Layout of the data directory:
//!
//! - `snapshot.json`: `{"generation": g, "records": [...]}`, written to
//!   `snapshot.json.tmp`, fsynced and renamed, so it is either the old or the
//!   new snapshot, never a mix;
//! - `journal.<g>.jsonl`: one [`Record`] per line appended after snapshot `g`.
//!   Records are written as they come and made durable together by one
//!   [`Store::sync`] (group commit): the 200 of every REGISTER whose record
//!   a sync covers goes out after it, never before.
//!
//! Loading replays the snapshot, then the journal of the same generation.
//! A crash mid-append leaves a torn last line: it is skipped (its 200 was
//! never sent) and cut off so that later appends start on a clean line.
//! Journals of other generations are leftovers of an interrupted compaction
//! and are deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Record;

const SNAPSHOT: &str = "snapshot.json";
const SNAPSHOT_TMP: &str = "snapshot.json.tmp";

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
    journal: File,
    /// Bytes of complete records in the journal, synced or not.
    journal_bytes: u64,
    journal_records: usize,
    /// Bytes and records known durable: a failed sync cuts the journal
    /// back to them.
    synced_bytes: u64,
    synced_records: usize,
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
        let generation = snapshot.generation;
        let mut records = snapshot.records;
        let journal_path = journal_path(dir, generation);
        let (journal_records, good_bytes) = match fs::read(&journal_path) {
            Ok(bytes) => {
                let (replayed, good_bytes) = parse_journal(&journal_path, &bytes)?;
                let count = replayed.len();
                records.extend(replayed);
                (count, good_bytes)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, 0),
            Err(e) => return Err(io_error(&journal_path)(e)),
        };
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal_path)
            .map_err(io_error(&journal_path))?;
        // Cut a torn tail so that the next record starts on its own line.
        journal
            .set_len(good_bytes)
            .and_then(|()| journal.sync_all())
            .map_err(io_error(&journal_path))?;
        remove_leftovers(dir, generation)?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                generation,
                journal,
                journal_bytes: good_bytes,
                journal_records,
                synced_bytes: good_bytes,
                synced_records: journal_records,
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

    /// Writes a record to the journal without waiting for the disk: it is
    /// durable once a later [`Store::sync`] returns. On failure the journal
    /// is cut back to its length before this record (earlier unsynced
    /// records stay, for the sync that covers them).
    pub fn write(&mut self, record: &Record) -> Result<(), StoreError> {
        let path = journal_path(&self.dir, self.generation);
        let mut line = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            line: self.journal_records + 1,
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        if let Err(source) = self.journal.write_all(&line) {
            // Best effort: a torn line in the middle would make the journal unreadable.
            let _ = self.journal.set_len(self.journal_bytes);
            return Err(StoreError::Io { path, source });
        }
        self.journal_bytes += line.len() as u64;
        self.journal_records += 1;
        Ok(())
    }

    /// Whether records were written since the last sync.
    fn unsynced(&self) -> bool {
        self.journal_bytes != self.synced_bytes
    }

    /// Makes every record written so far durable with one `fdatasync`. On
    /// failure the unsynced records are cut off: after a failed fsync the
    /// kernel may have dropped the dirty pages, so none of them can be
    /// counted as stored, and their REGISTERs must not be answered 200.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if !self.unsynced() {
            return Ok(());
        }
        if let Err(source) = self.journal.sync_data() {
            let _ = self.journal.set_len(self.synced_bytes);
            self.journal_bytes = self.synced_bytes;
            self.journal_records = self.synced_records;
            return Err(StoreError::Io {
                path: journal_path(&self.dir, self.generation),
                source,
            });
        }
        self.synced_bytes = self.journal_bytes;
        self.synced_records = self.journal_records;
        Ok(())
    }

    /// Number of records in the current journal: the driver compacts when it grows.
    pub fn journal_records(&self) -> usize {
        self.journal_records
    }

    /// Writes `records` (the registrar's whole state, see
    /// [`super::Registrar::records`]) as the next snapshot and starts an
    /// empty journal. Call it with nothing unsynced: the snapshot holds the
    /// records it is given, whatever the journal held.
    pub fn compact(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let next = self.generation + 1;
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let snapshot = Snapshot {
            generation: next,
            records: records.to_vec(),
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
        let new_journal_path = journal_path(&self.dir, next);
        let new_journal = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&new_journal_path)
            .map_err(io_error(&new_journal_path))?;
        new_journal
            .sync_all()
            .map_err(io_error(&new_journal_path))?;
        let snapshot_path = self.dir.join(SNAPSHOT);
        fs::rename(&tmp, &snapshot_path).map_err(io_error(&snapshot_path))?;
        sync_dir(&self.dir)?;
        let old = journal_path(&self.dir, self.generation);
        self.generation = next;
        self.journal = OpenOptions::new()
            .append(true)
            .open(&new_journal_path)
            .map_err(io_error(&new_journal_path))?;
        self.journal_bytes = 0;
        self.journal_records = 0;
        self.synced_bytes = 0;
        self.synced_records = 0;
        fs::remove_file(&old).map_err(io_error(&old))?;
        Ok(())
    }
}

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal.{generation}.jsonl"))
}

/// Parses journal lines; a bad last line is a torn write and is skipped.
/// Returns the records and the length of the well-formed prefix.
fn parse_journal(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, u64), StoreError> {
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

/// Deletes a half-written snapshot and journals of other generations.
fn remove_leftovers(dir: &Path, generation: u64) -> Result<(), StoreError> {
    let current = journal_path(dir, generation);
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stale_journal =
            name.starts_with("journal.") && name.ends_with(".jsonl") && path != current;
        if stale_journal || name == SNAPSHOT_TMP {
            fs::remove_file(&path).map_err(io_error(&path))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}
