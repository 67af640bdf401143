//! The userspace side of the programs' maps: run-time config, forwarding
//! entries, per-stream stats and verdict counters.
//!
//! This is the "how" of offloading; the session table decides what to
//! offload and when to take it back. The maps are taken out of the loaded
//! object, so they stay usable from any thread while the programs run, and
//! whoever holds a [`KernelMaps`] (the [`super::FastPath`], or a test that
//! loaded the object without attaching it) uses the same checks.
//!
//! Pinning (see [`super::pin`]) happens in the loader and does not change
//! this API: pinned maps come back with a previous run's contents.

use aya::maps::{Array, MapData, MapError, PerCpuArray};
use aya::Ebpf;
use rtpmanager_common::{
    is_v4_mapped, Counter, ForwardEntry, ForwardKey, PortEntry, ProgramConfig, StreamStats,
    CONFIG_MAP, COUNTERS_MAP, FLAGS_KNOWN, FLAG_RTCP, FLAG_RTP, FORWARD_MAP, STREAM_SLOTS,
    STREAM_STATS_MAP,
};

use super::FastPathError;

/// Why an entry cannot be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEntry {
    /// The entry's addresses and the key are not all of one family; the
    /// kernel cannot change header sizes.
    #[error("key, source, destination and expected source must be of one address family")]
    FamilyMismatch,
    /// The stats slot is outside the stats map.
    #[error("stats slot {0} is out of range (0..{STREAM_SLOTS})")]
    StatsSlot(u32),
    /// Flags outside `FLAGS_KNOWN`, or RTP and RTCP together.
    #[error("flags {0:#06x} are unknown or contradictory")]
    Flags(u16),
    /// The key's padding is not zero, so the kernel would never match it.
    #[error("key padding must be zero")]
    KeyPadding,
    /// The key's port is outside the media range the programs look up.
    #[error("port {port} is outside the media range {min}-{max}")]
    OutsideMediaRange { port: u16, min: u16, max: u16 },
}

/// The programs' maps, taken out of a loaded [`Ebpf`].
pub struct KernelMaps {
    config: Array<MapData, ProgramConfig>,
    /// What `config` holds, for validating entries without a syscall.
    current: ProgramConfig,
    /// One element per media port, changed under a sequence count (see
    /// `PortEntry`).
    forward: Array<MapData, PortEntry>,
    stream_stats: Array<MapData, StreamStats>,
    counters: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMaps").finish_non_exhaustive()
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, FastPathError> {
    ebpf.take_map(name)
        .ok_or_else(|| FastPathError::Object(format!("no map {name}")))
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> FastPathError {
    move |source| FastPathError::Map { name, source }
}

impl KernelMaps {
    /// Takes the maps out of `ebpf` (loaded, attached or not).
    pub fn take(ebpf: &mut Ebpf) -> Result<KernelMaps, FastPathError> {
        Ok(KernelMaps {
            config: Array::try_from(take(ebpf, CONFIG_MAP)?).map_err(map_err(CONFIG_MAP))?,
            current: ProgramConfig::default(),
            forward: Array::try_from(take(ebpf, FORWARD_MAP)?).map_err(map_err(FORWARD_MAP))?,
            stream_stats: Array::try_from(take(ebpf, STREAM_STATS_MAP)?)
                .map_err(map_err(STREAM_STATS_MAP))?,
            counters: PerCpuArray::try_from(take(ebpf, COUNTERS_MAP)?)
                .map_err(map_err(COUNTERS_MAP))?,
        })
    }

    /// Writes the programs' run-time settings.
    pub fn set_config(&mut self, config: ProgramConfig) -> Result<(), FastPathError> {
        self.config.set(0, config, 0).map_err(map_err(CONFIG_MAP))?;
        self.current = config;
        Ok(())
    }

    /// Installs or replaces the entry for packets addressed to `key` (one
    /// per port: another address on the same port is replaced).
    pub fn install(&mut self, key: ForwardKey, entry: ForwardEntry) -> Result<(), FastPathError> {
        validate(&self.current, &key, &entry)?;
        let (index, old) = self.element(&key)?;
        self.write_port(index, old, &key, Some(entry))
    }

    /// Removes the entry for `key`; `false` when there was none.
    pub fn remove(&mut self, key: &ForwardKey) -> Result<bool, FastPathError> {
        let (index, old) = self.element(key)?;
        if old.in_use == 0 || old.local_addr != key.addr {
            return Ok(false);
        }
        self.write_port(index, old, key, None)?;
        Ok(true)
    }

    /// The element index of `key`'s port, when the port is in the range.
    fn index(&self, key: &ForwardKey) -> Option<u32> {
        let port = u16::from_be_bytes(key.port);
        (self.current.port_min..=self.current.port_max)
            .contains(&port)
            .then(|| u32::from(port - self.current.port_min))
    }

    /// The element of `key`'s port and its index.
    fn element(&self, key: &ForwardKey) -> Result<(u32, PortEntry), FastPathError> {
        let index = self.index(key).ok_or(InvalidEntry::OutsideMediaRange {
            port: u16::from_be_bytes(key.port),
            min: self.current.port_min,
            max: self.current.port_max,
        })?;
        let element = self.forward.get(&index, 0).map_err(map_err(FORWARD_MAP))?;
        Ok((index, element))
    }

    /// Changes element `index` (now `old`) under its sequence count, so a
    /// program never uses a half-written entry: odd with the old contents,
    /// the new contents, then even (see `PortEntry`).
    fn write_port(
        &mut self,
        index: u32,
        old: PortEntry,
        key: &ForwardKey,
        entry: Option<ForwardEntry>,
    ) -> Result<(), FastPathError> {
        // An odd count left by a manager that died mid-write.
        let seq = old.seq | 1;
        let changing = PortEntry { seq, ..old };
        let new = match entry {
            Some(entry) => PortEntry {
                seq,
                in_use: 1,
                local_addr: key.addr,
                entry,
            },
            None => PortEntry {
                in_use: 0,
                ..changing
            },
        };
        for value in [
            changing,
            new,
            PortEntry {
                seq: seq.wrapping_add(1),
                ..new
            },
        ] {
            self.forward
                .set(index, value, 0)
                .map_err(map_err(FORWARD_MAP))?;
        }
        Ok(())
    }

    /// Every installed entry's key and entry, in port order.
    fn installed(&self) -> Vec<(ForwardKey, ForwardEntry)> {
        self.forward
            .iter()
            .enumerate()
            .filter_map(|(index, value)| {
                let value = value.ok()?;
                let port = self
                    .current
                    .port_min
                    .checked_add(u16::try_from(index).ok()?)?;
                (value.in_use != 0 && value.seq & 1 == 0).then(|| {
                    (
                        ForwardKey {
                            addr: value.local_addr,
                            port: port.to_be_bytes(),
                            pad: [0; 2],
                        },
                        value.entry,
                    )
                })
            })
            .collect()
    }

    /// Removes every entry whose key `keep` refuses; returns how many went.
    pub fn retain_forwards(&mut self, keep: impl Fn(&ForwardKey) -> bool) -> usize {
        let doomed: Vec<ForwardKey> = self
            .installed()
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| !keep(key))
            .collect();
        doomed
            .iter()
            .filter(|key| matches!(self.remove(key), Ok(true)))
            .count()
    }

    /// The keys of every installed entry.
    pub fn forward_keys(&self) -> Vec<ForwardKey> {
        self.installed().into_iter().map(|(key, _)| key).collect()
    }

    /// The installed entry for `key`, if any (the hop cache as the
    /// programs left it).
    pub fn entry(&self, key: &ForwardKey) -> Option<ForwardEntry> {
        let (_, value) = self.element(key).ok()?;
        (value.in_use != 0 && value.local_addr == key.addr).then_some(value.entry)
    }

    /// The stats of slot `slot`; `None` when out of range.
    pub fn stream_stats(&self, slot: u32) -> Option<StreamStats> {
        self.stream_stats.get(&slot, 0).ok()
    }

    /// Zeroes slot `slot`, e.g. before giving it to a new stream.
    pub fn reset_stream_stats(&mut self, slot: u32) -> Result<(), FastPathError> {
        if slot >= STREAM_SLOTS {
            return Err(InvalidEntry::StatsSlot(slot).into());
        }
        self.stream_stats
            .set(slot, StreamStats::default(), 0)
            .map_err(map_err(STREAM_STATS_MAP))
    }

    /// Per-reason packet counters summed over CPUs, in slot order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, FastPathError> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let per_cpu = self
                    .counters
                    .get(&(c as u32), 0)
                    .map_err(map_err(COUNTERS_MAP))?;
                Ok((c, per_cpu.iter().sum()))
            })
            .collect()
    }
}

/// Rejects entries the programs would mishandle or never match.
fn validate(
    config: &ProgramConfig,
    key: &ForwardKey,
    entry: &ForwardEntry,
) -> Result<(), InvalidEntry> {
    if key.pad != [0; 2] {
        return Err(InvalidEntry::KeyPadding);
    }
    let port = u16::from_be_bytes(key.port);
    if port < config.port_min || port > config.port_max {
        return Err(InvalidEntry::OutsideMediaRange {
            port,
            min: config.port_min,
            max: config.port_max,
        });
    }
    let v4 = is_v4_mapped(&key.addr);
    if [entry.src_addr, entry.dst_addr, entry.expected_addr]
        .iter()
        .any(|a| is_v4_mapped(a) != v4)
    {
        return Err(InvalidEntry::FamilyMismatch);
    }
    if entry.stats_slot >= STREAM_SLOTS {
        return Err(InvalidEntry::StatsSlot(entry.stats_slot));
    }
    let both = FLAG_RTP | FLAG_RTCP;
    if entry.flags & !FLAGS_KNOWN != 0 || entry.flags & both == both {
        return Err(InvalidEntry::Flags(entry.flags));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtpmanager_common::FLAG_STRICT_SOURCE;

    const CONFIG: ProgramConfig = ProgramConfig {
        port_min: 30000,
        port_max: 30100,
        flags: 0,
        next_hop_ttl_ns: 500_000_000,
    };

    fn entry(dst: &str, flags: u16, slot: u32) -> ForwardEntry {
        ForwardEntry::new(
            "10.0.0.1:30002".parse().expect("literal"),
            dst.parse().expect("literal"),
            "10.0.0.3:41000".parse().expect("literal"),
            flags,
            8000,
            slot,
        )
    }

    #[test]
    fn validation_accepts_one_family_and_known_flags() {
        let key = ForwardKey::new("10.0.0.1:30000".parse().expect("literal"));
        assert_eq!(
            validate(
                &CONFIG,
                &key,
                &entry("10.0.0.2:40000", FLAG_RTP | FLAG_STRICT_SOURCE, 0)
            ),
            Ok(())
        );
        assert_eq!(
            validate(&CONFIG, &key, &entry("[2001:db8::2]:40000", FLAG_RTP, 0)),
            Err(InvalidEntry::FamilyMismatch)
        );
        assert_eq!(
            validate(
                &CONFIG,
                &key,
                &entry("10.0.0.2:40000", FLAG_RTP, STREAM_SLOTS)
            ),
            Err(InvalidEntry::StatsSlot(STREAM_SLOTS))
        );
        assert_eq!(
            validate(
                &CONFIG,
                &key,
                &entry("10.0.0.2:40000", FLAG_RTP | FLAG_RTCP, 0)
            ),
            Err(InvalidEntry::Flags(3))
        );
        assert_eq!(
            validate(&CONFIG, &key, &entry("10.0.0.2:40000", 0x80, 0)),
            Err(InvalidEntry::Flags(0x80))
        );
        let elsewhere = ForwardKey::new("10.0.0.1:5060".parse().expect("literal"));
        assert_eq!(
            validate(&CONFIG, &elsewhere, &entry("10.0.0.2:40000", FLAG_RTP, 0)),
            Err(InvalidEntry::OutsideMediaRange {
                port: 5060,
                min: 30000,
                max: 30100
            })
        );
        let padded = ForwardKey { pad: [0, 1], ..key };
        assert_eq!(
            validate(&CONFIG, &padded, &entry("10.0.0.2:40000", FLAG_RTP, 0)),
            Err(InvalidEntry::KeyPadding)
        );
    }
}
