# The Makefile mirrors CI: `make test` is what .ci/run runs.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
MODE ?= shared

.PHONY: all build bench-run serve test soak fuzz bench lint doc clean

all: build

build:
	$(CARGO) build --release

## The main job: every mode under a light and a saturating load, in one table.
bench-run: build
	./target/release/herd bench

## The demo server by hand (try: curl http://127.0.0.1:8080/).
serve: build
	./target/release/herd serve --mode $(MODE) --listen $(LISTEN)

## Every test: unit, integration and doc tests. The examples are built as programs first:
## tests/primary_api.rs runs them (they fork, so they cannot run inside the test process).
test:
	$(CARGO) build --examples
	$(CARGO) test --all-targets
	$(CARGO) test --doc

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

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --document-private-items

clean:
	$(CARGO) clean
