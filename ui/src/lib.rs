//! Switchboard dashboard: follows several signaling servers' REST APIs
//! ([`backends`], through [`client`]) and renders them live with askama +
//! htmx ([`web`]): overview, calls with their SIP [`ladder`], registrations,
//! RTP managers; operators log in with an API token ([`session`]).

pub mod api;
pub mod backends;
pub mod client;
pub mod config;
pub mod ladder;
pub mod session;
pub mod web;
