//! Call detail records: one JSON line per ended call in `--cdr-file`.
//!
//! The B2BUA builds a [`Cdr`] on the SIP core's thread when a call's media
//! is deleted (with the manager's final figures) or, for a call that never
//! had media, when it ends, and hands it to a [`CdrSink`]: a bounded
//! channel that never blocks the core (a full channel drops the record and
//! counts it). A writer thread of its own serializes each record and
//! appends it with a single `write(2)` on a file opened `O_APPEND`, so
//! lines from a crash are whole but the last, and nothing is ever written
//! in the middle of another line. [`CdrControl::reopen`] (SIGHUP) makes it
//! reopen the file by its path before its next record, for logrotate.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Serialize;

use crate::b2bua::LegFigures;
use crate::events::{EndedBy, Party};

/// Records the channel holds before new ones are dropped: several seconds
/// of calls ending at 1000/s while the disk stalls.
pub const QUEUE: usize = 16 * 1024;

/// One ended call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cdr {
    /// The call's id in the API.
    pub id: String,
    /// The caller's Call-ID (leg a).
    pub call_id: String,
    /// Our Call-ID towards the callee (leg b), when one was dialled.
    pub callee_call_id: Option<String>,
    /// The call's id on the RTP manager.
    pub media_call_id: String,
    pub caller: Party,
    pub callee: Option<Party>,
    /// The caller's Request-URI.
    pub dialled: String,
    /// The dialplan route.
    pub route: String,
    /// The RTP manager's id, when the call had media.
    pub manager: Option<String>,
    pub started_at_ms: u64,
    pub answered_at_ms: Option<u64>,
    pub ended_at_ms: u64,
    /// From the INVITE to the end.
    pub duration_ms: u64,
    /// From the answer to the end; 0 when unanswered.
    pub talk_ms: u64,
    /// The final response the caller got: 200 once answered.
    pub final_status: u16,
    /// Why it ended: hangup, cancelled, failed, media_timeout,
    /// session_timer, shutdown, admin or node_lost.
    pub reason: &'static str,
    pub ended_by: EndedBy,
    /// The codec of the answer sent to the caller (`PCMU/8000`).
    pub codec: Option<String>,
    /// The manager's final figures per leg (empty without media).
    pub legs: Vec<LegFigures>,
    /// Why the final figures are missing, when the call had media.
    pub media_error: Option<String>,
}

/// What the channel carries (boxed: a record is large, the channel holds many slots).
type Line = Box<Cdr>;

/// Where the B2BUA sends its records; never blocks.
#[derive(Clone, Debug)]
pub struct CdrSink {
    sender: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
}

impl CdrSink {
    /// Queues a record; a full queue drops it (counted, logged at powers of two).
    pub fn send(&self, cdr: Cdr) {
        match self.sender.try_send(Box::new(cdr)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "CDR queue full or writer gone: record dropped");
                }
            }
        }
    }

    /// Records dropped since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The receiving end of a sink without a writer (call-flow tests).
#[cfg(test)]
pub(crate) struct CdrQueue(Receiver<Line>);

#[cfg(test)]
impl CdrQueue {
    /// A sink and what it received.
    pub(crate) fn new() -> (CdrSink, CdrQueue) {
        let (sender, receiver) = sync_channel(1024);
        (
            CdrSink {
                sender,
                dropped: Arc::default(),
            },
            CdrQueue(receiver),
        )
    }

    /// The records sent since the last call.
    pub(crate) fn records(&self) -> Vec<Cdr> {
        self.0.try_iter().map(|cdr| *cdr).collect()
    }
}

/// Steers the writer thread from signal handlers. It holds no end of the
/// channel, so the writer still ends once every sink is gone.
#[derive(Clone, Debug)]
pub struct CdrControl {
    reopen: Arc<AtomicBool>,
}

impl CdrControl {
    /// Makes the writer reopen the file by its path before the next record
    /// (after logrotate renamed it; the renamed file gets nothing more).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

/// The writer thread; join it after every sink is dropped to be sure the
/// last records reached the file.
#[derive(Debug)]
pub struct CdrWriter {
    thread: JoinHandle<()>,
}

impl CdrWriter {
    /// Opens `path` (created if missing, appended to) and starts the
    /// writer with a queue of `capacity` records.
    pub fn start(path: &Path, capacity: usize) -> io::Result<(CdrWriter, CdrSink, CdrControl)> {
        let file = open(path)?;
        let (sender, receiver) = sync_channel(capacity);
        let reopen = Arc::new(AtomicBool::new(false));
        let path = path.to_owned();
        let flag = Arc::clone(&reopen);
        let thread = std::thread::Builder::new()
            .name("cdr-writer".to_owned())
            .spawn(move || write_forever(&path, file, &receiver, &flag))?;
        Ok((
            CdrWriter { thread },
            CdrSink {
                sender,
                dropped: Arc::default(),
            },
            CdrControl { reopen },
        ))
    }

    /// Waits until the writer has written every queued record (every
    /// [`CdrSink`] and [`CdrControl`] must be dropped first).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Opens the file for appending; a last line left without its newline by
/// a crash is ended first, so the next record starts a line of its own.
fn open(path: &Path) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .read(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

fn write_forever(path: &Path, mut file: File, receiver: &Receiver<Line>, reopen: &AtomicBool) {
    let mut line = Vec::with_capacity(2048);
    while let Ok(next) = receiver.recv() {
        if reopen.swap(false, Ordering::Relaxed) {
            match open(path) {
                Ok(new) => {
                    file = new;
                    tracing::info!(path = %path.display(), "CDR file reopened");
                }
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "CDR file not reopened; writing on to the old one");
                }
            }
        }
        let cdr = next;
        line.clear();
        if let Err(error) = serde_json::to_writer(&mut line, &cdr) {
            tracing::warn!(%error, id = %cdr.id, "CDR not serialized");
            continue;
        }
        line.push(b'\n');
        // One write(2) on an O_APPEND file: the line lands whole after
        // the others, or (full disk) partly, then ended so the next line
        // starts clean.
        match file.write(&line) {
            Ok(n) if n == line.len() => {}
            Ok(n) => {
                tracing::warn!(
                    written = n,
                    len = line.len(),
                    "CDR line written partly (disk full?)"
                );
                let _ = file.write(b"\n");
            }
            Err(error) => tracing::warn!(%error, id = %cdr.id, "CDR not written"),
        }
    }
}

/// The codec of the first format of an SDP's first audio stream
/// (`PCMU/8000`), from its rtpmap or the static payload types.
pub fn codec_of(sdp: &str) -> Option<String> {
    let mut lines = sdp.lines().map(str::trim);
    let media = lines.find(|l| l.starts_with("m=audio "))?;
    let pt = media.split_whitespace().nth(3)?;
    let rtpmap = format!("a=rtpmap:{pt} ");
    let mapped = lines
        .take_while(|l| !l.starts_with("m="))
        .find_map(|l| l.strip_prefix(rtpmap.as_str()));
    if let Some(name) = mapped {
        return Some(name.trim().to_owned());
    }
    let name = match pt {
        "0" => "PCMU/8000",
        "3" => "GSM/8000",
        "8" => "PCMA/8000",
        "9" => "G722/8000",
        "18" => "G729/8000",
        _ => return None,
    };
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdr(id: &str) -> Cdr {
        Cdr {
            id: id.to_owned(),
            call_id: "c@x".to_owned(),
            callee_call_id: None,
            media_call_id: "m".to_owned(),
            caller: Party {
                uri: "sip:a@x".to_owned(),
                display_name: None,
                address: "192.0.2.1:5060".to_owned(),
                transport: "udp".to_owned(),
            },
            callee: None,
            dialled: "sip:b@x".to_owned(),
            route: "r".to_owned(),
            manager: None,
            started_at_ms: 1,
            answered_at_ms: None,
            ended_at_ms: 2,
            duration_ms: 1,
            talk_ms: 0,
            final_status: 404,
            reason: "failed",
            ended_by: EndedBy::System,
            codec: None,
            legs: Vec::new(),
            media_error: None,
        }
    }

    fn wait_for_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= n {
                return text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("each line is JSON"))
                    .collect();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("fewer than {n} lines in {}", path.display());
    }

    #[test]
    fn records_are_appended_one_line_each_after_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cdr.jsonl");
        std::fs::write(&path, "{\"id\":\"old\"}\n{\"id\":\"torn").expect("seed file");
        let (writer, sink, control) = CdrWriter::start(&path, 8).expect("writer starts");
        sink.send(cdr("one"));
        sink.send(cdr("two"));
        drop((sink, control));
        writer.join();
        let text = std::fs::read_to_string(&path).expect("file");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[1], "{\"id\":\"torn", "the torn line stays alone");
        let two: serde_json::Value = serde_json::from_str(lines[3]).expect("json");
        assert_eq!(two["id"], "two");
        assert_eq!(two["ended_by"], "system");
        assert_eq!(two["final_status"], 404);
    }

    #[test]
    fn reopen_writes_to_a_new_file_after_a_rename() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cdr.jsonl");
        let rotated = dir.path().join("cdr.jsonl.1");
        let (writer, sink, control) = CdrWriter::start(&path, 8).expect("writer starts");
        sink.send(cdr("before"));
        wait_for_lines(&path, 1);
        std::fs::rename(&path, &rotated).expect("rotate");
        control.reopen();
        sink.send(cdr("after"));
        let new = wait_for_lines(&path, 1);
        assert_eq!(new[0]["id"], "after");
        let old = wait_for_lines(&rotated, 1);
        assert_eq!(old.len(), 1, "nothing more went to the rotated file");
        drop((sink, control));
        writer.join();
    }

    #[test]
    fn a_full_queue_drops_and_counts_rather_than_block() {
        let (sender, _receiver) = sync_channel(1);
        let sink = CdrSink {
            sender,
            dropped: Arc::default(),
        };
        sink.send(cdr("fits"));
        sink.send(cdr("dropped"));
        sink.send(cdr("dropped too"));
        assert_eq!(sink.dropped(), 2);
    }

    #[test]
    fn the_codec_is_the_first_audio_format() {
        let sdp = "v=0\r\nm=audio 4000 RTP/AVP 96 0\r\na=rtpmap:96 opus/48000/2\r\n";
        assert_eq!(codec_of(sdp).as_deref(), Some("opus/48000/2"));
        let static_pt =
            "v=0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(codec_of(static_pt).as_deref(), Some("PCMU/8000"));
        assert_eq!(codec_of("v=0\r\nm=video 1 RTP/AVP 0\r\n"), None);
    }
}
