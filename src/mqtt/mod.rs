//! The MQTT client (libmosquitto), free of PostgreSQL.

pub mod client;
