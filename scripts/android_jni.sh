#!/usr/bin/env bash
# The app's native libraries for arm64-v8a, armeabi-v7a and x86_64 WITHOUT the NDK (Debian
# clang/lld, freestanding; android_demo/README.md "Build offline"):
#   libeshamming_jni.so  the Hamming kernel (runtimes/native/eshamming.c) + its JNI glue;
#   libesengine.so       the LiteRT engine (android_demo/app/src/main/cpp/esengine.c): it needs
#                        only dlopen/dlsym/dlerror, linked against a stub libdl.so made here
#                        (the phone's own libdl.so is used at run time; the stub is not shipped).
# Output: build/android/jniLibs/<abi>/ (what the offline APK and the Gradle build package).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/android
JDK_HOME=${JDK_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}
RES=$(clang -print-resource-dir)
CPP=$ROOT/android_demo/app/src/main/cpp
mkdir -p "$OUT/stubinc"
: > "$OUT/stubinc/stdio.h"   # jni.h includes <stdio.h> but uses nothing from it
CFLAGS=(-O3 -std=c11 -Wall -Wextra -Werror -fPIC -fvisibility=hidden -ffreestanding -nostdinc -isystem "$RES/include"
        -isystem "$OUT/stubinc" -I "$JDK_HOME/include" -I "$JDK_HOME/include/linux" -I "$ROOT/runtimes/native"
        -fno-stack-protector)
LDFLAGS=(-nostdlib -fuse-ld=lld -shared -Wl,--hash-style=both -Wl,--no-undefined -Wl,-z,noexecstack)
for spec in "arm64-v8a aarch64-linux-android21" "armeabi-v7a armv7a-linux-androideabi21 -mfpu=neon -mfloat-abi=softfp" \
            "x86_64 x86_64-linux-android21"; do
  set -- $spec
  abi=$1 target=$2
  shift 2
  extra=("$@")
  dst=$OUT/jniLibs/$abi stub=$OUT/stub/$abi
  mkdir -p "$dst" "$stub"
  clang --target="$target" "${CFLAGS[@]}" "${extra[@]}" "${LDFLAGS[@]}" -Wl,-soname,libeshamming_jni.so \
    -o "$dst/libeshamming_jni.so.tmp" "$CPP/esjni_hamming.c" "$ROOT/runtimes/native/eshamming.c"
  mv "$dst/libeshamming_jni.so.tmp" "$dst/libeshamming_jni.so"
  printf '#define E __attribute__((visibility("default")))\nE void *dlopen(const char *f, int m) { (void)f; (void)m; return 0; }\nE void *dlsym(void *h, const char *s) { (void)h; (void)s; return 0; }\nE const char *dlerror(void) { return 0; }\n' > "$stub/dl.c"
  clang --target="$target" "${CFLAGS[@]}" "${extra[@]}" "${LDFLAGS[@]}" -Wl,-soname,libdl.so -o "$stub/libdl.so" "$stub/dl.c"
  clang --target="$target" "${CFLAGS[@]}" "${extra[@]}" "${LDFLAGS[@]}" -Wl,-soname,libesengine.so \
    -o "$dst/libesengine.so.tmp" "$CPP/esengine.c" -L "$stub" -ldl
  mv "$dst/libesengine.so.tmp" "$dst/libesengine.so"
done
echo "android_jni: $(ls "$OUT"/jniLibs/*/*.so | wc -l) libraries in $OUT/jniLibs"
