//! Runs a [`Uas`] on a thread of its own, fed by the transports.
//!
//! A thread rather than a tokio task because the core is one long-running
//! state machine that must not wait behind (or hold up) the transports, the
//! REST API or the RTP manager health checks on the runtime.
//!
//! Group commit, off the core's thread: after every input the core is
//! handed [`super::Input::Commit`], and when binding changes are waiting
//! and no sync is running it begins one ([`Output::Sync`]). The
//! commit thread (`Committer`) runs it (an fsync of the journal, or a pipeline
//! to Redis) while the core goes on with other messages, REGISTERs
//! included; their changes are the next sync's. The REGISTERs' 200s leave
//! when the sync covering them comes back ([`super::Input::Synced`]), never
//! before. So an idle server answers a lone REGISTER after one fsync, a
//! busy one shares each fsync among all the REGISTERs that arrived during
//! the previous one, and no other message ever waits for the disk.
//!
//! The core's thread reads the UDP socket itself and takes every other
//! input (stream messages, media results, queries, finished syncs) from
//! its queue, one of each per turn so neither starves the other. Idle, it
//! sleeps in `ppoll` on the socket and on an event fd that a queued input
//! writes to only while the core sleeps ([`Waker`]): a datagram wakes the
//! core directly, and a busy core reads the next one without any wake-up.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SendError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::time::TimeSpec;
use tokio::sync::oneshot;

use super::{Now, Observation, Output, RegistrationError, RegistrationView, Uas};
use crate::b2bua::MediaLink;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::registrar::SyncJob;
use crate::transport::limits::{Source, TransportStats};
use crate::transport::{Inbound, InboundSink, Received, Transports, MAX_DATAGRAM};

/// How much the core's input queue holds before the transports drop
/// messages (UDP peers retransmit; TCP ones time out their transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Inputs of any kind.
    pub messages: usize,
    /// Octets of received messages (as allocated, not only as used).
    pub bytes: usize,
}

impl Default for QueueLimits {
    /// 8192 messages and 32 MiB: a second or more of a busy server's
    /// traffic, while a queue full of the largest messages stays bounded.
    fn default() -> Self {
        QueueLimits {
            messages: 8192,
            bytes: 32 * 1024 * 1024,
        }
    }
}

/// One source may hold this fraction (1/n) of the queue's messages and
/// octets, so a flooding source leaves the rest to everyone else.
const SOURCE_SHARE: usize = 4;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// The queue holds its limit of octets or messages.
    Full,
    /// The source holds its share of them.
    SourceShare,
}

/// The octets and messages queued, in all and per source: reserved by the
/// transports' sink before a message is queued, released by the core when
/// it takes it.
#[derive(Debug)]
struct Budget {
    limits: QueueLimits,
    bytes: usize,
    messages: usize,
    per_source: HashMap<Source, (usize, usize)>,
}

impl Budget {
    fn new(limits: QueueLimits) -> Budget {
        Budget {
            limits,
            bytes: 0,
            messages: 0,
            per_source: HashMap::new(),
        }
    }

    fn reserve(&mut self, source: Source, bytes: usize) -> Result<(), Overflow> {
        if self.bytes + bytes > self.limits.bytes || self.messages >= self.limits.messages {
            return Err(Overflow::Full);
        }
        let (held_bytes, held_messages) = self.per_source.get(&source).copied().unwrap_or((0, 0));
        if held_bytes + bytes > self.limits.bytes / SOURCE_SHARE
            || held_messages >= self.limits.messages / SOURCE_SHARE
        {
            return Err(Overflow::SourceShare);
        }
        self.per_source
            .insert(source, (held_bytes + bytes, held_messages + 1));
        self.bytes += bytes;
        self.messages += 1;
        Ok(())
    }

    fn release(&mut self, source: Source, bytes: usize) {
        self.bytes = self.bytes.saturating_sub(bytes);
        self.messages = self.messages.saturating_sub(1);
        if let Some((held_bytes, held_messages)) = self.per_source.get_mut(&source) {
            *held_bytes = held_bytes.saturating_sub(bytes);
            *held_messages = held_messages.saturating_sub(1);
            if *held_messages == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// The budget shared by the sink and the core's thread.
#[derive(Debug, Clone)]
struct SharedBudget(Arc<Mutex<Budget>>);

impl SharedBudget {
    fn lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        // Every update is a few additions: a panic cannot leave it half done.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The source and allocated size a queued message is accounted under.
fn account(inbound: &Inbound) -> (Source, usize) {
    (
        Source::of(inbound.flow.remote().ip()),
        inbound.bytes.capacity(),
    )
}

/// Longest sleep when nothing is scheduled.
const IDLE_WAKEUP: Duration = Duration::from_secs(60);

enum Input {
    /// A message and when the transports handed it over.
    Inbound(Inbound, Instant),
    Registrations(oneshot::Sender<Vec<RegistrationView>>),
    RegistrationsOf(
        String,
        oneshot::Sender<Result<Vec<RegistrationView>, RegistrationError>>,
    ),
    Unregister(
        String,
        oneshot::Sender<Result<(String, usize), RegistrationError>>,
    ),
    /// Reload the users file; the reply (when asked for) says how many users
    /// it holds, or why it was refused (the previous users stay).
    ReloadUsers(PathBuf, Option<oneshot::Sender<Result<usize, String>>>),
    /// News from the shared location store's follower.
    Location(crate::registrar::LocationUpdate),
    /// Something outside the transports has work for the core (the
    /// B2BUA's media results): run its timers now.
    Wake,
    Stop,
}

/// Wakes the core's thread when an input is queued while it sleeps.
///
/// The core sets `parked`, looks at its queue once more, then sleeps in
/// `ppoll` on the UDP socket and `event`. A sender queues its input, then
/// clears `parked` and, when it was set, writes `event`. Each side writes
/// its own flag before reading the other's (with a full fence between), so
/// either the core sees the input in its last look or the sender sees
/// `parked` and wakes it; a busy core costs its senders no system call.
#[derive(Debug)]
struct Waker {
    parked: AtomicBool,
    event: EventFd,
}

impl Waker {
    fn new() -> std::io::Result<Waker> {
        let event = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Waker {
            parked: AtomicBool::new(false),
            event,
        })
    }

    /// After an input was queued: wakes the core if it sleeps.
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.parked.swap(false, Ordering::SeqCst) {
            // A full counter (never, at 2^64 - 2) still leaves it readable.
            let _ = self.event.write(1);
        }
    }

    /// Before the core's last look at its queue.
    fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// After the core woke, or found an input in its last look; `written`:
    /// the event fd may hold a wake-up to clear (a write that comes after
    /// the sleep's poll only makes the next sleep end at once).
    fn unpark(&self, written: bool) {
        self.parked.store(false, Ordering::SeqCst);
        if written {
            // Non-blocking: nothing to read when no sender wrote.
            let _ = self.event.read();
        }
    }
}

/// A handle to the running core: query bindings, reload users, stop.
#[derive(Clone, Debug)]
pub struct CoreHandle {
    sender: SyncSender<Input>,
    waker: Arc<Waker>,
}

/// The channel between the transports and the core, before either runs.
#[derive(Debug)]
pub struct CoreQueue {
    handle: CoreHandle,
    receiver: Receiver<Input>,
    budget: SharedBudget,
    stats: Arc<TransportStats>,
    telemetry: Option<Telemetry>,
    media: Option<MediaLink>,
}

/// Where the core's observations go: counted, and registration changes
/// published.
#[derive(Debug, Clone)]
struct Telemetry {
    metrics: Metrics,
    events: EventBus,
}

impl Telemetry {
    fn take(&self, uas: &mut Uas) {
        let now = Instant::now();
        while let Some(observation) = uas.poll_observation() {
            self.metrics.observe(&observation, now);
            if let Observation::Registration(event) = observation {
                self.events.publish(event);
            }
        }
        self.metrics.set_core(uas.gauges());
    }
}

impl CoreQueue {
    /// A queue with the default limits.
    pub fn new() -> std::io::Result<CoreQueue> {
        CoreQueue::with_limits(QueueLimits::default(), Arc::default())
    }

    /// A queue bounded by `limits`; drops are counted in `stats`. Fails
    /// only when the core's event fd cannot be made.
    pub fn with_limits(
        limits: QueueLimits,
        stats: Arc<TransportStats>,
    ) -> std::io::Result<CoreQueue> {
        let (sender, receiver) = sync_channel(limits.messages);
        Ok(CoreQueue {
            handle: CoreHandle {
                sender,
                waker: Arc::new(Waker::new()?),
            },
            receiver,
            budget: SharedBudget(Arc::new(Mutex::new(Budget::new(limits)))),
            stats,
            telemetry: None,
            media: None,
        })
    }

    /// Counts the core's work in `metrics` and publishes its registration
    /// changes on `events`.
    pub fn set_telemetry(&mut self, metrics: Metrics, events: EventBus) {
        self.telemetry = Some(Telemetry { metrics, events });
    }

    /// Exchanges the call handler's media work over `link`: the core's
    /// media requests are queued on it for the executor, and the inputs the
    /// executor (and the REST API, reloads, shutdown) push on it are handed
    /// to [`Uas::handle_media`] one at a time, each when it is due.
    pub fn set_media_link(&mut self, link: MediaLink) {
        self.media = Some(link);
    }

    /// A handle to the core before it runs (for tasks that wake it).
    pub fn handle(&self) -> CoreHandle {
        self.handle.clone()
    }

    /// The sink to give [`Transports::start`]: it queues a message unless
    /// the queue, or the message's source, holds its limit of octets or
    /// messages; then the message is dropped and counted.
    pub fn sink(&self) -> InboundSink {
        let core = self.handle.clone();
        let budget = self.budget.clone();
        let stats = Arc::clone(&self.stats);
        Arc::new(move |inbound: Inbound| {
            let (source, bytes) = account(&inbound);
            if let Err(overflow) = budget.lock().reserve(source, bytes) {
                TransportStats::bump(match overflow {
                    Overflow::Full => &stats.queue_full,
                    Overflow::SourceShare => &stats.queue_source_share,
                });
                tracing::trace!(?overflow, "SIP core input queue: message dropped");
                return;
            }
            match core.try_send(Input::Inbound(inbound, Instant::now())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    // Other inputs (wake-ups, queries) fill the channel too.
                    budget.lock().release(source, bytes);
                    TransportStats::bump(&stats.queue_full);
                }
                Err(TrySendError::Disconnected(_)) => budget.lock().release(source, bytes),
            }
        })
    }

    /// Starts the core's thread; it sends through `transports`.
    pub fn run(self, uas: Uas, transports: Transports) -> std::io::Result<RunningCore> {
        let receiver = self.receiver;
        let budget = self.budget;
        let telemetry = self.telemetry;
        let media = self.media;
        let waker = Arc::clone(&self.handle.waker);
        let mut committer = Committer::spawn(self.handle.clone())?;
        let thread = std::thread::Builder::new()
            .name("sip-core".to_owned())
            .spawn(move || {
                let io = Io {
                    transports: &transports,
                    telemetry: telemetry.as_ref(),
                    media: media.as_ref(),
                };
                run(uas, &receiver, &waker, &budget, &io, &mut committer);
            })?;
        Ok(RunningCore {
            handle: self.handle,
            thread,
        })
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
        let _ = self.handle.send(Input::Stop);
        let _ = self.thread.join();
    }
}

impl CoreHandle {
    /// Queues `input` unless the queue is full, and wakes the core.
    fn try_send(&self, input: Input) -> Result<(), TrySendError<Input>> {
        self.sender.try_send(input)?;
        self.waker.notify();
        Ok(())
    }

    /// Queues `input`, waiting for room, and wakes the core.
    fn send(&self, input: Input) -> Result<(), SendError<Input>> {
        self.sender.send(input)?;
        self.waker.notify();
        Ok(())
    }

    /// Every current binding, or `None` when the core is not running.
    pub async fn registrations(&self) -> Option<Vec<RegistrationView>> {
        let (reply, answer) = oneshot::channel();
        self.try_send(Input::Registrations(reply)).ok()?;
        answer.await.ok()
    }

    /// The bindings of one address-of-record; `None` when the core is not
    /// running or its queue is full.
    pub async fn registrations_of(
        &self,
        aor: String,
    ) -> Option<Result<Vec<RegistrationView>, RegistrationError>> {
        let (reply, answer) = oneshot::channel();
        self.try_send(Input::RegistrationsOf(aor, reply)).ok()?;
        answer.await.ok()
    }

    /// Removes (durably) every binding of one address-of-record and says
    /// how many there were; `None` when the core is not running or busy.
    pub async fn unregister(
        &self,
        aor: String,
    ) -> Option<Result<(String, usize), RegistrationError>> {
        let (reply, answer) = oneshot::channel();
        self.try_send(Input::Unregister(aor, reply)).ok()?;
        answer.await.ok()
    }

    /// Reloads the users file and says how many users it holds, or why it
    /// was refused (the previous users stay); `None` when the core is not
    /// running or its queue is full.
    pub async fn reload_users_now(&self, path: PathBuf) -> Option<Result<usize, String>> {
        let (reply, answer) = oneshot::channel();
        self.try_send(Input::ReloadUsers(path, Some(reply))).ok()?;
        answer.await.ok()
    }

    /// Hands the core news from the shared location store, waiting for
    /// room in its queue (an update must not be lost); false once the core
    /// has stopped.
    pub fn location(&self, update: crate::registrar::LocationUpdate) -> bool {
        self.send(Input::Location(update)).is_ok()
    }

    /// Makes the core run its (and its call handler's) due timers; a full
    /// queue needs no wake-up, the core is about to run anyway.
    pub fn wake(&self) {
        let _ = self.try_send(Input::Wake);
    }

    /// Reloads the users file; on error the core keeps the previous users
    /// and logs why.
    pub fn reload_users(&self, path: PathBuf) {
        if self.try_send(Input::ReloadUsers(path, None)).is_err() {
            tracing::warn!("users file not reloaded: the SIP core is busy or stopped");
        }
    }
}

/// What the core's outputs are applied to.
struct Io<'a> {
    transports: &'a Transports,
    telemetry: Option<&'a Telemetry>,
    media: Option<&'a MediaLink>,
}

/// Runs the binding store's syncs on a thread of its own, one at a time,
/// and hands each back when it has run; the core's thread never waits for
/// the disk or for Redis (except when it asks to: an operator's
/// unregister, and stopping).
struct Committer {
    jobs: std::sync::mpsc::Sender<SyncJob>,
    done: Receiver<SyncJob>,
    /// Run on the core's thread because the committer's had gone.
    ran_here: Option<SyncJob>,
}

impl Committer {
    /// Starts the thread; it wakes the core through `wake` after each sync.
    fn spawn(wake: CoreHandle) -> std::io::Result<Committer> {
        let (jobs, queued) = std::sync::mpsc::channel::<SyncJob>();
        let (finished, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sip-commit".to_owned())
            .spawn(move || {
                for mut job in queued {
                    job.run();
                    if finished.send(job).is_err() {
                        break;
                    }
                    // A full queue needs no wake-up: the core is busy and
                    // looks for finished syncs after every input.
                    let _ = wake.try_send(Input::Wake);
                }
            })?;
        Ok(Committer {
            jobs,
            done,
            ran_here: None,
        })
    }

    fn start(&mut self, job: SyncJob) {
        if let Err(failed) = self.jobs.send(job) {
            tracing::error!("the commit thread is gone; syncing on the SIP core's thread");
            let mut job = failed.0;
            job.run();
            self.ran_here = Some(job);
        }
    }

    /// A sync that has run, if any.
    fn finished(&mut self) -> Option<SyncJob> {
        self.ran_here.take().or_else(|| self.done.try_recv().ok())
    }

    /// Waits for the sync in flight.
    fn wait(&mut self) -> Option<SyncJob> {
        self.ran_here.take().or_else(|| self.done.recv().ok())
    }
}

fn run(
    mut uas: Uas,
    receiver: &Receiver<Input>,
    waker: &Waker,
    budget: &SharedBudget,
    io: &Io<'_>,
    committer: &mut Committer,
) {
    let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
    let mut udp_open = true;
    // An input the last look before a sleep found.
    let mut pending = None;
    loop {
        if let Some(job) = committer.finished() {
            uas.handle_input(Now::current(), super::Input::Synced(job));
            flush(&mut uas, io, committer);
        }
        // One queued input and one datagram a turn: a flood on either
        // leaves the other its turns.
        let queued = pending.take().or_else(|| match receiver.try_recv() {
            Ok(input) => Some(input),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Input::Stop),
        });
        let mut busy = queued.is_some();
        if udp_open {
            match io.transports.receive_datagram(&mut buffer) {
                Received::Message(inbound) => {
                    busy = true;
                    let received = Instant::now();
                    uas.handle_input(Now::current(), super::Input::Received { inbound, received });
                }
                Received::Dropped => busy = true,
                Received::Empty => {}
                Received::Failed => udp_open = false,
            }
        }
        match queued {
            None => {}
            Some(Input::Inbound(inbound, received)) => {
                let (source, bytes) = account(&inbound);
                budget.lock().release(source, bytes);
                uas.handle_input(Now::current(), super::Input::Received { inbound, received });
            }
            Some(Input::Registrations(reply)) => {
                let _ = reply.send(uas.registrations(Now::current()));
            }
            Some(Input::RegistrationsOf(aor, reply)) => {
                let _ = reply.send(uas.registrations_of(Now::current(), &aor));
            }
            Some(Input::Location(update)) => {
                uas.handle_input(Now::current(), super::Input::Location(update));
            }
            Some(Input::Unregister(aor, reply)) => {
                // The operator's removal is synced on this thread, after
                // the sync in flight (the store takes one at a time). The
                // answers to one may begin the next (what was written
                // meanwhile): no input is taken here, so that ends.
                while uas.sync_in_flight() && settle_in_flight(&mut uas, io, committer) {}
                let _ = reply.send(uas.unregister(Now::current(), &aor));
            }
            Some(Input::ReloadUsers(path, reply)) => {
                let result = uas.authenticator_mut().reload_users(&path);
                match &result {
                    Ok(users) => tracing::info!(users, "users file reloaded"),
                    Err(error) => {
                        tracing::warn!(%error, "users file not reloaded; the previous users stay");
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            }
            Some(Input::Stop) => {
                // What was written is made durable and answered first.
                while settle_in_flight(&mut uas, io, committer) {
                    uas.handle_input(Now::current(), super::Input::CommitNow);
                    flush(&mut uas, io, committer);
                    if !uas.sync_in_flight() {
                        break;
                    }
                }
                break;
            }
            Some(Input::Wake) => {}
        }
        if !busy {
            let now = Now::current();
            let wait = [
                uas.poll_timeout(now),
                io.media.and_then(MediaLink::next_input_at),
            ]
            .into_iter()
            .flatten()
            .min()
            .map_or(IDLE_WAKEUP, |at| at.saturating_duration_since(now.instant));
            if !wait.is_zero() {
                pending = sleep(receiver, waker, udp_open.then_some(io.transports), wait);
                continue;
            }
        }
        let now = Now::current();
        uas.handle_input(now, super::Input::Timeout);
        // One media input per turn: SIP input is not starved behind a burst
        // of results, and the core has flushed what each one sent before
        // the next (a 183 then a 200 on one transaction leave in order).
        if let Some(input) = io.media.and_then(|link| link.pop_input(now.instant)) {
            uas.handle_input(now, super::Input::Media(input));
        }
        // Begins a sync of what this input wrote, unless one is running.
        uas.handle_input(now, super::Input::Commit);
        flush(&mut uas, io, committer);
    }
    tracing::debug!("SIP core stopped");
}

/// Sleeps until a datagram or a queued input arrives or `wait` has passed;
/// returns an input found by the last look at the queue before sleeping.
fn sleep(
    receiver: &Receiver<Input>,
    waker: &Waker,
    udp: Option<&Transports>,
    wait: Duration,
) -> Option<Input> {
    waker.park();
    match receiver.try_recv() {
        Ok(input) => {
            waker.unpark(true);
            return Some(input);
        }
        Err(TryRecvError::Disconnected) => {
            waker.unpark(true);
            return Some(Input::Stop);
        }
        Err(TryRecvError::Empty) => {}
    }
    // Without a UDP socket (it failed) the event fd alone is watched.
    let socket = udp.map_or(waker.event.as_fd(), Transports::udp_socket);
    let mut fds = [
        PollFd::new(waker.event.as_fd(), PollFlags::POLLIN),
        PollFd::new(socket, PollFlags::POLLIN),
    ];
    let watched = if udp.is_some() { 2 } else { 1 };
    match nix::poll::ppoll(
        &mut fds[..watched],
        Some(TimeSpec::from_duration(wait)),
        None,
    ) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(error) => {
            // Never seen; a failing poll must not spin the core.
            tracing::error!(%error, "the SIP core could not wait for input");
            std::thread::sleep(wait.min(Duration::from_millis(10)));
        }
    }
    let written = fds[0]
        .revents()
        .is_some_and(|events| events.contains(PollFlags::POLLIN));
    waker.unpark(written);
    None
}

/// Waits for the sync in flight, if any, and lets the core answer for it;
/// false when one is in flight and will never come back (the commit
/// thread is gone).
fn settle_in_flight(uas: &mut Uas, io: &Io<'_>, committer: &mut Committer) -> bool {
    if !uas.sync_in_flight() {
        return true;
    }
    match committer.wait() {
        Some(job) => {
            uas.handle_input(Now::current(), super::Input::Synced(job));
            flush(uas, io, committer);
            true
        }
        None => {
            tracing::error!("the commit thread is gone with a sync in flight");
            false
        }
    }
}

/// Applies the core's outputs and takes its observations.
fn flush(uas: &mut Uas, io: &Io<'_>, committer: &mut Committer) {
    while let Some(output) = uas.poll_output() {
        match output {
            Output::Sync(job) => committer.start(job),
            Output::Transmit(outbound) => io.transports.send(outbound),
            Output::HoldOpen(connection, until) => io.transports.hold_open(connection, until),
            Output::Media(request) => match io.media {
                Some(link) => link.push_request(request),
                None => tracing::warn!(
                    op = request.op.name(),
                    "media request without a link dropped"
                ),
            },
        }
    }
    match io.telemetry {
        Some(telemetry) => telemetry.take(uas),
        None => while uas.poll_observation().is_some() {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Flow;
    use std::net::SocketAddr;

    fn from(addr: &str, len: usize) -> Inbound {
        let remote: SocketAddr = addr.parse().expect("address");
        Inbound {
            flow: Flow::Udp { remote },
            bytes: vec![b'x'; len],
        }
    }

    fn drain(receiver: &Receiver<Input>, budget: &SharedBudget) -> usize {
        let mut taken = 0;
        while let Ok(input) = receiver.try_recv() {
            if let Input::Inbound(inbound, _) = input {
                let (source, bytes) = account(&inbound);
                budget.lock().release(source, bytes);
                taken += 1;
            }
        }
        taken
    }

    /// The core's sleep, without a UDP socket: what it found in its last
    /// look at the queue, and how long it took.
    fn timed_sleep(queue: &CoreQueue, wait: Duration) -> (Option<Input>, Duration) {
        let started = Instant::now();
        let found = sleep(&queue.receiver, &queue.handle.waker, None, wait);
        (found, started.elapsed())
    }

    #[test]
    fn an_input_queued_while_the_core_sleeps_wakes_it_at_once() {
        let queue = CoreQueue::new().expect("core queue");
        let handle = queue.handle();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            handle.wake();
        });
        let (found, slept) = timed_sleep(&queue, Duration::from_secs(20));
        sender.join().expect("sender");
        assert!(found.is_none(), "nothing was queued before the sleep");
        assert!(
            slept >= Duration::from_millis(90) && slept < Duration::from_secs(5),
            "woke after {slept:?}"
        );
        assert!(matches!(queue.receiver.try_recv(), Ok(Input::Wake)));
        assert!(
            !queue.handle.waker.parked.load(Ordering::SeqCst),
            "awake again"
        );
        assert!(
            queue.handle.waker.event.read().is_err(),
            "the wake-up it was sent is cleared"
        );
    }

    #[test]
    fn an_input_queued_before_the_last_look_is_taken_without_sleeping() {
        let queue = CoreQueue::new().expect("core queue");
        // Queued while the core was busy: no wake-up was written.
        queue.handle.wake();
        assert_eq!(queue.handle.waker.event.read().ok(), None, "no system call");
        let (found, slept) = timed_sleep(&queue, Duration::from_secs(20));
        assert!(matches!(found, Some(Input::Wake)));
        assert!(slept < Duration::from_secs(1), "{slept:?}");
    }

    #[test]
    fn a_sleep_without_input_ends_when_the_next_timer_is_due() {
        let queue = CoreQueue::new().expect("core queue");
        let (found, slept) = timed_sleep(&queue, Duration::from_millis(30));
        assert!(found.is_none());
        assert!(
            slept >= Duration::from_millis(30) && slept < Duration::from_secs(2),
            "{slept:?}"
        );
    }

    #[test]
    fn a_flooding_source_gets_a_quarter_of_the_queue_and_others_still_get_in() {
        let stats = Arc::new(TransportStats::default());
        let queue = CoreQueue::with_limits(
            QueueLimits {
                messages: 100,
                bytes: 1_000_000,
            },
            Arc::clone(&stats),
        )
        .expect("core queue");
        let sink = queue.sink();
        for _ in 0..1000 {
            sink(from("192.0.2.1:5060", 100));
        }
        for _ in 0..10 {
            sink(from("192.0.2.2:5060", 100));
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.queue_source_share, 975, "25 of 1000 queued");
        assert_eq!(snapshot.queue_full, 0);
        assert_eq!(drain(&queue.receiver, &queue.budget), 35);
        // Taken by the core, the share is free again.
        sink(from("192.0.2.1:5060", 100));
        assert_eq!(drain(&queue.receiver, &queue.budget), 1);
    }

    #[test]
    fn the_queue_is_bounded_in_octets_whatever_the_message_count() {
        let stats = Arc::new(TransportStats::default());
        let queue = CoreQueue::with_limits(
            QueueLimits {
                messages: 8192,
                bytes: 400_000,
            },
            Arc::clone(&stats),
        )
        .expect("core queue");
        let sink = queue.sink();
        // Ten sources of 60 KB messages: 100 KB (a quarter) each at most,
        // 400 KB in all.
        for _ in 0..5 {
            for host in 1..=10 {
                sink(from(&format!("192.0.2.{host}:5060"), 60_000));
            }
        }
        let budget = queue.budget.lock();
        assert!(budget.bytes <= 400_000, "{} octets queued", budget.bytes);
        assert_eq!(budget.messages, 6, "six of 60 KB fit in 400 KB");
        drop(budget);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.queue_full + snapshot.queue_source_share, 44);
        assert_eq!(drain(&queue.receiver, &queue.budget), 6);
        assert_eq!(queue.budget.lock().bytes, 0);
    }
}
