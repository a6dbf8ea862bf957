# The Makefile mirrors CI: `make test` is what .ci/run runs.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
MODE ?= shared

.PHONY: all build bench-run serve test soak fuzz bench lint doc clean capi install header c-test

all: build

build:
	$(CARGO) build --release

## The main job: every mode under a light and a saturating load, in one table.
bench-run: build
	./target/release/herd bench

## The demo server by hand (try: curl http://127.0.0.1:8080/).
serve: build
	./target/release/herd serve --mode $(MODE) --listen $(LISTEN)

## Every test: unit, integration and doc tests, then the C ABI's (c-test). The examples are
## built as programs first: tests/primary_api.rs runs them (they fork, so they cannot run
## inside the test process).
test:
	$(CARGO) build --examples
	$(CARGO) test --all-targets
	$(CARGO) test --doc
	$(CARGO) test -p herd-capi
	$(MAKE) c-test

## The C ABI (capi/): libherd.a, libherd.so (soname libherd.so.MAJOR), include/herd.h and
## herd.pc, staged in target/capi/; `make install PREFIX=...` puts them under PREFIX.
PREFIX ?= /usr/local
CAPI_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' capi/Cargo.toml | head -n 1)
CAPI_MAJOR := $(firstword $(subst ., ,$(CAPI_VERSION)))
CAPI_DIR := target/capi
# What a static libherd.a needs besides (`rustc --print native-static-libs`).
CAPI_PRIVATE_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
# herd.pc for a prefix: the staged one points at target/capi (PKG_CONFIG_PATH=target/capi/lib/
# pkgconfig builds against the tree), the installed one at PREFIX.
herd_pc = sed -e 's|@PREFIX@|$(1)|' -e 's|@VERSION@|$(CAPI_VERSION)|' -e 's|@PRIVATE_LIBS@|$(CAPI_PRIVATE_LIBS)|' capi/herd.pc.in
capi:
	$(CARGO) build --release -p herd-capi
	mkdir -p $(CAPI_DIR)/lib/pkgconfig $(CAPI_DIR)/include
	cp target/release/libherd.a $(CAPI_DIR)/lib/libherd.a
	cp target/release/libherd.so $(CAPI_DIR)/lib/libherd.so.$(CAPI_VERSION)
	ln -sf libherd.so.$(CAPI_VERSION) $(CAPI_DIR)/lib/libherd.so.$(CAPI_MAJOR)
	ln -sf libherd.so.$(CAPI_MAJOR) $(CAPI_DIR)/lib/libherd.so
	cp include/herd.h $(CAPI_DIR)/include/herd.h
	$(call herd_pc,$(abspath $(CAPI_DIR))) > $(CAPI_DIR)/lib/pkgconfig/herd.pc

install: capi
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 644 $(CAPI_DIR)/lib/libherd.a $(DESTDIR)$(PREFIX)/lib/libherd.a
	install -m 755 $(CAPI_DIR)/lib/libherd.so.$(CAPI_VERSION) $(DESTDIR)$(PREFIX)/lib/libherd.so.$(CAPI_VERSION)
	ln -sf libherd.so.$(CAPI_VERSION) $(DESTDIR)$(PREFIX)/lib/libherd.so.$(CAPI_MAJOR)
	ln -sf libherd.so.$(CAPI_MAJOR) $(DESTDIR)$(PREFIX)/lib/libherd.so
	install -m 644 include/herd.h $(DESTDIR)$(PREFIX)/include/herd.h
	$(call herd_pc,$(PREFIX)) > $(DESTDIR)$(PREFIX)/lib/pkgconfig/herd.pc
	chmod 644 $(DESTDIR)$(PREFIX)/lib/pkgconfig/herd.pc

## Regenerates include/herd.h from capi/src (cbindgen); `make lint` fails while it is stale.
header:
	HERD_UPDATE_HEADER=1 $(CARGO) test -p herd-capi --test header

## The C programs of c-tests/, with -Wall -Wextra -Werror, under AddressSanitizer and
## UndefinedBehaviorSanitizer (skipped, loudly, without a C compiler).
c-test: capi
	CAPI_DIR=$(CAPI_DIR) ./c-tests/run.sh

## The descriptor and memory soak: 200 000 churned connections through each mode (make test
## runs 5 000).
soak:
	HERD_SOAK_CONNECTIONS=200000 $(CARGO) test --release --test soak -- --nocapture

## Every fuzz target for FUZZ_SECONDS (default 60) each, on nightly with cargo-fuzz; new corpus
## entries and any crash land in fuzz/ to be checked in (make test replays them).
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./fuzz/run.sh

## The benchmark suite: channel micro-benchmarks and the matrix with repetitions.
bench:
	$(CARGO) bench

## Formatting, lints, and the dependency promise: without default features the library
## builds on libc and rustix alone, and with the `io-uring` feature on those and io-uring.
LIB_DEPS = $(CARGO) tree -e normal --depth 1 --prefix none --no-default-features
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings
	$(CARGO) clippy --lib --no-default-features -- -D warnings
	$(CARGO) clippy --lib --no-default-features --features io-uring -- -D warnings
	test "$$($(LIB_DEPS) | grep -v '^herd ' | cut -d' ' -f1 | sort -u | tr '\n' ' ')" = "libc rustix "
	test "$$($(LIB_DEPS) --features io-uring | grep -v '^herd ' | cut -d' ' -f1 | sort -u | tr '\n' ' ')" = "io-uring libc rustix "
	$(CARGO) clippy -p herd-capi --all-targets -- -D warnings
	$(CARGO) test -p herd-capi --test header

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --document-private-items

clean:
	$(CARGO) clean
