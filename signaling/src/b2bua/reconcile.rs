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
}

/// Decides which of a manager's `calls` (id, age) are orphans of this
/// node: an earlier instance's, or ours but unknown to this process
/// (`known`), once older than `grace`. Other nodes' calls are left alone.
pub fn orphans<'a>(
    owner: &Owner,
    calls: impl IntoIterator<Item = (&'a str, Duration)>,
    known: impl Fn(&str) -> bool,
    grace: Duration,
) -> Verdict {
    let mut verdict = Verdict::default();
    for (id, age) in calls {
        let orphan = match owner.ownership(id) {
            Ownership::Foreign => false,
            Ownership::Earlier => true,
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
        let verdict = orphans(&owner, calls, |id| id == ours_known, GRACE);
        assert_eq!(verdict.delete, vec![earlier_old, ours_lost]);
        assert_eq!(
            verdict.again_in,
            Some(Duration::from_secs(10)),
            "the young orphan is looked at again when its grace ends"
        );
        let verdict = orphans(&owner, [(foreign.as_str(), GRACE * 10)], |_| false, GRACE);
        assert_eq!(
            verdict,
            Verdict::default(),
            "nothing of ours: nothing to do"
        );
    }
}
