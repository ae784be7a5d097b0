//! PostgreSQL glue: the FFI error boundary, version differences, function-call plumbing, the
//! one SQL runner, settings.

pub mod compat;
pub mod fmgr;
pub mod guard;
pub mod guc_checks;
pub mod gucs;
pub mod instance;
pub mod spi;
