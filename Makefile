# Thin wrapper around CMake and the test scripts; see README.md.
BUILD   ?= build
PREFIX  ?= /usr/local
JOBS    ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build package check fuzz soak demo demo-synthetic install clean kernel kernel-debug kernel-debug-extra kernel-check kernel-stress kernel-stress-extra kernel-bench kernel-deb help

all: build

help:
	@echo "make build          configure and build (installs the missing build packages first, nothing else)"
	@echo "make check          run every test (unit, integration with the host KSM, kernel in QEMU); installs the test, workload and kernel packages"
	@echo "make fuzz           the libFuzzer targets, UPM_FUZZ_SECONDS (30) each; make check only replays their seeds"
	@echo "make soak           1000 container lifecycles through upm-runtime, upm-hook and upmd: nothing may leak"
	@echo "make demo           upm bench --quick: 4 containers of a torch image-recognition function, off vs upm; a table"
	@echo "make demo-synthetic several processes holding the same synthetic data, merged under upm; prints a table"
	@echo "make package        the Debian package upm_VERSION_ARCH.deb (in build-package/package/)"
	@echo "make install        install to \$$DESTDIR\$$PREFIX (PREFIX=$(PREFIX))"
	@echo "make kernel         build the test kernel (cached); prints the bzImage path last"
	@echo "make kernel-debug   the same with KASAN, lockdep and DEBUG_VM"
	@echo "make kernel-check   boot the test kernel in QEMU and run the kernel tests"
	@echo "make kernel-stress  stress run on the debug kernel"
	@echo "make kernel-stress-extra  check suite + stress (plain and with fault injection) + kmemleak scan on"
	@echo "                    the debug-extra kernel (no preemption, KCSAN, kmemleak); a cold build takes an hour"
	@echo "make kernel-bench   MADV_UPM vs ksmd benchmark in one guest boot"
	@echo "                    kernel*: KERNEL=6.1 (default) or KERNEL=6.12 (no MADV_UPM engine yet)"
	@echo "make kernel-deb     a Debian kernel package with MADV_UPM (Debian's config + CONFIG_UPM; hours)"

# `make build` and `make install` install the build group only: on a
# production node they must not bring a container engine or torch.  The
# targets that run tests or workloads install their groups themselves.
deps:
	@packaging/install-deps.sh --check build 2>/dev/null || packaging/install-deps.sh build

deps-%:
	@packaging/install-deps.sh --check $(subst +, ,$*) 2>/dev/null || packaging/install-deps.sh $(subst +, ,$*)

# ccache (installed with the build group) keeps compiled objects outside the
# repository, in /var/cache/upm/ccache like the test kernel's, so a clean
# clone rebuilds in seconds; UPM_NO_CCACHE=1 turns it off.
CCACHE := $(if $(UPM_NO_CCACHE),,$(shell command -v ccache 2>/dev/null))
export CCACHE_DIR ?= $(or $(UPM_CACHE_DIR),/var/cache/upm)/ccache
# Hits across checkouts at different paths (every CI run is a fresh clone):
# paths relative to the checkout, and the build directory not hashed.
export CCACHE_BASEDIR ?= $(CURDIR)
export CCACHE_NOHASHDIR ?= 1
LAUNCHER := $(if $(CCACHE),-DCMAKE_C_COMPILER_LAUNCHER=$(CCACHE) -DCMAKE_CXX_COMPILER_LAUNCHER=$(CCACHE))

# Configured every time: the install prefix is compiled in (policy and
# preload locations), so `make install PREFIX=...` must build for that prefix.
build: deps
	cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(LAUNCHER) $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# The Debian package (packaging/README.md): its own build directory,
# configured for /usr with libdir lib (the node configuration's defaults);
# the .deb is the last line printed.
PKG_BUILD ?= build-package
package: deps
	cmake -S . -B $(PKG_BUILD) -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_INSTALL_LIBDIR=lib -DUPM_PACKAGE=ON \
		-DUPM_TESTS=OFF $(LAUNCHER) $(CMAKE_FLAGS) >/dev/null
	cmake --build $(PKG_BUILD) -j $(JOBS)
	cd $(PKG_BUILD) && cpack -G DEB >/dev/null
	@ls -1 $(CURDIR)/$(PKG_BUILD)/package/upm_*.deb

# Two tests at a time: the resource locks of test/ keep every suite that
# switches the host's KSM, advises memory or boots a guest (host-ksm), and
# the CPU-heavy ones (cpu-heavy), one at a time; the unit tests, the fuzz
# build and replays and the suites that touch neither run beside them.
CHECK_JOBS ?= 2
# The package's tests (test_package.py, test_installer.py) install the
# package built by `make package`.
check: build package deps-test+workloads+kernel
	cd $(BUILD) && ctest --output-on-failure --timeout 3600 -j $(CHECK_JOBS)

# Timed fuzzing (test/fuzz/README.md): builds the clang targets in
# $(BUILD)/fuzz and runs each for UPM_FUZZ_SECONDS; `make check` only
# replays their seeds and reproducers (ctest fuzz-<name>).
UPM_FUZZ_SECONDS ?= 30
fuzz: build deps-test
	test/fuzz/run.sh all $(BUILD) $(UPM_FUZZ_SECONDS)

# The soak of test/integration/test_soak.py at full length (make check runs
# 200 cycles); pytest directly, not ctest, so that its timeout does not apply.
soak: build deps-test
	cd $(BUILD) && UPM_SOAK_CYCLES=$${UPM_SOAK_CYCLES:-1000} UPM_BUILD_DIR=$$PWD UPM_SOURCE_DIR=$(CURDIR) \
		/usr/bin/python3 -m pytest -v -rs -s -p no:cacheprovider $(CURDIR)/test/integration/test_soak.py

# `upm bench --quick` (docs/bench.md): real containers of a real function,
# without and with upm; the driver takes the tests' KSM lock and restores the
# host's KSM settings on exit, Ctrl-C or failure.
demo: build deps-test+workloads
	@mkdir -p $(BUILD)/demo
	$(BUILD)/bin/upm bench --quick --json $(BUILD)/demo/bench-quick.json --plot $(BUILD)/demo/bench-quick.png

demo-synthetic: build deps-test
	test/demo/demo.sh --build $(BUILD)

install: build
	DESTDIR=$(DESTDIR) cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD)

# The kernel line of the kernel-* targets: `make kernel KERNEL=6.12`
# (test/kernel/README.md, "Kernel lines").  Only from the make command line
# (or UPM_KERNEL_LINE): an unrelated KERNEL in the environment is ignored.
ifneq ($(origin KERNEL),command line)
KERNEL := $(or $(UPM_KERNEL_LINE),6.1)
endif

kernel: deps-kernel
	test/kernel/build.sh --line $(KERNEL)

kernel-debug: deps-kernel
	test/kernel/build.sh --line $(KERNEL) --debug

kernel-check:
	test/kernel/run.sh --line $(KERNEL)

kernel-stress:
	test/kernel/run.sh --line $(KERNEL) --debug --stress 180

kernel-debug-extra: deps-kernel
	test/kernel/build.sh --line $(KERNEL) --debug-extra

kernel-stress-extra: deps-kernel
	test/kernel/run.sh --line $(KERNEL) --debug-extra --stress 180

kernel-bench:
	test/kernel/run.sh --line $(KERNEL) --bench

# Not the test kernel: Debian's amd64 configuration plus CONFIG_UPM, as
# linux-image/-headers .debs for nodes (packaging/kernel-deb.sh; the newest
# line with the engine unless KERNEL= is given).
kernel-deb: deps-kernel-deb
	packaging/kernel-deb.sh $(if $(filter command line,$(origin KERNEL)),--line $(KERNEL))
