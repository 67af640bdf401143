//! Switchboard RTP manager.
//!
//! The manager is driven over gRPC ([`grpc`]) by signaling servers. It owns
//! media ports, rewrites SDP and relays RTP/RTCP; bridged streams that need no
//! userspace work are offloaded to the eBPF programs loaded by [`fastpath`],
//! which are a cache of the userspace path, never a different behaviour.

pub mod config;
pub mod fastpath;
pub mod grpc;
pub mod interfaces;
pub mod server;
