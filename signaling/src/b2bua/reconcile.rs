//! Which calls on a manager belong to this signaling server, and which of
//! them it has forgotten (a crash, `kill -9`) and must delete.
//!
//! Several signaling servers may share a manager, so every media call id
//! starts with its creator: `node/instance/Call-ID`, the node id
//! (`--node-id`, stable across restarts) and an instance drawn at each
//! start. A restarted server then tells its own orphans (its node, another
//! instance) from live calls of other nodes, which it never touches.
//!
//! [`orphans`] is the decision, sans-IO: given the manager's `ListCalls`
//! and what this process knows, which calls to delete now and when to look
//! again. A call is deleted only once it is older than the grace period,
//! so a call set up while the list was in flight is never taken for an
//! orphan; the executor runs the decision (executor.rs).
//!
//! A node id given to two running servers would make each take the other's
//! calls for orphans. An earlier instance cannot have placed a call after
//! this process started, so an instance that did is alive: its calls are
//! left alone and the verdict names it, for a loud log.

use std::time::Duration;

use super::MediaCallId;

/// The creator of the calls this process places on managers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    node: String,
    instance: String,
}

/// Whose a call on a manager is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Placed by this process.
    Ours,
    /// Placed by an earlier process of this node: an orphan.
    Earlier,
    /// Another node's, or not made by a signaling server at all.
    Foreign,
}

impl Owner {
    /// The owner `node` (a validated `--node-id`: no `/`) with this
    /// process's `instance`.
    pub fn new(node: &str, instance: u32) -> Owner {
        Owner {
            node: node.to_owned(),
            instance: format!("{instance:08x}"),
        }
    }

    /// The node id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The media call id of a call whose caller's Call-ID is `call_id`.
    pub fn media_id(&self, call_id: &str) -> MediaCallId {
        MediaCallId(format!("{}/{}/{call_id}", self.node, self.instance))
    }

    /// The instance part of a call id of this node.
    fn instance_of<'a>(&self, id: &'a str) -> Option<&'a str> {
        id.strip_prefix(self.node.as_str())?
            .strip_prefix('/')?
            .split_once('/')
            .map(|(instance, _)| instance)
    }

    /// Whose the manager's call `id` is.
    pub fn ownership(&self, id: &str) -> Ownership {
        let Some(rest) = id
            .strip_prefix(self.node.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Ownership::Foreign;
        };
        match rest.split_once('/') {
            Some((instance, _)) if instance == self.instance => Ownership::Ours,
            Some(_) => Ownership::Earlier,
            None => Ownership::Foreign,
        }
    }
}

/// What to do after one `ListCalls` of a manager.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Calls to delete now.
    pub delete: Vec<String>,
    /// When to list again: some orphan candidates are still in their grace
    /// period. `None`: nothing left to watch.
    pub again_in: Option<Duration>,
    /// Instances of this node id that placed calls after this process
    /// started: another running server with the same node id.
    pub twins: Vec<String>,
}

/// Decides which of a manager's `calls` (id, age) are orphans of this
/// node: an earlier instance's, or ours but unknown to this process
/// (`known`), once older than `grace`. Other nodes' calls are left alone,
/// and so are those of an instance that placed a call during this
/// process's `uptime` (a twin, see the module documentation).
pub fn orphans<'a>(
    owner: &Owner,
    calls: impl IntoIterator<Item = (&'a str, Duration)>,
    known: impl Fn(&str) -> bool,
    grace: Duration,
    uptime: Duration,
) -> Verdict {
    let calls: Vec<(&str, Duration)> = calls.into_iter().collect();
    let mut verdict = Verdict::default();
    // Ages are whole seconds, rounded down: a call is surely younger than
    // this process when its age plus one second is.
    for (id, age) in &calls {
        if owner.ownership(id) == Ownership::Earlier && *age + Duration::from_secs(1) <= uptime {
            if let Some(instance) = owner.instance_of(id) {
                if !verdict.twins.iter().any(|t| t == instance) {
                    verdict.twins.push(instance.to_owned());
                }
            }
        }
    }
    for (id, age) in calls {
        let orphan = match owner.ownership(id) {
            Ownership::Foreign => false,
            Ownership::Earlier => owner
                .instance_of(id)
                .is_none_or(|i| !verdict.twins.iter().any(|t| t == i)),
            Ownership::Ours => !known(id),
        };
        if !orphan {
            continue;
        }
        if age >= grace {
            verdict.delete.push(id.to_owned());
        } else {
            let left = grace - age;
            verdict.again_in = Some(verdict.again_in.map_or(left, |d| d.min(left)));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn media_ids_carry_node_and_instance() {
        let owner = Owner::new("sig-a", 0xbeef);
        let id = owner.media_id("abc@host/x");
        assert_eq!(id.0, "sig-a/0000beef/abc@host/x");
        assert_eq!(owner.ownership(&id.0), Ownership::Ours);
        assert_eq!(
            Owner::new("sig-a", 1).ownership(&id.0),
            Ownership::Earlier,
            "the same node after a restart"
        );
        assert_eq!(
            Owner::new("sig-b", 0xbeef).ownership(&id.0),
            Ownership::Foreign
        );
        assert_eq!(
            Owner::new("sig", 0xbeef).ownership(&id.0),
            Ownership::Foreign,
            "a node id that is a prefix of another is another node"
        );
        assert_eq!(owner.ownership("plain-call-id"), Ownership::Foreign);
        assert_eq!(owner.ownership("sig-a/no-instance"), Ownership::Foreign);
    }

    #[test]
    fn orphans_are_deleted_after_the_grace_and_other_nodes_calls_never() {
        let owner = Owner::new("sig-a", 2);
        let earlier_old = Owner::new("sig-a", 1).media_id("old").0;
        let earlier_young = Owner::new("sig-a", 1).media_id("young").0;
        let ours_known = owner.media_id("live").0;
        let ours_lost = owner.media_id("lost").0;
        let foreign = Owner::new("sig-b", 1).media_id("theirs").0;
        let calls = [
            (earlier_old.as_str(), Duration::from_secs(31)),
            (earlier_young.as_str(), Duration::from_secs(20)),
            (ours_known.as_str(), Duration::from_secs(300)),
            (ours_lost.as_str(), Duration::from_secs(30)),
            (foreign.as_str(), Duration::from_secs(3000)),
            ("no-owner", Duration::from_secs(3000)),
        ];
        let just_restarted = Duration::from_secs(5);
        let verdict = orphans(&owner, calls, |id| id == ours_known, GRACE, just_restarted);
        assert_eq!(verdict.delete, vec![earlier_old, ours_lost]);
        assert_eq!(
            verdict.again_in,
            Some(Duration::from_secs(10)),
            "the young orphan is looked at again when its grace ends"
        );
        let verdict = orphans(
            &owner,
            [(foreign.as_str(), GRACE * 10)],
            |_| false,
            GRACE,
            GRACE,
        );
        assert_eq!(
            verdict,
            Verdict::default(),
            "nothing of ours: nothing to do"
        );
    }

    #[test]
    fn an_instance_that_placed_calls_since_our_start_is_a_live_twin_left_alone() {
        let owner = Owner::new("sig-a", 2);
        let twin = Owner::new("sig-a", 3);
        let dead = Owner::new("sig-a", 1);
        let twin_old = twin.media_id("old").0;
        let twin_new = twin.media_id("new").0;
        let dead_call = dead.media_id("gone").0;
        let uptime = Duration::from_secs(600);
        let calls = [
            (twin_old.as_str(), Duration::from_secs(3600)),
            (twin_new.as_str(), Duration::from_secs(60)),
            (dead_call.as_str(), Duration::from_secs(601)),
        ];
        let verdict = orphans(&owner, calls, |_| false, GRACE, uptime);
        assert_eq!(verdict.twins, vec!["00000003"]);
        assert_eq!(
            verdict.delete,
            vec![dead_call],
            "the twin's calls stay, even those older than this process"
        );
        // Just after a restart every earlier call is older than us.
        let calls = [(twin_old.as_str(), Duration::from_secs(5))];
        let verdict = orphans(&owner, calls, |_| false, GRACE, Duration::from_secs(5));
        assert!(verdict.twins.is_empty(), "{verdict:?}");
    }
}
