# The two commands of the README:
#   make demo  - install dependencies, build, make the tiny model and fine-tune it end to end
#   make test  - install dependencies, build, run the test suite (unit + interop against the real Python tools)
# Other targets: make cuda (the CUDA configuration: kernels and NCCL, in build-cuda/), make bench, make asan,
#   make fuzz (libFuzzer targets of every file reader under ASan + UBSan, in build-fuzz/; FUZZ_SECONDS per target).
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CMAKE := .venv/bin/cmake
CTEST := .venv/bin/ctest

.PHONY: all deps deps-interop configure build test demo cuda bench asan fuzz format check clean

all: build

deps:
	bash scripts/install-deps.sh

deps-interop:
	bash scripts/install-deps.sh --interop

configure: deps
	$(CMAKE) -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	$(CMAKE) --build $(BUILD) -j$(JOBS)

test: build deps-interop
	$(CTEST) --test-dir $(BUILD) --output-on-failure -j$(JOBS)

demo: build
	bash scripts/demo.sh $(BUILD)

# The CUDA configuration on its own (what CI compiles; `build` is the same where nvcc is found).
cuda:
	$(MAKE) build BUILD=build-cuda CMAKE_FLAGS="-DQLORA_CUDA=ON $(CMAKE_FLAGS)"

bench: build
	bash scripts/bench.sh $(BUILD)

# libFuzzer (clang++-14) on every reader of an untrusted file, each target FUZZ_SECONDS (default 600) in turn, with
# a summary table; FUZZ_TARGETS="jinja records" runs only those (scripts/fuzz.sh, fuzz/CMakeLists.txt).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) JOBS=$(JOBS) bash scripts/fuzz.sh $(FUZZ_TARGETS)

# AddressSanitizer + UndefinedBehaviorSanitizer build and test run: the host code (the CUDA kernels cannot run under
# ASan here and are left out), any UBSan finding fatal, leak detection off (LibTorch's process-lifetime singletons).
ASAN_ENV := ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
asan:
	$(ASAN_ENV) $(MAKE) test BUILD=build-asan \
	  CMAKE_FLAGS="-DQLORA_SANITIZE=ON -DQLORA_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo"

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')

# The house rules without a build: clang-format and the layout (both also run as ctest tests).
check:
	bash scripts/check-format.sh
	python3 scripts/check-layout.py

clean:
	rm -rf $(BUILD)
