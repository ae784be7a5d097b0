//! Logic without PostgreSQL: no `pg_sys` call, so `cargo test` links and runs it.

pub mod backend_local;
pub mod backoff;
pub mod envelope;
pub mod identity;
pub mod latency;
pub mod ledger;
pub mod limits;
pub mod nodes;
pub mod pace;
pub mod packet;
pub mod pending;
pub mod props;
pub mod ring;
pub mod scanlog;
pub mod settings_rules;
pub mod topic;
pub mod topic_filter;
pub mod window;
