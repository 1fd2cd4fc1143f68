# Thin front over CMake. `make check` and `make run` work on a fresh Debian
# 12 machine: they install missing packages first (scripts/deps.sh, as root).
BUILD ?= build
JOBS ?= $(shell nproc)
UPSTREAM ?=
ARGS ?=

.PHONY: all deps build check unit run demo bench bench-fleet bench-batch fuzz \
	format clean install

all: build

deps:
	@scripts/deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

# Everything: unit + integration tests, ASan/UBSan and TSan builds, fuzz smoke.
check: deps
	@scripts/check.sh

# Quick loop while developing: the normal build's tests only.
unit: build
	@ctest --test-dir $(BUILD) --output-on-failure -j$(JOBS)

# Starts coalesced in the foreground: in front of UPSTREAM=URL, or of the
# bundled demo upstream (slow, counting) when UPSTREAM is not given.
run: build
	@scripts/run.sh "$(UPSTREAM)" $(ARGS)

# Starts the demo upstream and coalesced, fires a herd, prints the stats.
demo: build
	@scripts/demo.sh

bench: build
	@bench/run.sh

# Fleet mode: a herd over 1-3 instances with and without Redis, and peers.
bench-fleet: build
	@bench/fleet.sh

# Batching off and on for N distinct ids.
bench-batch: build
	@bench/batch.sh

fuzz: deps
	@FUZZ_SECONDS=$${FUZZ_SECONDS:-300} scripts/fuzz.sh

format:
	@clang-format -i include/*.h src/*.c src/*.h daemon/*.c daemon/*.h \
	  tests/unit/*.c tests/unit/*.h tests/unit/daemon/*.c tests/upstream/*.c

install: build
	@cmake --install $(BUILD)

clean:
	rm -rf build build-asan build-tsan build-fuzz
