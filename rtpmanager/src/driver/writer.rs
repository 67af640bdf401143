//! Saving the calls off the async executor, coalesced.
//!
//! Every change of the calls (a request, a latch, an anchor) asks for a
//! save. A dedicated thread waits [`COALESCE`] after the first request,
//! so the changes of one call setup (offer, answer, bridge, the two
//! latches) or of a burst of calls become one write and one fsync, then
//! reads the calls changed since the last save and appends them to the
//! journal ([`StateLog`]; every call, as a new snapshot, when the journal
//! is due for compaction). A change is therefore durable
//! within about `COALESCE` plus one write; a manager killed inside that
//! window re-adopts the state of the previous save (its latches are
//! learned again from the next packets, its kernel entries are those the
//! saved state derives).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::session::persist::{Save, StateFile, StateLog};

/// How long a save waits for more changes: short next to a restart, long
/// next to the few milliseconds a call setup's requests take.
pub const COALESCE: Duration = Duration::from_millis(20);

enum Message {
    Changed,
    /// Save now if a change is pending, then acknowledge.
    Flush(mpsc::SyncSender<()>),
}

/// The handle of the writer thread.
#[derive(Debug)]
pub struct StateWriter {
    tx: Mutex<Option<mpsc::Sender<Message>>>,
    /// A change is waiting for its save: the changes after it ride on it
    /// without waking the thread (a call's setup is several requests, each
    /// a change; a message each was a context switch each).
    pending: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Reads what to save (under the engine's lock, briefly): every call when
/// passed `true`, else the calls changed since the last read; `None` once
/// the manager is gone.
pub type ReadState = Box<dyn Fn(bool) -> Option<Save> + Send>;

impl StateWriter {
    /// Starts the writer thread for `file`.
    pub fn start(file: StateFile, read: ReadState) -> std::io::Result<StateWriter> {
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicBool::new(false));
        let unsaved = Arc::clone(&pending);
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || run(&mut StateLog::new(file), &read, &rx, &unsaved))?;
        Ok(StateWriter {
            tx: Mutex::new(Some(tx)),
            pending,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The calls changed: they are saved within [`COALESCE`].
    pub fn changed(&self) {
        if self.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(Message::Changed);
        }
    }

    /// Saves a pending change now and waits for it.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(Message::Flush(ack)).is_ok());
        if sent {
            let _ = done.recv();
        }
    }

    /// Saves a pending change, then stops: later changes are not saved
    /// (a clean exit may remove the file after this).
    pub fn close(&self) {
        self.flush();
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn run(log: &mut StateLog, read: &ReadState, rx: &mpsc::Receiver<Message>, pending: &AtomicBool) {
    // The save is due COALESCE after the first unsaved change, however
    // many follow: a steady stream of changes is saved every COALESCE.
    let mut due: Option<Instant> = None;
    loop {
        let message = if let Some(due) = due {
            match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    save(log, read, pending);
                    return;
                }
            }
        } else {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        };
        match message {
            // Later changes within the window ride on the first one's save.
            Some(Message::Changed) => {
                due.get_or_insert_with(|| Instant::now() + COALESCE);
            }
            Some(Message::Flush(ack)) => {
                if due.take().is_some() {
                    save(log, read, pending);
                }
                let _ = ack.send(());
            }
            None => {
                due = None;
                save(log, read, pending);
            }
        }
    }
}

/// Clears `pending` just before reading the state: a change that found it
/// set was made before that read, so this save has it; a change after the
/// clear sets it again and asks for the next save.
fn save(log: &mut StateLog, read: &ReadState, pending: &AtomicBool) {
    pending.store(false, Ordering::SeqCst);
    let Some(save) = read(log.wants_everything()) else {
        return;
    };
    if let Err(e) = log.save(&save) {
        tracing::warn!(error = %e, "session state not saved; a restart would not re-adopt the calls changed since the last save");
    }
}

/// A [`ReadState`] over a weakly held value, so the writer does not keep
/// the manager alive.
pub fn reader<T: Send + Sync + 'static>(
    of: &Arc<T>,
    read: impl Fn(&T, bool) -> Save + Send + 'static,
) -> ReadState {
    let weak: Weak<T> = Arc::downgrade(of);
    Box::new(move |everything| weak.upgrade().map(|t| read(&t, everything)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::session::persist::SavedState;

    /// A writer whose reads are counted: one read per save.
    fn counted(dir: &std::path::Path) -> (StateWriter, Arc<AtomicUsize>, StateFile) {
        let file = StateFile::in_dir(dir).expect("state dir");
        let reads = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&reads);
        let read: ReadState = Box::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(Save::Everything(SavedState::default()))
        });
        let writer = StateWriter::start(file.clone(), read).expect("writer thread");
        (writer, reads, file)
    }

    #[test]
    fn changes_within_the_window_become_one_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (writer, reads, file) = counted(dir.path());
        for _ in 0..50 {
            writer.changed();
        }
        std::thread::sleep(COALESCE * 5);
        assert_eq!(reads.load(Ordering::SeqCst), 1, "fifty changes, one save");
        assert!(file.path().exists(), "the state is on disk");
        writer.changed();
        std::thread::sleep(COALESCE * 5);
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "a later change, a second save"
        );
    }

    #[test]
    fn a_change_made_while_a_save_reads_the_state_gets_a_save_of_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = StateFile::in_dir(dir.path()).expect("state dir");
        let reads = Arc::new(AtomicUsize::new(0));
        let writer_slot: Arc<std::sync::OnceLock<Weak<StateWriter>>> = Arc::default();
        let (counter, slot) = (Arc::clone(&reads), Arc::clone(&writer_slot));
        let read: ReadState = Box::new(move |_| {
            // The first save's read races a change (another request).
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                if let Some(writer) = slot.get().and_then(Weak::upgrade) {
                    writer.changed();
                }
            }
            Some(Save::Everything(SavedState::default()))
        });
        let writer = Arc::new(StateWriter::start(file, read).expect("writer thread"));
        writer_slot.set(Arc::downgrade(&writer)).expect("set once");
        writer.changed();
        std::thread::sleep(COALESCE * 6);
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "the racing change is saved too"
        );
    }

    #[test]
    fn flush_saves_a_pending_change_at_once_and_close_stops_saving() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (writer, reads, file) = counted(dir.path());
        writer.flush();
        assert_eq!(
            reads.load(Ordering::SeqCst),
            0,
            "nothing pending, nothing saved"
        );
        writer.changed();
        writer.flush();
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        writer.close();
        file.remove();
        writer.changed();
        std::thread::sleep(COALESCE * 3);
        assert!(!file.path().exists(), "no save after close");
    }
}
