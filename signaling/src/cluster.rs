//! Several signaling nodes sharing one Redis: who is alive, the calls each
//! one owns, and ending the calls of a node that died.
//!
//! Each node's [`Cluster`] thread
//! - keeps `PREFIX node:ID` alive (a key expiring after `lost_after`,
//!   refreshed three times as often) and its id in `PREFIX nodes`;
//! - keeps the essential state of its answered calls in the hash
//!   `PREFIX calls:ID` (see [`crate::b2bua::shared`]), written off the SIP
//!   core's thread as the B2BUA reports answers and ends;
//! - every second, looks for members whose key has expired. The first node
//!   to take a lost node's lock (`PREFIX reaping:ID`, set if absent) ends
//!   each of its calls: the reaper it was given sends the BYEs through this
//!   node's B2BUA and deletes the media on the manager. The lost node's
//!   hash and membership go. A node starting again under the same id does
//!   the same for what its previous run left, before it shares new calls.
//!
//! Calls are owned by the node that took their INVITE; nobody else touches
//! them while it lives. `lost_after` must exceed the longest pause a live
//! node may have (a Redis failover, a stalled host): a node cut off from
//! Redis longer than that has its calls ended by the others.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Connection;

use crate::b2bua::shared::{SharedCall, SharedCallUpdate};
use crate::registrar::{RedisTarget, SharedLocation};

/// How often a node looks for lost nodes.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Updates kept while Redis is out of reach; older ones are dropped (their
/// calls are then ended by the managers' own timeouts after a crash).
const MAX_PENDING: usize = 100_000;

/// A node's cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Prefix of every key (the deployment's, as for the location store).
    pub prefix: String,
    /// This node's id.
    pub node: String,
    /// This run of the node (its key's value, for logs).
    pub instance: String,
    /// A node whose key has not been refreshed for this long is lost.
    pub lost_after: Duration,
}

impl ClusterConfig {
    fn node_key(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    fn members(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    fn calls(&self, node: &str) -> String {
        format!("{}calls:{node}", self.prefix)
    }

    fn lock(&self, node: &str) -> String {
        format!("{}reaping:{node}", self.prefix)
    }
}

/// Ends one call of a lost node: BYEs through the B2BUA, media deleted.
pub type Reaper = Box<dyn FnMut(SharedCall) + Send>;

/// The running cluster thread; stopping it flushes what is queued and
/// leaves the cluster (key and membership removed).
#[derive(Debug)]
pub struct Cluster {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cluster {
    /// Starts the thread: updates from `updates`, lost calls to `reaper`.
    pub fn start(
        target: RedisTarget,
        config: ClusterConfig,
        updates: Receiver<SharedCallUpdate>,
        reaper: Reaper,
        state: Arc<SharedLocation>,
    ) -> std::io::Result<Cluster> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("cluster".to_owned())
            .spawn(move || {
                let mut member = Member {
                    target,
                    config,
                    connection: None,
                    pending: Vec::new(),
                    reaper,
                    state,
                    down: false,
                };
                member.run(&updates, &flag);
            })?;
        Ok(Cluster {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Member {
    target: RedisTarget,
    config: ClusterConfig,
    connection: Option<Connection>,
    pending: Vec<SharedCallUpdate>,
    reaper: Reaper,
    state: Arc<SharedLocation>,
    /// Redis was out of reach at the last attempt.
    down: bool,
}

impl Member {
    fn run(&mut self, updates: &Receiver<SharedCallUpdate>, stop: &AtomicBool) {
        let beat_every = self.config.lost_after / 3;
        let mut next_beat = Instant::now();
        let mut next_check = Instant::now() + CHECK_EVERY;
        // What a previous run under this id left: ended before this run
        // shares any call of its own.
        let mut leftovers_done = false;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            match updates.recv_timeout(Duration::from_millis(100)) {
                Ok(update) => {
                    self.pending.push(update);
                    self.pending.extend(updates.try_iter());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) if stopping => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
            }
            if !leftovers_done {
                let node = self.config.node.clone();
                match self.reap(&node) {
                    Ok(()) => leftovers_done = true,
                    Err(error) => {
                        self.failed("ending calls of this node's previous run", &error);
                        if stopping {
                            return;
                        }
                        continue;
                    }
                }
            }
            if stopping {
                // Leaving: no heartbeat or reaping now (with Redis gone each
                // would wait a timeout and a second).
                self.leave();
                return;
            }
            if !self.pending.is_empty() {
                if let Err(error) = self.write_pending() {
                    self.failed("writing shared call state", &error);
                }
            }
            let now = Instant::now();
            if now >= next_beat {
                match self.beat() {
                    Ok(()) => next_beat = now + beat_every,
                    Err(error) => self.failed("refreshing this node's key", &error),
                }
            }
            if now >= next_check {
                next_check = now + CHECK_EVERY;
                if let Err(error) = self.check_members() {
                    self.failed("looking for lost nodes", &error);
                }
            }
        }
    }

    fn connection(&mut self) -> redis::RedisResult<&mut Connection> {
        if self.connection.is_none() {
            let connection = self.target.connect()?;
            self.connection = Some(connection);
            self.down = false;
        }
        self.connection
            .as_mut()
            .ok_or_else(|| redis::RedisError::from(std::io::Error::other("not connected")))
    }

    fn failed(&mut self, what: &str, error: &redis::RedisError) {
        // Logged when the connection is lost, not on every retry.
        if self.connection.take().is_some() || !self.down {
            tracing::warn!(%error, "cluster: {what} failed; retrying every second");
        }
        self.down = true;
        self.state.note_error();
        std::thread::sleep(Duration::from_secs(1));
    }

    fn write_pending(&mut self) -> redis::RedisResult<()> {
        if self.pending.len() > MAX_PENDING {
            let excess = self.pending.len() - MAX_PENDING;
            self.pending.drain(..excess);
            tracing::warn!(
                dropped = excess,
                "cluster: shared call updates dropped while Redis is out of reach"
            );
        }
        let key = self.config.calls(&self.config.node);
        let mut pipe = redis::pipe();
        for update in &self.pending {
            match update {
                SharedCallUpdate::Up(call) => {
                    let json = serde_json::to_string(call.as_ref()).unwrap_or_default();
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(&call.media_call_id)
                        .arg(json)
                        .ignore();
                }
                SharedCallUpdate::Down(media_call_id) => {
                    pipe.cmd("HDEL").arg(&key).arg(media_call_id).ignore();
                }
            }
        }
        pipe.query::<()>(self.connection()?)?;
        self.pending.clear();
        Ok(())
    }

    fn beat(&mut self) -> redis::RedisResult<()> {
        let lost_after = u64::try_from(self.config.lost_after.as_millis()).unwrap_or(u64::MAX);
        let (node_key, members, node, instance) = (
            self.config.node_key(&self.config.node),
            self.config.members(),
            self.config.node.clone(),
            self.config.instance.clone(),
        );
        redis::pipe()
            .cmd("SET")
            .arg(node_key)
            .arg(instance)
            .arg("PX")
            .arg(lost_after)
            .ignore()
            .cmd("SADD")
            .arg(members)
            .arg(node)
            .ignore()
            .query::<()>(self.connection()?)
    }

    fn check_members(&mut self) -> redis::RedisResult<()> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.config.members())
            .query(self.connection()?)?;
        let others: Vec<String> = members
            .into_iter()
            .filter(|n| *n != self.config.node)
            .collect();
        for node in others {
            let alive: bool = redis::cmd("EXISTS")
                .arg(self.config.node_key(&node))
                .query(self.connection()?)?;
            if !alive {
                self.reap(&node)?;
            }
        }
        Ok(())
    }

    /// Ends the calls `node` left, if this node gets its lock.
    fn reap(&mut self, node: &str) -> redis::RedisResult<()> {
        let lock_for = u64::try_from((self.config.lost_after * 3).as_millis()).unwrap_or(u64::MAX);
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.config.lock(node))
            .arg(&self.config.node)
            .arg("NX")
            .arg("PX")
            .arg(lock_for)
            .query(self.connection()?)?;
        if taken.is_none() {
            return Ok(());
        }
        let calls: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.config.calls(node))
            .query(self.connection()?)?;
        let count = calls.len();
        for (media_call_id, json) in calls {
            match serde_json::from_str::<SharedCall>(&json) {
                Ok(call) => (self.reaper)(call),
                Err(error) => {
                    tracing::warn!(%error, node, media_call_id, "cluster: a lost node's call does not parse; left to the manager's timeout");
                }
            }
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.config.calls(node)).ignore();
        if node != self.config.node {
            pipe.cmd("SREM")
                .arg(self.config.members())
                .arg(node)
                .ignore();
        }
        pipe.cmd("DEL").arg(self.config.lock(node)).ignore();
        pipe.query::<()>(self.connection()?)?;
        if node == self.config.node {
            if count > 0 {
                tracing::warn!(
                    calls = count,
                    "cluster: calls left by this node's previous run ended"
                );
            }
        } else {
            tracing::warn!(
                node,
                calls = count,
                "cluster: node lost; its calls ended here"
            );
        }
        Ok(())
    }

    /// A clean stop: what is queued is written (the shutdown ended every
    /// call), then the node leaves; with Redis out of reach, one attempt.
    fn leave(&mut self) {
        if !self.pending.is_empty() {
            if let Err(error) = self.write_pending() {
                tracing::warn!(%error, "cluster: last call state updates not written; a restart under this node id ends what they concerned");
                return;
            }
        }
        let (node_key, members, node) = (
            self.config.node_key(&self.config.node),
            self.config.members(),
            self.config.node.clone(),
        );
        let left = self.connection().and_then(|connection| {
            redis::pipe()
                .cmd("DEL")
                .arg(node_key)
                .ignore()
                .cmd("SREM")
                .arg(members)
                .arg(node)
                .ignore()
                .query::<()>(connection)
        });
        if let Err(error) = left {
            tracing::warn!(%error, "cluster: could not leave cleanly; others will find this node lost");
        }
    }
}
