/*
 * pg_magic.c — the module magic block, compiled by PGXS against the server's own headers.
 *
 * PG_MODULE_MAGIC is a macro whose shape changes between major versions (PostgreSQL 18 added
 * name and version fields), so it is emitted from C rather than re-declared in Rust.
 * Everything else is Rust (target/release/libpg_mqtt_pub.a).
 */
#include "postgres.h"
#include "fmgr.h"

PG_MODULE_MAGIC;
