//! Build script: the crate itself needs nothing generated (pgrx-pg-sys makes the PostgreSQL
//! bindings from `PGRX_PG_CONFIG_PATH`). It only makes cargo rebuild when the PostgreSQL we
//! build against changes, and links libmosquitto (and OpenSSL, mqtt/tls_name.rs) for `cargo test` binaries.
fn main() {
    println!("cargo:rerun-if-env-changed=PGRX_PG_CONFIG_PATH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-lib=mosquitto");
    println!("cargo:rustc-link-lib=ssl");
    println!("cargo:rustc-link-lib=crypto");
}
