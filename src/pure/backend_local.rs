//! `BackendLocal<T>`: a `static` used by one process's main thread only.
//!
//! PostgreSQL runs every SQL function, callback and hook of a process on its main thread, so the
//! per-process caches and state of this extension (prepared plans, the transaction's pending
//! messages, catalog caches) need no lock. Rust cannot know that, and a `static` must be `Sync`.
//! This wrapper states it once, instead of an `unsafe impl Sync` per static. The only other
//! threads in any of our processes are the worker's connect threads (worker/link.rs), which run
//! libmosquitto code only and never touch a `BackendLocal`.

use std::ops::Deref;

pub struct BackendLocal<T>(T);

// SAFETY: see the module comment: only the process's main thread ever reaches the value.
unsafe impl<T> Sync for BackendLocal<T> {}

impl<T> BackendLocal<T> {
    pub const fn new(value: T) -> Self {
        BackendLocal(value)
    }
}

impl<T> Deref for BackendLocal<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
