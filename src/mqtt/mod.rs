//! The MQTT client (libmosquitto), free of PostgreSQL: one file per concern, each importing only
//! the ones listed above it.
//!
//! | file | concern |
//! |---|---|
//! | `errors` | libmosquitto's error codes and MQTT's reason codes in words |
//! | `callbacks` | libmosquitto's callbacks and what they record ([`client::Event`]s, limits) |
//! | `handoff` | what the worker hands over with a message, and what it gets back |
//! | `proplist` | a message's MQTT 5 properties as libmosquitto's list, for what it writes |
//! | `tls_name` | TLS to an address of a named node: verified against the name (ADR-013) |
//! | `session` | the libmosquitto object: its options (credentials, TLS), destroyed on drop |
//! | `qos0_writer` | our own QoS 0 writer on libmosquitto's socket (ADR-010) |
//! | `client` | one connection as the worker sees it: a message to a writer; drives both |
//!
//! The worker uses `client` only; it re-exports what the worker needs of the others.

mod callbacks;
pub mod client;
mod errors;
mod handoff;
mod proplist;
mod qos0_writer;
mod session;
mod tls_name;
