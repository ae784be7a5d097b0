//! Data access: the extension's tables, through `pg::spi` only.

pub mod backlog;
pub mod catalog;
pub mod installation;
pub mod outbox;
pub mod outbox_size;
pub mod rights;
