//! The location service shared by several signaling nodes through Redis
//! (or any server speaking its protocol: Valkey, KeyDB).
//!
//! Each node keeps its [`super::Registrar`] in memory as a cache of what
//! Redis holds; lookups never wait for the network. Two pieces keep the
//! cache true:
//!
//! - [`RedisStore`], the node's [`super::Persist`] sink: it buffers each
//!   change and makes the whole group durable in Redis in one round trip
//!   at the commit (the 200s wait for it, as they wait for the journal's
//!   fsync). Each address-of-record is one hash, one field per binding, so
//!   two nodes changing different contacts of one user never overwrite
//!   each other; the key expires with its last binding. A Lua script
//!   applies one change atomically, drops fields that expired, stamps the
//!   hash with the next value of the deployment's change counter (its
//!   version) and publishes the address-of-record on the location channel;
//!   what it returns (the bindings now held) the node adopts.
//! - [`Follower`], a thread per node subscribed to that channel: it reads
//!   the changed hash and hands it to the core, and after every
//!   (re)connection it reads every address-of-record again, so a node
//!   that missed messages while cut off ends with Redis's view. The core
//!   keeps the newest version of each address-of-record it has seen, so a
//!   read overtaken by a newer change never undoes it.
//!
//! While the follower is cut off, the cache still answers lookups for
//! [`SharedLocation::stale_after`]; past that they find nobody (the call is
//! answered 480), as the cache may hold phones that left. A commit that
//! cannot reach Redis fails as `StoreError::Unavailable` (REGISTER 503 with
//! Retry-After); after a failure the store does not try again for
//! [`RETRY_AFTER`], so a dead Redis costs the core one timeout, not one
//! per commit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Client, Connection, Pipeline, Value};
use serde::{Deserialize, Serialize};

use super::{Aor, Binding, Change, Persist, Record, StoreError, SyncJob};

/// How long one Redis operation may take before the store gives up.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed commit, commits fail at once for this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Applies one address-of-record's change. KEYS[1]: its hash; KEYS[2]:
/// the deployment's change counter. ARGV: now (ms since the epoch), the
/// channel, the node, the address-of-record, then pairs of field and
/// binding JSON (an empty value removes the field). Every change takes the
/// next count as the hash's version, so a node can tell a newer view of an
/// address-of-record from an older one whatever order they reach it in.
/// Returns the version followed by the bindings left.
const APPLY: &str = r"
local now = tonumber(ARGV[1])
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local version = redis.call('INCR', KEYS[2])
local latest = 0
local left = {version}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= '#version' then
    local at = cjson.decode(all[i + 1]).expires_at
    if at <= now then
      redis.call('HDEL', KEYS[1], all[i])
    else
      left[#left + 1] = all[i + 1]
      if at > latest then latest = at end
    end
  end
end
if latest > 0 then
  redis.call('HSET', KEYS[1], '#version', version)
  redis.call('PEXPIREAT', KEYS[1], latest)
else
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[2], cjson.encode({node = ARGV[3], aor = ARGV[4], version = version}))
return left
";

/// The hash field holding the version of an address-of-record's bindings.
const VERSION_FIELD: &str = "#version";

/// Where in Redis a deployment's location data lives: one prefix for all
/// its nodes, so several deployments can share a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `switchboard:`).
    pub fn new(prefix: impl Into<String>) -> Keys {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The hash holding one address-of-record's bindings.
    pub fn aor(&self, aor: &Aor) -> String {
        format!("{}location:{}", self.prefix, aor.as_str())
    }

    /// The address-of-record of a hash key, if it is one of ours.
    pub fn aor_of(&self, key: &str) -> Option<Aor> {
        let text = key.strip_prefix(&self.prefix)?.strip_prefix("location:")?;
        Aor::parse(text, None).ok()
    }

    /// The pattern matching every address-of-record's hash.
    fn pattern(&self) -> String {
        format!("{}location:*", self.prefix)
    }

    /// The counter giving every change its version.
    pub fn counter(&self) -> String {
        format!("{}location-version", self.prefix)
    }

    /// The channel announcing changed addresses-of-record.
    pub fn channel(&self) -> String {
        format!("{}location-changes", self.prefix)
    }
}

/// What a node publishes after changing an address-of-record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The node that made the change (it ignores its own).
    pub node: String,
    /// The address-of-record changed.
    pub aor: Aor,
    /// The change's version.
    pub version: u64,
}

/// An address-of-record's bindings as a shared store held them at one
/// version: a node keeps the newest it has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The bindings (none: the address-of-record has none left).
    pub record: Record,
    /// The change counter's value when the store last changed them.
    pub version: u64,
}

/// The hash fields and values one change writes: a binding's field with
/// its JSON, or with an empty value to remove it.
pub fn field_updates(persist: &Persist) -> Vec<(String, String)> {
    persist
        .changes()
        .into_iter()
        .map(|(change, binding)| {
            let value = match change {
                Change::Added | Change::Refreshed => {
                    serde_json::to_string(binding).unwrap_or_default()
                }
                Change::Removed => String::new(),
            };
            (binding.store_field(), value)
        })
        .collect()
}

/// The record of one address-of-record from its hash's fields and values
/// (in `HGETALL` order): the unexpired bindings, in registration order, and
/// the version (0 when the hash has none). Bindings that do not parse
/// (written by a newer version, or damaged) are skipped and counted.
pub fn record_of(aor: Aor, fields: &[(String, String)], now: SystemTime) -> (Versioned, usize) {
    let mut skipped = 0;
    let mut version = 0;
    let mut bindings = Vec::new();
    for (field, value) in fields {
        if field == VERSION_FIELD {
            version = value.parse().unwrap_or(0);
            continue;
        }
        match serde_json::from_str::<Binding>(value) {
            Ok(binding) if binding.expires_at > now => bindings.push(binding),
            Ok(_) => {}
            Err(_) => skipped += 1,
        }
    }
    // Hash order is arbitrary; keep first-registration order, which is the
    // order the REST API lists and the registrar breaks ties by.
    bindings.sort_by_key(|b| (b.registered_at.unwrap_or(b.updated_at), b.contact.clone()));
    (
        Versioned {
            record: Record {
                aor,
                bindings: Arc::new(bindings),
            },
            version,
        },
        skipped,
    )
}

/// The bindings a script call returned (after the version, their JSON).
fn returned_bindings(values: &[Value], now: SystemTime) -> Option<(u64, Vec<Binding>)> {
    let (first, rest) = values.split_first()?;
    let Value::Int(version) = first else {
        return None;
    };
    let mut bindings: Vec<Binding> = rest
        .iter()
        .filter_map(|value| match value {
            Value::BulkString(bytes) => serde_json::from_slice::<Binding>(bytes).ok(),
            _ => None,
        })
        .filter(|b| b.expires_at > now)
        .collect();
    bindings.sort_by_key(|b| (b.registered_at.unwrap_or(b.updated_at), b.contact.clone()));
    Some((u64::try_from(*version).ok()?, bindings))
}

/// The state of the shared location store, read by health and metrics.
#[derive(Debug)]
pub struct SharedLocation {
    /// The node's own id, in every announcement.
    pub node: String,
    /// Redis's address as configured, without credentials.
    pub address: String,
    /// How long lookups trust the cache once the follower is cut off.
    pub stale_after: Duration,
    store_up: AtomicBool,
    following: AtomicBool,
    errors: AtomicU64,
    commits: AtomicU64,
    received: AtomicU64,
}

impl SharedLocation {
    /// A store not connected yet.
    pub fn new(node: String, address: String, stale_after: Duration) -> SharedLocation {
        SharedLocation {
            node,
            address,
            stale_after,
            store_up: AtomicBool::new(false),
            following: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    /// Whether the last commit (or connection) reached Redis.
    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    /// Whether the follower is subscribed and caught up.
    pub fn following(&self) -> bool {
        self.following.load(Ordering::Relaxed)
    }

    /// Failed Redis operations (commits, reads, connections), in total.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Commits that reached Redis.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Other nodes' changes received and applied.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed operation of another user of the same Redis (the
    /// cluster thread).
    pub fn note_error(&self) {
        self.failed();
    }
}

/// Where the shared store is: one Redis server (or a virtual address in
/// front of one), or the master a set of Sentinels names at each
/// connection, so a Sentinel failover is followed by reconnecting.
#[derive(Clone)]
pub enum RedisTarget {
    /// One server (boxed: a client is large beside the shared Sentinel).
    Server(Box<Client>),
    /// The master of `service` as the Sentinels say.
    Sentinel {
        client: Arc<std::sync::Mutex<redis::sentinel::SentinelClient>>,
        /// `sentinel host:port,... service`, for logs and health.
        address: String,
    },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.address())
    }
}

impl RedisTarget {
    /// The address for logs and health, without credentials.
    pub fn address(&self) -> String {
        match self {
            RedisTarget::Server(client) => client.get_connection_info().addr().to_string(),
            RedisTarget::Sentinel { address, .. } => address.clone(),
        }
    }

    /// A connection with [`REDIS_TIMEOUT`] on connecting, reading and
    /// writing; through the Sentinels, to the master they name now.
    pub fn connect(&self) -> redis::RedisResult<Connection> {
        let connection = match self {
            RedisTarget::Server(client) => client.get_connection_with_timeout(REDIS_TIMEOUT)?,
            RedisTarget::Sentinel { client, .. } => {
                let master = client
                    .lock()
                    .map_err(|_| {
                        redis::RedisError::from(std::io::Error::other("sentinel client poisoned"))
                    })?
                    .get_client()?;
                master.get_connection_with_timeout(REDIS_TIMEOUT)?
            }
        };
        connection.set_read_timeout(Some(REDIS_TIMEOUT))?;
        connection.set_write_timeout(Some(REDIS_TIMEOUT))?;
        Ok(connection)
    }
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Every address-of-record in Redis with its unexpired bindings.
pub fn load_all(
    connection: &mut Connection,
    keys: &Keys,
    now: SystemTime,
) -> redis::RedisResult<Vec<Versioned>> {
    let mut cursor: u64 = 0;
    let mut records = Vec::new();
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys.pattern())
            .arg("COUNT")
            .arg(1000)
            .query(connection)?;
        let aors: Vec<Aor> = found.iter().filter_map(|key| keys.aor_of(key)).collect();
        if !aors.is_empty() {
            let mut pipe = redis::pipe();
            for aor in &aors {
                pipe.cmd("HGETALL").arg(keys.aor(aor));
            }
            let hashes: Vec<Vec<(String, String)>> = pipe.query(connection)?;
            for (aor, fields) in aors.into_iter().zip(hashes) {
                let (versioned, skipped) = record_of(aor, &fields, now);
                if skipped > 0 {
                    tracing::warn!(aor = %versioned.record.aor.as_str(), skipped, "location store: bindings that do not parse skipped");
                }
                if !versioned.record.bindings.is_empty() {
                    records.push(versioned);
                }
            }
        }
        if next == 0 {
            return Ok(records);
        }
        cursor = next;
    }
}

/// The node's writer of binding changes to Redis (see the module).
pub struct RedisStore {
    target: RedisTarget,
    connection: Option<Connection>,
    keys: Keys,
    state: Arc<SharedLocation>,
    script: redis::Script,
    /// The changes written since the last sync: one script call each.
    pending: Vec<(Aor, Vec<(String, String)>)>,
    /// What the last sync left in Redis for each address-of-record it
    /// changed, for the core to adopt.
    committed: Vec<Versioned>,
    /// No connection attempt before this, after a failure.
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.state.address)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects and reads every address-of-record, for
    /// [`super::Registrar::from_records`]. When Redis cannot be reached the
    /// store starts empty and unavailable (logged); the follower fills the
    /// cache once Redis answers.
    pub fn open(
        target: RedisTarget,
        keys: Keys,
        state: Arc<SharedLocation>,
    ) -> (RedisStore, Vec<Record>) {
        let mut store = RedisStore {
            target,
            connection: None,
            keys,
            state,
            script: redis::Script::new(APPLY),
            pending: Vec::new(),
            committed: Vec::new(),
            retry_at: None,
        };
        let loaded =
            connect_with_script(&store.target, &store.script).and_then(|mut connection| {
                let records = load_all(&mut connection, &store.keys, SystemTime::now())?;
                store.connection = Some(connection);
                Ok(records)
            });
        let records = match loaded {
            Ok(records) => {
                store.state.store_up.store(true, Ordering::Relaxed);
                records.into_iter().map(|v| v.record).collect()
            }
            Err(error) => {
                tracing::error!(%error, address = %store.state.address, "location store unreachable at start: no registrations loaded; REGISTERs answered 503 until it answers");
                store.fail();
                Vec::new()
            }
        };
        (store, records)
    }

    fn fail(&mut self) {
        self.connection = None;
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
        self.state.store_up.store(false, Ordering::Relaxed);
        self.state.failed();
    }

    fn unavailable(&self, reason: String) -> StoreError {
        StoreError::Unavailable {
            store: self.state.address.clone(),
            reason,
        }
    }
}

/// A connection for commits: the script is loaded first, because scripts
/// are cached by the server and called by hash, and a new connection may
/// be to a restarted server that forgot them.
fn connect_with_script(
    target: &RedisTarget,
    script: &redis::Script,
) -> redis::RedisResult<Connection> {
    let mut connection = target.connect()?;
    script.load(&mut connection)?;
    Ok(connection)
}

/// One commit to Redis, begun on the core's thread and run on another:
/// the pending changes as one pipeline of script calls over the store's
/// connection (connecting first if there is none), which comes back with
/// the outcome.
pub struct RedisSync {
    target: RedisTarget,
    connection: Option<Connection>,
    script: redis::Script,
    keys: Keys,
    node: String,
    pending: Vec<(Aor, Vec<(String, String)>)>,
    #[allow(clippy::type_complexity)]
    outcome: Option<redis::RedisResult<(Connection, Vec<Vec<Value>>, SystemTime)>>,
}

impl std::fmt::Debug for RedisSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSync")
            .field("target", &self.target)
            .field("changes", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl RedisSync {
    /// Sends the pipeline and waits for Redis (at most [`REDIS_TIMEOUT`]
    /// per step).
    pub fn run(&mut self) {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => match connect_with_script(&self.target, &self.script) {
                Ok(connection) => connection,
                Err(error) => {
                    self.outcome = Some(Err(error));
                    return;
                }
            },
        };
        let now = SystemTime::now();
        let hash = self.script.get_hash();
        let mut pipe: Pipeline = redis::pipe();
        for (aor, updates) in &self.pending {
            let call = pipe
                .cmd("EVALSHA")
                .arg(hash)
                .arg(2)
                .arg(self.keys.aor(aor))
                .arg(self.keys.counter());
            call.arg(unix_millis(now))
                .arg(self.keys.channel())
                .arg(&self.node)
                .arg(aor.as_str());
            for (field, value) in updates {
                call.arg(field).arg(value);
            }
        }
        self.outcome = Some(
            pipe.query::<Vec<Vec<Value>>>(&mut connection)
                .map(|results| (connection, results, now)),
        );
    }
}

impl crate::uas::BindingStore for RedisStore {
    fn write(&mut self, persist: &Persist) -> Result<(), StoreError> {
        self.pending
            .push((persist.record.aor.clone(), field_updates(persist)));
        Ok(())
    }

    fn begin_sync(&mut self) -> Option<SyncJob> {
        if self.pending.is_empty() {
            return None;
        }
        let pending = std::mem::take(&mut self.pending);
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Some(SyncJob::Ready(Err(
                self.unavailable("it failed less than a second ago".to_owned())
            )));
        }
        Some(SyncJob::Shared(Box::new(RedisSync {
            target: self.target.clone(),
            connection: self.connection.take(),
            script: self.script.clone(),
            keys: self.keys.clone(),
            node: self.state.node.clone(),
            pending,
            outcome: None,
        })))
    }

    fn finish_sync(&mut self, job: SyncJob) -> Result<(), StoreError> {
        let job = match job {
            SyncJob::Shared(job) => job,
            SyncJob::Ready(result) => {
                if result.is_err() {
                    // Changes written since were queued on top of these.
                    self.pending.clear();
                }
                return result;
            }
            SyncJob::Journal(_) => {
                return Err(self.unavailable("a journal sync handed to the shared store".to_owned()))
            }
        };
        let changes = job.pending.len();
        match job.outcome {
            Some(Ok((connection, results, now))) => {
                self.connection = Some(connection);
                self.retry_at = None;
                self.state.store_up.store(true, Ordering::Relaxed);
                self.state.commits.fetch_add(1, Ordering::Relaxed);
                for ((aor, _), values) in job.pending.into_iter().zip(results) {
                    if let Some((version, bindings)) = returned_bindings(&values, now) {
                        self.committed.push(Versioned {
                            record: Record {
                                aor,
                                bindings: Arc::new(bindings),
                            },
                            version,
                        });
                    }
                }
                Ok(())
            }
            Some(Err(error)) => {
                tracing::error!(%error, changes, "location store commit failed");
                self.pending.clear();
                self.fail();
                Err(self.unavailable(error.to_string()))
            }
            None => {
                self.pending.clear();
                Err(self.unavailable("the commit was never run".to_owned()))
            }
        }
    }

    fn take_committed(&mut self) -> Vec<Versioned> {
        std::mem::take(&mut self.committed)
    }

    fn journal_records(&self) -> usize {
        // Redis drops expired bindings itself: nothing to compact.
        0
    }

    fn compact(&mut self, _records: Vec<Record>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What the follower hands the core.
#[derive(Debug)]
pub enum LocationUpdate {
    /// The follower starts reading everything: this node's commits from
    /// now on may be missing from the read.
    Reading,
    /// Redis's whole view, read after (re)subscribing: it replaces the
    /// cache, except this node's own commits made since [`Self::Reading`]
    /// that the read does not have in a newer version.
    All(Vec<Versioned>),
    /// Another node changed this address-of-record; this is what Redis
    /// held after it (no bindings: it has none left).
    One(Versioned),
    /// The follower lost Redis: the cache is trusted for
    /// [`SharedLocation::stale_after`] from now.
    Lost,
}

/// The thread following other nodes' changes (see the module).
#[derive(Debug)]
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    /// Starts following; each update goes to `deliver`, which may block
    /// (the core's queue); it returns false when the core is gone.
    pub fn start(
        target: RedisTarget,
        keys: Keys,
        state: Arc<SharedLocation>,
        deliver: impl FnMut(LocationUpdate) -> bool + Send + 'static,
    ) -> std::io::Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("location-follower".to_owned())
            .spawn(move || follow(&target, &keys, &state, &flag, deliver))?;
        Ok(Follower {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn follow(
    target: &RedisTarget,
    keys: &Keys,
    state: &SharedLocation,
    stop: &AtomicBool,
    mut deliver: impl FnMut(LocationUpdate) -> bool,
) {
    let mut lost_logged = false;
    while !stop.load(Ordering::Relaxed) {
        match follow_once(target, keys, state, stop, &mut deliver) {
            Ok(()) => return,
            Err(error) => {
                let was_following = state.following.swap(false, Ordering::Relaxed);
                state.store_up.store(false, Ordering::Relaxed);
                state.failed();
                if was_following {
                    tracing::error!(%error, "location follower lost Redis: other nodes' changes are not seen; retrying every second");
                    if !deliver(LocationUpdate::Lost) {
                        return;
                    }
                } else if !lost_logged {
                    tracing::error!(%error, "location follower cannot reach Redis; retrying every second");
                }
                lost_logged = true;
            }
        }
        // Sleep in short steps so a stop is seen soon.
        for _ in 0..10 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One subscription: subscribe, read everything, then apply announcements
/// until an error (returned) or a stop (`Ok`).
fn follow_once(
    target: &RedisTarget,
    keys: &Keys,
    state: &SharedLocation,
    stop: &AtomicBool,
    deliver: &mut impl FnMut(LocationUpdate) -> bool,
) -> redis::RedisResult<()> {
    let mut reader = target.connect()?;
    let mut subscriber = target.connect()?;
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe(keys.channel())?;
    // Subscribed first, read second: a change made in between is both in
    // the full read and announced, never in neither.
    if !deliver(LocationUpdate::Reading) {
        return Ok(());
    }
    let records = load_all(&mut reader, keys, SystemTime::now())?;
    let count = records.len();
    if !deliver(LocationUpdate::All(records)) {
        return Ok(());
    }
    state.store_up.store(true, Ordering::Relaxed);
    state.following.store(true, Ordering::Relaxed);
    tracing::info!(
        addresses_of_record = count,
        "location follower subscribed and caught up"
    );
    // A read timeout lets the loop see a stop; a PING every few seconds
    // tells a dead server from a quiet one.
    pubsub.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut quiet = 0u32;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let message = match pubsub.get_message() {
            Ok(message) => message,
            Err(error) if error.is_timeout() => {
                quiet += 1;
                if quiet >= 3 {
                    quiet = 0;
                    redis::cmd("PING").query::<String>(&mut reader)?;
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        quiet = 0;
        let Ok(announcement) = serde_json::from_slice::<Announcement>(message.get_payload_bytes())
        else {
            tracing::warn!("location follower: an announcement that does not parse, ignored");
            continue;
        };
        if announcement.node == state.node {
            continue;
        }
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys.aor(&announcement.aor))
            .query(&mut reader)?;
        let (mut versioned, _) = record_of(announcement.aor, &fields, SystemTime::now());
        // A deleted hash has no version left: it is at least as new as
        // the change that announced it.
        versioned.version = versioned.version.max(announcement.version);
        state.received.fetch_add(1, Ordering::Relaxed);
        if !deliver(LocationUpdate::One(versioned)) {
            return Ok(());
        }
    }
}
