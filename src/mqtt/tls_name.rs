//! TLS to one address of a node named by a host name: the certificate is verified against the
//! node's *name*, and the name is what the handshake announces (SNI).
//!
//! libmosquitto connects to the host it is given and checks the certificate against that same
//! text. The worker now resolves a node's name itself and hands libmosquitto one address at a
//! time (ADR-013: every address is tried, in order), so libmosquitto alone would check the
//! certificate against "10.0.0.7" and send that as SNI. Instead such a client gets a complete
//! OpenSSL context of ours (`MOSQ_OPT_SSL_CTX` without libmosquitto's defaults): the CA file (or
//! the system's store), the client certificate and key, the lowest TLS version, peer
//! verification, and verification parameters that carry the node's name, so OpenSSL itself
//! refuses a certificate that does not match it (`X509_V_ERR_HOSTNAME_MISMATCH` fails the
//! chain). libmosquitto's own verify callback is not used: in 2.0.11 it finds its client only
//! when libmosquitto made the context itself (its ex-data index is set up there), and checks
//! the host it connected to. An info callback puts the name in the SNI extension in place of
//! the address before the ClientHello is written.
//!
//! Nothing here touches PostgreSQL symbols; OpenSSL is the one libmosquitto links (libssl 3).

use libmosquitto_sys as m;
use std::ffi::{c_char, c_int, c_long, c_ulong, c_void, CStr, CString};

#[allow(non_camel_case_types)]
type SSL_CTX = c_void;
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
type SSL = c_void;

extern "C" {
    fn TLS_client_method() -> *const c_void;
    fn SSL_CTX_new(method: *const c_void) -> *mut SSL_CTX;
    fn SSL_CTX_free(ctx: *mut SSL_CTX);
    fn SSL_CTX_ctrl(ctx: *mut SSL_CTX, cmd: c_int, larg: c_long, parg: *mut c_void) -> c_long;
    fn SSL_CTX_load_verify_locations(ctx: *mut SSL_CTX, file: *const c_char, dir: *const c_char) -> c_int;
    fn SSL_CTX_set_default_verify_paths(ctx: *mut SSL_CTX) -> c_int;
    fn SSL_CTX_use_certificate_chain_file(ctx: *mut SSL_CTX, file: *const c_char) -> c_int;
    fn SSL_CTX_use_PrivateKey_file(ctx: *mut SSL_CTX, file: *const c_char, kind: c_int) -> c_int;
    fn SSL_CTX_check_private_key(ctx: *const SSL_CTX) -> c_int;
    fn SSL_CTX_set_verify(ctx: *mut SSL_CTX, mode: c_int, cb: *const c_void);
    fn SSL_CTX_get0_param(ctx: *mut SSL_CTX) -> *mut c_void;
    fn SSL_CTX_set_info_callback(ctx: *mut SSL_CTX, cb: Option<unsafe extern "C" fn(*const SSL, c_int, c_int)>);
    fn SSL_get0_param(ssl: *mut SSL) -> *mut c_void;
    fn SSL_ctrl(ssl: *mut SSL, cmd: c_int, larg: c_long, parg: *mut c_void) -> c_long;
    fn X509_VERIFY_PARAM_set1_host(param: *mut c_void, name: *const c_char, len: usize) -> c_int;
    fn X509_VERIFY_PARAM_get0_host(param: *mut c_void, idx: c_int) -> *mut c_char;
    fn ERR_clear_error();
    fn ERR_get_error() -> c_ulong;
    fn ERR_error_string_n(e: c_ulong, buf: *mut c_char, len: usize);
}

/// SSL_CB_HANDSHAKE_START (ssl.h).
const HANDSHAKE_START: c_int = 0x10;
/// The controls the macros SSL_set_tlsext_host_name, SSL_CTX_set_min_proto_version and
/// SSL_CTX_set_mode expand to, and their arguments (ssl.h, tls1.h).
const SET_TLSEXT_HOSTNAME: c_int = 55;
const NAMETYPE_HOST_NAME: c_long = 0;
const SET_MIN_PROTO_VERSION: c_int = 123;
const TLS1_2_VERSION: c_long = 0x0303;
const TLS1_3_VERSION: c_long = 0x0304;
const CTRL_MODE: c_int = 33;
const MODE_RELEASE_BUFFERS: c_long = 0x10;
const VERIFY_PEER: c_int = 1;
const FILETYPE_PEM: c_int = 1;

/// Before the ClientHello: announce the name the verification parameters carry (set below),
/// instead of the address libmosquitto set.
unsafe extern "C" fn announce_name(ssl: *const SSL, kind: c_int, _val: c_int) {
    if kind & HANDSHAKE_START == 0 {
        return;
    }
    // SAFETY: OpenSSL passes its live SSL object; the parameters and their host string belong to
    // it and stay valid during the call; SSL_ctrl copies the name.
    unsafe {
        let ssl = ssl as *mut SSL;
        let name = X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0);
        if !name.is_null() {
            SSL_ctrl(ssl, SET_TLSEXT_HOSTNAME, NAMETYPE_HOST_NAME, name as *mut c_void);
        }
    }
}

/// What OpenSSL says went wrong last (its error queue), after `what`.
fn openssl_error(what: String) -> String {
    let mut buf = [0 as c_char; 256];
    // SAFETY: reads this thread's error queue into a buffer of the size given.
    let e = unsafe { ERR_get_error() };
    if e == 0 {
        return what;
    }
    // SAFETY: as above; the buffer is NUL-terminated by OpenSSL.
    let text = unsafe {
        ERR_error_string_n(e, buf.as_mut_ptr(), buf.len());
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    };
    format!("{what} ({text})")
}

fn c(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("value contains a NUL byte: {s:?}"))
}

/// The TLS settings of a client that connects to an address of the node `name`.
pub(super) struct Tls<'a> {
    pub(super) name: &'a str,
    /// '' = the system's store.
    pub(super) ca_cert: &'a str,
    pub(super) client_cert: &'a str,
    pub(super) client_key: &'a str,
    /// "tlsv1.2" or "tlsv1.3": the lowest version accepted.
    pub(super) tls_version: &'a str,
}

/// Give `mosq` a TLS context of ours that verifies the broker's certificate against `t.name`
/// (and announces it), whatever address it connects to.
///
/// # Safety
/// `mosq` is a valid client, not connected yet.
pub(super) unsafe fn use_context(mosq: *mut m::mosquitto, t: &Tls<'_>) -> Result<(), String> {
    let (name, ca, cert, key) = (c(t.name)?, c(t.ca_cert)?, c(t.client_cert)?, c(t.client_key)?);
    // SAFETY: a context of ours, configured and then handed over: MOSQ_OPT_SSL_CTX takes its own
    // reference (SSL_CTX_up_ref; mosquitto_destroy frees it) and ours is released below, on
    // every path. OpenSSL copies every string it is given.
    unsafe {
        ERR_clear_error();
        let ctx = SSL_CTX_new(TLS_client_method());
        if ctx.is_null() {
            return Err(openssl_error("cannot create a TLS context".into()));
        }
        let r = configure(ctx, t, (&name, &ca, &cert, &key)).and_then(|()| {
            super::errors::check(m::mosquitto_void_option(mosq, m::mosq_opt_t::MOSQ_OPT_SSL_CTX, ctx), "TLS context")?;
            super::errors::check(
                m::mosquitto_int_option(mosq, m::mosq_opt_t::MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0),
                "TLS context",
            )
        });
        SSL_CTX_free(ctx);
        r
    }
}

/// # Safety
/// `ctx` is a fresh context of ours.
unsafe fn configure(ctx: *mut SSL_CTX, t: &Tls<'_>, s: (&CString, &CString, &CString, &CString)) -> Result<(), String> {
    let (name, ca, cert, key) = s;
    let min = if t.tls_version == "tlsv1.3" { TLS1_3_VERSION } else { TLS1_2_VERSION };
    // SAFETY: the caller's promise; plain OpenSSL calls on it with NUL-terminated strings.
    unsafe {
        if SSL_CTX_ctrl(ctx, SET_MIN_PROTO_VERSION, min, std::ptr::null_mut()) != 1 {
            return Err(openssl_error(format!("cannot require {}", t.tls_version)));
        }
        SSL_CTX_ctrl(ctx, CTRL_MODE, MODE_RELEASE_BUFFERS, std::ptr::null_mut());
        let trusted = if t.ca_cert.is_empty() {
            SSL_CTX_set_default_verify_paths(ctx)
        } else {
            SSL_CTX_load_verify_locations(ctx, ca.as_ptr(), std::ptr::null())
        };
        if trusted != 1 {
            return Err(openssl_error(format!("cannot load the CA certificates of ca_cert \"{}\"", t.ca_cert)));
        }
        if !t.client_cert.is_empty() {
            if SSL_CTX_use_certificate_chain_file(ctx, cert.as_ptr()) != 1 {
                return Err(openssl_error(format!("cannot load client_cert \"{}\"", t.client_cert)));
            }
            if SSL_CTX_use_PrivateKey_file(ctx, key.as_ptr(), FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1
            {
                return Err(openssl_error(format!("cannot use client_key \"{}\"", t.client_key)));
            }
        }
        SSL_CTX_set_verify(ctx, VERIFY_PEER, std::ptr::null());
        if X509_VERIFY_PARAM_set1_host(SSL_CTX_get0_param(ctx), name.as_ptr(), 0) != 1 {
            return Err(openssl_error(format!("cannot verify against the host name {:?}", t.name)));
        }
        SSL_CTX_set_info_callback(ctx, Some(announce_name));
    }
    Ok(())
}
