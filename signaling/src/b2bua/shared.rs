//! A call's essential state for the other nodes of a cluster: when the node
//! that took a call dies, a surviving node (or the restarted one) ends it
//! cleanly instead of leaving two half-calls and media ports behind.
//!
//! At answer, the B2BUA hands its driver a [`SharedCall`]: both dialogs as
//! a UAC needs them to send a BYE (Call-ID, tags, target, route set, where
//! the peer is reached, the last CSeq) and what the end record needs. The
//! driver keeps it in the shared store until the call ends. A node that
//! finds a lost node's calls pushes each as `LinkInput::Reap`: its B2BUA
//! sends the two BYEs from its own address and writes the call's record
//! (reason `node_lost`); the driver deletes the media on the manager.

use std::net::SocketAddr;
use std::sync::mpsc::{SyncSender, TrySendError};

use serde::{Deserialize, Serialize};

use super::{Call, Dialog};
use crate::events::Party;
use crate::sip::{CallId, NameAddr, Tag};
use crate::transport::Destination;

/// One ended-or-live call as other nodes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedCall {
    /// The node that took the call.
    pub node: String,
    /// The call's id in the owner's API.
    pub id: String,
    /// The call's id on its RTP manager.
    pub media_call_id: String,
    /// The manager's id, when the call has media.
    pub manager: Option<String>,
    pub caller: Party,
    pub callee: Option<Party>,
    pub dialled: String,
    pub route: String,
    pub started_at_ms: u64,
    pub answered_at_ms: Option<u64>,
    /// The caller's leg first, then the callee's when there is one.
    pub legs: Vec<SharedDialog>,
}

/// A dialog as its UAC side needs it for one more request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedDialog {
    pub call_id: String,
    /// Our side (From of our requests), without its tag.
    pub local: String,
    pub local_tag: String,
    /// The peer (To of our requests), without its tag.
    pub remote: String,
    pub remote_tag: Option<String>,
    /// The Request-URI of our requests.
    pub target: String,
    pub route_set: Vec<String>,
    /// `udp` or `tcp`.
    pub transport: String,
    pub address: SocketAddr,
    /// The last CSeq we used.
    pub cseq: u32,
}

/// What the B2BUA tells its driver about shared calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedCallUpdate {
    /// A call was answered: keep it (boxed: the record is large).
    Up(Box<SharedCall>),
    /// The call with this media call id ended.
    Down(String),
}

/// Where the B2BUA sends its updates; never blocks the core.
#[derive(Debug, Clone)]
pub struct SharedCallSink {
    node: String,
    sender: SyncSender<SharedCallUpdate>,
}

impl SharedCallSink {
    /// Updates for calls of `node`, into `sender`.
    pub fn new(node: impl Into<String>, sender: SyncSender<SharedCallUpdate>) -> SharedCallSink {
        SharedCallSink {
            node: node.into(),
            sender,
        }
    }

    pub(super) fn send(&self, update: SharedCallUpdate) {
        match self.sender.try_send(update) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("shared call state queue full: a call's state is not shared (its end after a crash of this node is left to the manager's own timeout)");
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }
}

impl SharedDialog {
    pub(super) fn of(dialog: &Dialog) -> SharedDialog {
        let (transport, address) = match dialog.destination {
            Destination::Udp(remote) => ("udp", remote),
            Destination::Stream { kind, remote, .. } => (kind.name(), remote),
        };
        SharedDialog {
            call_id: dialog.call_id.as_str().to_owned(),
            local: dialog.local.to_string(),
            local_tag: dialog.local_tag.as_str().to_owned(),
            remote: dialog.remote.to_string(),
            remote_tag: dialog.remote_tag.as_ref().map(|t| t.as_str().to_owned()),
            target: dialog.target.clone(),
            route_set: dialog.route_set.clone(),
            transport: transport.to_ascii_lowercase(),
            address,
            cseq: dialog.local_cseq,
        }
    }

    /// The dialog again, to send a request on; `None` when a stored field
    /// does not parse (written by another version).
    pub(super) fn dialog(&self) -> Option<Dialog> {
        // "udp", "tcp", "tls", "ws" or "wss".
        let destination = Destination::over(
            &crate::sip::Transport::from_token(&self.transport),
            self.address,
        );
        Some(Dialog {
            call_id: CallId::new(self.call_id.clone()),
            local: NameAddr::parse(&self.local).ok()?,
            local_tag: Tag::new(self.local_tag.clone()),
            remote: NameAddr::parse(&self.remote).ok()?,
            remote_tag: self.remote_tag.clone().map(Tag::new),
            target: self.target.clone(),
            route_set: self.route_set.clone(),
            destination,
            // Well past what the owner may have sent since it shared the
            // dialog (re-INVITEs, UPDATEs): the peer wants a higher CSeq.
            local_cseq: self.cseq.saturating_add(100),
        })
    }
}

impl SharedCall {
    pub(super) fn of(node: &str, call: &Call) -> SharedCall {
        let info = &call.info;
        SharedCall {
            node: node.to_owned(),
            id: info.id.clone(),
            media_call_id: call.media_id.0.clone(),
            manager: info.manager.clone(),
            caller: info.caller.clone(),
            callee: info.callee.clone(),
            dialled: info.dialled.clone(),
            route: info.route.clone(),
            started_at_ms: super::view::unix_ms(info.started),
            answered_at_ms: info.answered.map(super::view::unix_ms),
            legs: std::iter::once(&call.a)
                .chain(call.b.as_ref())
                .map(SharedDialog::of)
                .collect(),
        }
    }
}
