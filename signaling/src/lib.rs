//! Switchboard signaling server.
//!
//! SIP transports, transactions and dialogs, the registrar, the B2BUA and its
//! dialplan, the pool of RTP managers and the REST API. Protocol state
//! machines are sans-IO; sockets, timers and gRPC live in thin drivers.

pub mod add_user;
pub mod auth;
pub mod b2bua;
pub mod cdr;
pub mod cluster;
pub mod config;
pub mod dialplan;
pub mod events;
pub mod metrics;
pub mod registrar;
pub mod reload;
pub mod resolve;
pub mod rest;
pub mod rtpmanager_client;
pub mod rtpmanager_control;
pub mod rtpmanager_moves;
pub mod rtpmanager_pool;
pub mod server;
pub mod sip;
pub mod transaction;
pub mod transport;
pub mod uas;
