//! Runs a [`Uas`] on a thread of its own, fed by the transports.
//!
//! A thread rather than a tokio task because REGISTER handling waits for
//! the binding store's fsync: on a thread that wait delays only SIP
//! processing (which must wait for it anyway, the 200 may not leave before
//! the fsync), never the transports, the REST API or the RTP manager health
//! checks on the runtime.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Now, RegistrationError, RegistrationView, Uas};
use crate::transport::{Inbound, InboundSink, Transports};

/// Inputs queued for the core before the transports start dropping
/// messages (UDP peers retransmit; TCP ones time out their transaction).
const QUEUE: usize = 8192;

/// Longest sleep when nothing is scheduled.
const IDLE_WAKEUP: Duration = Duration::from_secs(60);

enum Input {
    Inbound(Inbound),
    Registrations(oneshot::Sender<Vec<RegistrationView>>),
    RegistrationsOf(
        String,
        oneshot::Sender<Result<Vec<RegistrationView>, RegistrationError>>,
    ),
    Unregister(
        String,
        oneshot::Sender<Result<(String, usize), RegistrationError>>,
    ),
    ReloadUsers(PathBuf),
    /// Something outside the transports has work for the core (the
    /// B2BUA's media results): run its timers now.
    Wake,
    Stop,
}

/// A handle to the running core: query bindings, reload users, stop.
#[derive(Clone, Debug)]
pub struct CoreHandle {
    sender: SyncSender<Input>,
}

/// The channel between the transports and the core, before either runs.
#[derive(Debug)]
pub struct CoreQueue {
    handle: CoreHandle,
    receiver: Receiver<Input>,
}

impl CoreQueue {
    /// A new queue.
    pub fn new() -> CoreQueue {
        let (sender, receiver) = sync_channel(QUEUE);
        CoreQueue {
            handle: CoreHandle { sender },
            receiver,
        }
    }

    /// A handle to the core before it runs (for tasks that wake it).
    pub fn handle(&self) -> CoreHandle {
        self.handle.clone()
    }

    /// The sink to give [`Transports::start`].
    pub fn sink(&self) -> InboundSink {
        let sender = self.handle.sender.clone();
        std::sync::Arc::new(move |inbound: Inbound| {
            match sender.try_send(Input::Inbound(inbound)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::debug!("SIP core overloaded; message dropped");
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        })
    }

    /// Starts the core's thread; it sends through `transports`.
    pub fn run(self, uas: Uas, transports: Transports) -> std::io::Result<RunningCore> {
        let receiver = self.receiver;
        let thread = std::thread::Builder::new()
            .name("sip-core".to_owned())
            .spawn(move || run(uas, &receiver, &transports))?;
        Ok(RunningCore {
            handle: self.handle,
            thread,
        })
    }
}

impl Default for CoreQueue {
    fn default() -> Self {
        CoreQueue::new()
    }
}

/// The core's thread.
#[derive(Debug)]
pub struct RunningCore {
    handle: CoreHandle,
    thread: JoinHandle<()>,
}

impl RunningCore {
    /// A handle for the REST API and signal handlers.
    pub fn handle(&self) -> CoreHandle {
        self.handle.clone()
    }

    /// Stops the core after the inputs already queued and waits for it.
    pub fn stop(self) {
        // A blocking send: Stop must not be lost to a full queue.
        let _ = self.handle.sender.send(Input::Stop);
        let _ = self.thread.join();
    }
}

impl CoreHandle {
    /// Every current binding, or `None` when the core is not running.
    pub async fn registrations(&self) -> Option<Vec<RegistrationView>> {
        let (reply, answer) = oneshot::channel();
        self.sender.try_send(Input::Registrations(reply)).ok()?;
        answer.await.ok()
    }

    /// The bindings of one address-of-record; `None` when the core is not
    /// running or its queue is full.
    pub async fn registrations_of(
        &self,
        aor: String,
    ) -> Option<Result<Vec<RegistrationView>, RegistrationError>> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .try_send(Input::RegistrationsOf(aor, reply))
            .ok()?;
        answer.await.ok()
    }

    /// Removes (durably) every binding of one address-of-record and says
    /// how many there were; `None` when the core is not running or busy.
    pub async fn unregister(
        &self,
        aor: String,
    ) -> Option<Result<(String, usize), RegistrationError>> {
        let (reply, answer) = oneshot::channel();
        self.sender.try_send(Input::Unregister(aor, reply)).ok()?;
        answer.await.ok()
    }

    /// Makes the core run its (and its call handler's) due timers; a full
    /// queue needs no wake-up, the core is about to run anyway.
    pub fn wake(&self) {
        let _ = self.sender.try_send(Input::Wake);
    }

    /// Reloads the users file; on error the core keeps the previous users
    /// and logs why.
    pub fn reload_users(&self, path: PathBuf) {
        if self.sender.try_send(Input::ReloadUsers(path)).is_err() {
            tracing::warn!("users file not reloaded: the SIP core is busy or stopped");
        }
    }
}

fn run(mut uas: Uas, receiver: &Receiver<Input>, transports: &Transports) {
    loop {
        let now = Now::current();
        let wait = uas
            .poll_timeout(now)
            .map_or(IDLE_WAKEUP, |at| at.saturating_duration_since(now.instant));
        match receiver.recv_timeout(wait) {
            Ok(Input::Inbound(inbound)) => uas.handle_inbound(Now::current(), inbound),
            Ok(Input::Registrations(reply)) => {
                let _ = reply.send(uas.registrations(Now::current()));
            }
            Ok(Input::RegistrationsOf(aor, reply)) => {
                let _ = reply.send(uas.registrations_of(Now::current(), &aor));
            }
            Ok(Input::Unregister(aor, reply)) => {
                let _ = reply.send(uas.unregister(Now::current(), &aor));
            }
            Ok(Input::ReloadUsers(path)) => match uas.authenticator_mut().reload_users(&path) {
                Ok(users) => tracing::info!(users, "users file reloaded"),
                Err(error) => {
                    tracing::warn!(%error, "users file not reloaded; the previous users stay");
                }
            },
            Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(Input::Wake) | Err(RecvTimeoutError::Timeout) => {}
        }
        uas.handle_timeout(Now::current());
        while let Some(outbound) = uas.poll_transmit() {
            transports.send(outbound);
        }
    }
    tracing::debug!("SIP core stopped");
}
