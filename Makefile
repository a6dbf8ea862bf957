# The Makefile mirrors CI: `make test` is what .ci/run runs.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
MODE ?= shared

.PHONY: all build serve test lint doc clean

all: build

build:
	$(CARGO) build --release

## The main job: build and run the demo server (try: curl http://127.0.0.1:8080/).
serve: build
	./target/release/herd serve --mode $(MODE) --listen $(LISTEN)

## Every test: unit, integration and doc tests.
test:
	$(CARGO) test --all-targets
	$(CARGO) test --doc

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

clean:
	$(CARGO) clean
