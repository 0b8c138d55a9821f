# The two commands of the README:
#   make demo  - install dependencies, build, make the tiny model and fine-tune it end to end
#   make test  - install dependencies, build, run the test suite
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build test demo bench asan format clean

all: build

deps:
	bash scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD) -j$(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

demo: build
	bash scripts/demo.sh $(BUILD)

bench: build
	bash scripts/bench.sh $(BUILD)

# AddressSanitizer + UndefinedBehaviorSanitizer build and test run.
asan:
	$(MAKE) test BUILD=build-asan CMAKE_FLAGS="-DQLORA_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo"

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h')

clean:
	rm -rf $(BUILD)
