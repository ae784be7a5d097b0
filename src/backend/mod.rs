//! What a backend runs: the publishing functions, the transaction callbacks, the compiled
//! triggers and their helpers, `mqtt_status()`.

pub mod broker_add;
pub mod database_hooks;
pub mod databases;
pub mod drop_guard;
pub mod grants;
pub mod properties;
pub mod publish;
pub mod resultset;
pub mod setup;
pub mod status;
pub mod trigger;
pub mod txn;
