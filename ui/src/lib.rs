//! Switchboard dashboard: polls several signaling servers' REST APIs
//! ([`backends`]) and renders them live with askama + htmx ([`web`]).

pub mod backends;
pub mod config;
pub mod web;
