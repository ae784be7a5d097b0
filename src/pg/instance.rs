//! Who this cluster is: the facts behind the default MQTT client id and the message ids
//! (pure/identity.rs, pure/props.rs). Read from the postmaster's globals, which every backend
//! and the worker inherit, so all of them agree.

use crate::pure::{identity, props};
use pgrx_pg_sys as pg;
use std::sync::OnceLock;

/// System identifier, host name, data directory and port.
pub fn facts() -> (u64, Vec<u8>, Vec<u8>, i32) {
    let mut host = [0u8; 256];
    // SAFETY: gethostname writes at most host.len() - 1 bytes here; DataDir is set (and
    // NUL-terminated) before any backend or worker starts; the others are plain reads.
    unsafe {
        libc::gethostname(host.as_mut_ptr() as *mut std::ffi::c_char, host.len() - 1);
        let n = host.iter().position(|&b| b == 0).unwrap_or(host.len());
        (
            pg::GetSystemIdentifier(),
            host[..n].to_vec(),
            std::ffi::CStr::from_ptr(pg::DataDir).to_bytes().to_vec(),
            pg::PostPortNumber,
        )
    }
}

/// The fixed part of this server run's message ids (props.rs: `id_instance`).
pub fn message_id_instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let (sys, host, dir, port) = facts();
        // SAFETY: PgStartTime is set by the postmaster before it forks anyone.
        let started = unsafe { pg::PgStartTime };
        props::id_instance(sys, identity::instance_hash(&host, &dir, port), started)
    })
}

/// The message id for sequence number `seq` (0: none).
pub fn message_id(seq: u64) -> Option<String> {
    let mut buf = Vec::new();
    message_id_in(&mut buf, seq).map(|c| c.to_string_lossy().into_owned())
}

/// The message id for `seq` as a C string in `buf` (reused: the worker sends one per message
/// without allocating); `None` for 0.
pub fn message_id_in(buf: &mut Vec<u8>, seq: u64) -> Option<&std::ffi::CStr> {
    if seq == 0 {
        return None;
    }
    buf.clear();
    props::write_message_id(buf, message_id_instance(), seq);
    buf.push(0);
    std::ffi::CStr::from_bytes_with_nul(buf).ok()
}
