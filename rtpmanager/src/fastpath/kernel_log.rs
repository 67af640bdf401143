//! The programs' aya-log records, read into this process's tracing.
//!
//! The programs log only unusual paths, at debug level, rate-limited (see
//! `rtpmanager-ebpf/src/log.rs`). Whether they log at all is decided at
//! load: `AYA_LOG_LEVEL` is set to debug when the tracing filter enables
//! debug for [`TARGET`] (e.g. `RUST_LOG=switchboard_rtpmanager::fastpath=debug`),
//! else to off, and only then does a [`LogReader`] thread drain the ring
//! buffer. Changing the filter later takes a restart.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use aya::Ebpf;
use aya_log::EbpfLogger;

/// The tracing target of the programs' records.
pub const TARGET: &str = "switchboard_rtpmanager::fastpath::kernel";

/// `AYA_LOG_LEVEL` for the programs: `aya_log::Level::Debug` when tracing
/// shows debug records of [`TARGET`], else 0 (nothing).
pub fn program_level() -> u8 {
    if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// Forwards `log` records (what aya-log produces) to tracing under
/// [`TARGET`], keeping their level.
#[derive(Clone, Copy, Debug, Default)]
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{message}"),
            log::Level::Info => tracing::info!(target: TARGET, "{message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Why the programs' records cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogReaderError {
    #[error("the programs' log ring buffer: {0}")]
    Init(#[from] aya_log::Error),
    #[error("cannot start the log reader thread: {0}")]
    Thread(std::io::Error),
}

/// A thread draining the programs' log ring buffer into a `log::Log`;
/// stopped and joined on drop.
pub struct LogReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader").finish_non_exhaustive()
    }
}

impl LogReader {
    /// Takes the object's `AYA_LOGS` ring buffer and starts reading it.
    pub fn start<L: log::Log + Send + 'static>(
        ebpf: &mut Ebpf,
        logger: L,
    ) -> Result<LogReader, LogReaderError> {
        let mut reader = EbpfLogger::init_with_logger(ebpf, logger)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("bpf-log".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let mut fds = [libc::pollfd {
                        fd: reader.as_fd().as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    }];
                    // A bounded wait, so a drop is noticed within 200 ms.
                    // SAFETY: one valid pollfd for the length given.
                    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 200) };
                    if ready > 0 {
                        reader.flush();
                    }
                }
                reader.flush();
            })
            .map_err(LogReaderError::Thread)?;
        Ok(LogReader {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
