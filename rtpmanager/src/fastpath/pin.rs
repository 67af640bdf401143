//! Pinning the fast path under a bpffs directory, so that it outlives the
//! manager's process: the maps (forwarding entries, stream stats, config,
//! counters) and the link that attaches the program to the interface.
//!
//! A BPF link is detached when its last reference goes away, and the
//! process's file descriptor is the only one unless the link is pinned: an
//! unpinned link dies with the process (SIGKILL included). Pinned, the
//! program keeps forwarding with the pinned maps while no manager runs, and
//! the next manager replaces the program in the same link atomically
//! (`bpf_link_update`), so packets never meet a detached interface.
//!
//! Pinned maps are reused only when their layout is the one this build's
//! programs expect; a map from another layout (an upgrade that changed an
//! entry) is unpinned and created afresh, since the verifier would refuse
//! the programs with it anyway.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use rtpmanager_common::{
    Counter, PortEntry, ProgramConfig, StreamStats, CONFIG_MAP, COUNTERS_MAP, FORWARD_MAP,
    STREAM_SLOTS, STREAM_STATS_MAP,
};

use super::Mode;

/// `f_type` of a bpffs mount (linux/magic.h).
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// Why the fast path cannot be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The pin directory is not on a bpffs mount.
    #[error("{0} is not on a bpffs (mount one with `mount -t bpf bpf /sys/fs/bpf`, or choose another --bpf-pin-path)")]
    NotBpffs(PathBuf),
    /// The pin directory could not be created or opened.
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another manager holds the pin directory: taking its link and maps
    /// over would break its calls.
    #[error("{0} is in use by another manager (choose another --bpf-pin-path)")]
    InUse(PathBuf),
}

/// The names of the pinned maps.
const PINNED_MAPS: [&str; 4] = [CONFIG_MAP, COUNTERS_MAP, FORWARD_MAP, STREAM_STATS_MAP];

/// The pinned maps with the layout this build expects, the forwarding
/// array holding `forward_entries` elements (one per media port: another
/// range is another layout): (name, key size, value size, max entries).
fn layouts(forward_entries: u32) -> [(&'static str, usize, usize, u32); 4] {
    let index = std::mem::size_of::<u32>();
    [
        (CONFIG_MAP, index, std::mem::size_of::<ProgramConfig>(), 1),
        (
            COUNTERS_MAP,
            index,
            std::mem::size_of::<u64>(),
            Counter::SLOTS,
        ),
        (
            FORWARD_MAP,
            index,
            std::mem::size_of::<PortEntry>(),
            forward_entries,
        ),
        (
            STREAM_STATS_MAP,
            index,
            std::mem::size_of::<StreamStats>(),
            STREAM_SLOTS,
        ),
    ]
}

/// A pin directory on bpffs, locked (`flock` on the directory) for as long
/// as this value lives, so two managers never share one.
#[derive(Debug)]
pub struct Pins {
    dir: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn on_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC)
}

impl Pins {
    /// Creates `dir` (on a bpffs) if needed.
    pub fn prepare(dir: &Path) -> Result<Pins, PinError> {
        // The nearest existing ancestor tells whether the directory would be
        // on bpffs; creating it elsewhere (sysfs) fails with a less clear error.
        let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(dir);
        if !on_bpffs(existing) {
            return Err(PinError::NotBpffs(dir.to_owned()));
        }
        let create = |source| PinError::Create {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(create)?;
        let handle = std::fs::File::open(dir).map_err(create)?;
        let lock = nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| PinError::InUse(dir.to_owned()))?;
        Ok(Pins {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The names of the pinned maps.
    pub fn map_names() -> impl Iterator<Item = &'static str> {
        PINNED_MAPS.into_iter()
    }

    /// Where the link of `mode` is pinned.
    pub fn link_path(&self, mode: Mode) -> PathBuf {
        self.dir.join(format!("link-{mode}"))
    }

    /// Where the link of `mode` on another device than the first is
    /// pinned (the first keeps [`Pins::link_path`], so an upgraded manager
    /// re-adopts a single-interface run's link).
    pub fn device_link_path(&self, mode: Mode, device: &str) -> PathBuf {
        self.dir.join(format!("link-{mode}-{device}"))
    }

    /// Unpins maps whose layout is not this build's, so they are created
    /// afresh; returns their names.
    pub fn drop_incompatible_maps(&self, forward_entries: u32) -> Vec<&'static str> {
        let mut dropped = Vec::new();
        for (name, key, value, max) in layouts(forward_entries) {
            let path = self.map_path(name);
            if !path.exists() {
                continue;
            }
            let compatible = MapInfo::from_pin(&path).is_ok_and(|info| {
                info.key_size() as usize == key
                    && info.value_size() as usize == value
                    && info.max_entries() == max
            });
            if !compatible {
                match std::fs::remove_file(&path) {
                    Ok(()) => dropped.push(name),
                    Err(e) => {
                        tracing::warn!(map = name, error = %e, "cannot unpin a map of another layout")
                    }
                }
            }
        }
        dropped
    }

    /// Unpins every map: they are freed once no program or process holds them.
    pub fn remove_maps(&self) {
        for name in Self::map_names() {
            if let Err(e) = std::fs::remove_file(self.map_path(name)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(map = name, error = %e, "cannot unpin map");
                }
            }
        }
    }

    /// Removes the directory when nothing else is left in it.
    pub fn remove_dir_if_empty(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
