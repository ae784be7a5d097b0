//! Helpers for version-1 SQL-callable functions: argument access, varlena decoding, encoding.
//!
//! Every accessor that can fail raises a [`PgError`](crate::pg::guard::PgError), so it must run
//! inside [`guard`](crate::pg::guard::guard). Byte slices returned here point into memory allocated
//! in the function's memory context: valid for the duration of the call, no longer.

use crate::pg::guard::{Code, PgError};
use crate::pure::backend_local::BackendLocal;
use pgrx_pg_sys as pg;
use std::borrow::Cow;
use std::cell::Cell;

/// Declare `pg_finfo_<name>` so PostgreSQL calls `<name>` with the version-1 convention.
#[macro_export]
macro_rules! pg_finfo {
    ($($finfo:ident),* $(,)?) => {$(
        #[no_mangle]
        pub extern "C" fn $finfo() -> &'static pgrx_pg_sys::Pg_finfo_record {
            static V1: pgrx_pg_sys::Pg_finfo_record = pgrx_pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    )*};
}

/// The arguments of one call.
pub struct Args {
    fcinfo: pg::FunctionCallInfo,
}

impl Args {
    /// # Safety
    /// `fcinfo` is the pointer PostgreSQL passed to the function being executed.
    pub unsafe fn new(fcinfo: pg::FunctionCallInfo) -> Self {
        Args { fcinfo }
    }

    pub fn fcinfo(&self) -> pg::FunctionCallInfo {
        self.fcinfo
    }

    pub fn get(&self, i: usize) -> Option<pg::Datum> {
        // SAFETY: fcinfo is valid for the call; we only read args below nargs.
        unsafe {
            let f = &*self.fcinfo;
            if i >= f.nargs as usize {
                return None;
            }
            let a = &*f.args.as_ptr().add(i);
            if a.isnull {
                None
            } else {
                Some(a.value)
            }
        }
    }

    /// A non-NULL argument, or ERROR 22004 naming it.
    pub fn required(&self, i: usize, name: &str) -> pg::Datum {
        self.get(i).unwrap_or_else(|| {
            PgError::new(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{name} must not be NULL"))
                .hint(format!("Pass a value for the argument \"{name}\"."))
                .raise()
        })
    }

    pub fn text(&self, i: usize, name: &str) -> &[u8] {
        // SAFETY: the argument is declared text/bytea/json (any varlena) in the SQL script.
        unsafe { varlena_bytes(self.required(i, name)) }
    }

    /// The argument's bytes if it was passed and is not NULL (any varlena type).
    pub fn opt_bytes(&self, i: usize) -> Option<&[u8]> {
        // SAFETY: as `text`.
        self.get(i).map(|d| unsafe { varlena_bytes(d) })
    }

    pub fn i32(&self, i: usize, name: &str) -> i32 {
        self.required(i, name).value() as i32
    }

    pub fn bool(&self, i: usize, name: &str) -> bool {
        self.required(i, name).value() != 0
    }
}

/// The bytes of a varlena datum (detoasted if needed).
///
/// # Safety
/// `d` must be a varlena datum (text, bytea, json, ...).
pub unsafe fn varlena_bytes<'a>(d: pg::Datum) -> &'a [u8] {
    // SAFETY: detoasting returns a packed-or-plain in-memory varlena, which we decode with the
    // VARSIZE_ANY_EXHDR / VARDATA_ANY rules (little-endian layout).
    unsafe {
        let mut p = d.cast_mut_ptr::<u8>() as *const u8;
        // What pg_detoast_datum_packed tests, without the call for the usual in-line value:
        // only an external (1-byte header 0x01) or compressed (4-byte header, low bits 10)
        // datum needs detoasting.
        if *p == 0x01 || *p & 0x03 == 0x02 {
            p = pg::pg_detoast_datum_packed(d.cast_mut_ptr()) as *const u8;
        }
        if *p & 0x01 == 0x01 {
            let len = ((*p >> 1) & 0x7F) as usize;
            std::slice::from_raw_parts(p.add(1), len - 1)
        } else {
            let len = ((p as *const u32).read_unaligned() >> 2) as usize & 0x3FFF_FFFF;
            std::slice::from_raw_parts(p.add(4), len - 4)
        }
    }
}

#[cfg(target_endian = "big")]
compile_error!("varlena decoding in fmgr.rs assumes a little-endian platform");

/// Is the database encoding UTF-8? Asked once per process: a backend's database, and so its
/// encoding, never changes (every caller runs after the connection to its database).
fn database_is_utf8() -> bool {
    static UTF8: BackendLocal<Cell<Option<bool>>> = BackendLocal::new(Cell::new(None));
    UTF8.get().unwrap_or_else(|| {
        // SAFETY: plain call.
        let v = unsafe { pg::GetDatabaseEncoding() } == pg::pg_enc::PG_UTF8 as i32;
        UTF8.set(Some(v));
        v
    })
}

/// Convert text in the database encoding to UTF-8 (what MQTT requires for topics, and what
/// subscribers expect for text payloads). ASCII and UTF-8 databases cost nothing.
pub fn to_utf8(bytes: &[u8]) -> Cow<'_, [u8]> {
    // SAFETY: plain calls; pg_server_to_any raises ERROR on unconvertible input.
    unsafe {
        if database_is_utf8() || bytes.is_ascii() {
            return Cow::Borrowed(bytes);
        }
        let out = pg::pg_server_to_any(bytes.as_ptr() as *const _, bytes.len() as i32, pg::pg_enc::PG_UTF8 as i32);
        converted(bytes, out)
    }
}

/// Convert UTF-8 back to the database encoding (for text stored in tables).
pub fn from_utf8(bytes: &[u8]) -> Cow<'_, [u8]> {
    // SAFETY: plain calls; pg_any_to_server raises ERROR on unconvertible input.
    unsafe {
        if database_is_utf8() || bytes.is_ascii() {
            return Cow::Borrowed(bytes);
        }
        let out = pg::pg_any_to_server(bytes.as_ptr() as *const _, bytes.len() as i32, pg::pg_enc::PG_UTF8 as i32);
        converted(bytes, out)
    }
}

/// The result of `pg_server_to_any` / `pg_any_to_server`: when no conversion is needed (e.g. a
/// SQL_ASCII database) they return the *input pointer*, which is not NUL-terminated; otherwise a
/// palloc'd, NUL-terminated string.
///
/// # Safety
/// `out` is what one of those functions returned for `input`.
unsafe fn converted<'a>(input: &'a [u8], out: *mut std::ffi::c_char) -> Cow<'a, [u8]> {
    if std::ptr::eq(out as *const u8, input.as_ptr()) {
        return Cow::Borrowed(input);
    }
    // SAFETY: a converted string is palloc'd and NUL-terminated.
    Cow::Owned(unsafe { std::ffi::CStr::from_ptr(out) }.to_bytes().to_vec())
}

/// The dimensions and elements (NULL as `None`) of a `text[]` datum, in the current memory
/// context.
///
/// # Safety
/// `d` is a `text[]` datum.
pub unsafe fn text_elements<'a>(d: pg::Datum) -> (i32, Vec<Option<&'a [u8]>>) {
    // SAFETY: the caller's promise.
    let (dims, elems) = unsafe { text_array(d) };
    (dims.len() as i32, elems)
}

/// The dimensions (lengths) and elements (NULL as `None`, in storage order) of a `text[]`
/// datum, in the current memory context.
///
/// # Safety
/// `d` is a `text[]` datum.
pub unsafe fn text_array<'a>(d: pg::Datum) -> (Vec<i32>, Vec<Option<&'a [u8]>>) {
    // SAFETY: the caller's promise; deconstruct_array pallocs its outputs in the current context.
    unsafe {
        let arr = pg::pg_detoast_datum(d.cast_mut_ptr()) as *mut pg::ArrayType;
        let (mut e, mut n, mut count) = (std::ptr::null_mut(), std::ptr::null_mut(), 0i32);
        pg::deconstruct_array(arr, pg::TEXTOID, -1, false, pg::TYPALIGN_INT as _, &mut e, &mut n, &mut count);
        let (e, n) = if count == 0 {
            (&[][..], &[][..])
        } else {
            (std::slice::from_raw_parts(e, count as usize), std::slice::from_raw_parts(n, count as usize))
        };
        let elems = e.iter().zip(n).map(|(d, null)| (!*null).then(|| varlena_bytes(*d))).collect();
        // ARR_DIMS: the dimension lengths follow the fixed header
        let dims = std::slice::from_raw_parts(
            (arr as *const u8).add(std::mem::size_of::<pg::ArrayType>()) as *const i32,
            (*arr).ndim as usize,
        );
        (dims.to_vec(), elems)
    }
}

/// Append one row to a materialize-mode set-returning function's result (after
/// `InitMaterializedSRF`): `values[i]`, NULL where `nulls[i]`.
///
/// # Safety
/// `rsinfo` is the call's `ReturnSetInfo`, set up for materialize mode; the arrays match its
/// tuple descriptor.
pub unsafe fn put_row(rsinfo: *mut pg::ReturnSetInfo, values: &mut [pg::Datum], nulls: &mut [bool]) {
    // SAFETY: the caller's promise.
    unsafe {
        pg::tuplestore_putvalues((*rsinfo).setResult, (*rsinfo).setDesc, values.as_mut_ptr(), nulls.as_mut_ptr())
    };
}

/// A text datum (palloc'd in the current memory context) holding `s`.
pub fn text_datum(s: &str) -> pg::Datum {
    // SAFETY: cstring_to_text_with_len copies `len` bytes.
    unsafe { pg::Datum::from(pg::cstring_to_text_with_len(s.as_ptr() as *const _, s.len() as i32)) }
}
