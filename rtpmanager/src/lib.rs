//! Switchboard RTP manager.
//!
//! The manager is driven over gRPC ([`grpc`], which only converts) by
//! signaling servers. Its decisions are the sans-IO [`engine`]'s (the
//! session table and the offload decision); the [`driver`] carries them
//! out. It owns media ports ([`ports`]), rewrites SDP ([`sdp`]) and relays RTP/RTCP; bridged
//! streams that need no userspace work are offloaded to the eBPF programs
//! loaded by [`fastpath`], which are a cache of the userspace path, never a
//! different behaviour. Playback and DTMF sending into a leg live in
//! [`playback`]; the optional Prometheus endpoint in [`metrics`]; who may
//! use the control API (TLS, client certificates, tokens) in [`access`].

pub mod access;
pub mod clock;
pub mod config;
pub mod driver;
pub mod engine;
pub mod fastpath;
pub mod grpc;
pub mod interfaces;
pub mod media;
pub mod metrics;
pub mod offload;
pub mod playback;
pub mod ports;
pub mod relay;
pub mod sdp;
pub mod server;
pub mod session;
pub mod stats;
