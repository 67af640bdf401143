//! Reloading the dialplan and the users file while the server runs, on
//! SIGHUP (`systemctl reload`) or `POST /api/v1/reload/{dialplan,users}`:
//! one implementation for both. A file that does not load leaves the
//! previous dialplan or users in place and says why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::b2bua::{LinkInput, MediaLink};
use crate::dialplan::Dialplan;
use crate::uas::driver::CoreHandle;

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReloadError {
    /// The server runs without the file (no dialplan, no `--users-file`).
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The file did not load; the previous content stays.
    #[error("{0}")]
    Invalid(String),
    /// The SIP core is stopped or its queue is full.
    #[error("the SIP core is not running or its queue is full; retry")]
    Busy,
}

/// What can be reloaded, and where it goes.
#[derive(Clone, Debug)]
pub struct Reloader {
    /// The dialplan's path and the B2BUA's link, when calls are routed.
    dialplan: Option<(PathBuf, MediaLink)>,
    users: Option<PathBuf>,
    core: CoreHandle,
}

impl Reloader {
    pub fn new(
        dialplan: Option<(PathBuf, MediaLink)>,
        users: Option<PathBuf>,
        core: CoreHandle,
    ) -> Reloader {
        Reloader {
            dialplan,
            users,
            core,
        }
    }

    /// Loads the dialplan file again and hands it to the B2BUA; calls in
    /// progress keep the plan they started with. Says how many routes it has.
    pub fn dialplan(&self) -> Result<usize, ReloadError> {
        let (path, link) = self.dialplan.as_ref().ok_or(ReloadError::NotConfigured(
            "the server started without a dialplan (--dialplan); restart it with one",
        ))?;
        match Dialplan::load(path) {
            Ok(plan) => {
                let routes = plan.routes().len();
                tracing::info!(routes, path = %path.display(), "dialplan reloaded");
                link.push_input(Instant::now(), LinkInput::Dialplan(Arc::new(plan)));
                self.core.wake();
                Ok(routes)
            }
            Err(error) => {
                tracing::warn!(%error, "dialplan not reloaded; the previous plan stays");
                Err(ReloadError::Invalid(format!(
                    "{}: {error}; the previous plan stays",
                    path.display()
                )))
            }
        }
    }

    /// Reads the users file again; says how many users it holds.
    pub async fn users(&self) -> Result<usize, ReloadError> {
        let path = self.users.clone().ok_or(ReloadError::NotConfigured(
            "the server runs without --users-file",
        ))?;
        match self.core.reload_users_now(path).await {
            Some(Ok(users)) => Ok(users),
            Some(Err(error)) => Err(ReloadError::Invalid(format!(
                "{error}; the previous users stay"
            ))),
            None => Err(ReloadError::Busy),
        }
    }

    /// Reloads both on every SIGHUP, as long as the process runs.
    pub fn reload_on_sighup(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGHUP; reload through the REST API");
                return;
            }
        };
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the dialplan and the users file");
                if self.dialplan.is_some() {
                    let _ = self.dialplan();
                }
                if self.users.is_some() {
                    let _ = self.users().await;
                }
            }
        });
    }
}
