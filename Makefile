# pg_mqtt_pub — PGXS build of a Rust extension.
#
#   make                      build pg_mqtt_pub.so (runs cargo)
#   make install              install into the PostgreSQL that PG_CONFIG names
#   make clean                remove build products (keeps cargo's dependency cache)
#   make PG_CONFIG=/path/to/pg_config ...   build for another installation
#
# The Rust code is a static library linked whole into the shared object: nothing in C calls
# it, so --whole-archive keeps the exported SQL functions and _PG_init.

EXTENSION  = pg_mqtt_pub
MODULE_big = pg_mqtt_pub
OBJS       = src/pg_magic.o
DATA       = pg_mqtt_pub--1.0.sql pg_mqtt_pub--1.0--1.1.sql pg_mqtt_pub--1.1--1.2.sql pg_mqtt_pub--1.2--1.3.sql pg_mqtt_pub--1.3--1.4.sql pg_mqtt_pub--1.4--1.5.sql pg_mqtt_pub--1.5--1.6.sql pg_mqtt_pub--1.6--1.7.sql pg_mqtt_pub--1.7--1.8.sql
PGFILEDESC = "pg_mqtt_pub - publish MQTT messages from PostgreSQL"

PG_CONFIG ?= pg_config
CARGO     ?= cargo
PG_CONFIG_PATH := $(shell command -v $(PG_CONFIG))
PG_MAJOR  := $(shell $(PG_CONFIG) --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
RUST_LIB  := $(or $(CARGO_TARGET_DIR),target)/release/libpg_mqtt_pub.a

SHLIB_LINK = -Wl,--whole-archive $(RUST_LIB) -Wl,--no-whole-archive -lmosquitto -lssl -lcrypto -lpthread -ldl -lm

ifeq ($(filter $(PG_MAJOR),15 16 17 18),)
$(error pg_mqtt_pub needs PostgreSQL 15, 16, 17 or 18 (shmem_request_hook appeared in 15); $(PG_CONFIG) is PostgreSQL $(PG_MAJOR))
endif

# The C part is one macro; no LLVM bitcode (which would need a matching clang) is useful here.
override with_llvm = no

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Flags a newer compiler knew when the server was built (PyPI's PostgreSQL 18) but this gcc
# does not; they only add warnings.
override CFLAGS := $(filter-out -Wmissing-variable-declarations,$(CFLAGS))

$(shlib): $(RUST_LIB)

# The C part (the magic block) is compiled against one server's headers, and the same checkout
# builds for several servers (and inside the trixie root): always recompile it (it takes
# milliseconds), or a library built for 15 could claim to be for 17.
src/pg_magic.o: FORCE

# cargo decides what is up to date; always ask it.
$(RUST_LIB): FORCE
	PGRX_PG_CONFIG_PATH=$(PG_CONFIG_PATH) $(CARGO) build --release --locked \
	    --no-default-features --features pg$(PG_MAJOR)

clean: clean-rust
clean-rust:
	rm -f $(RUST_LIB)
	-$(CARGO) clean --release -p pg_mqtt_pub >/dev/null 2>&1

.PHONY: FORCE clean-rust
FORCE:
