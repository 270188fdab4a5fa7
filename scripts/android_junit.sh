#!/usr/bin/env bash
# JUnit 4 tests of the Android demo's Java core on the host JVM (make android-junit).
# ANDROID_GOLDEN: a folder written by tests/golden_files.py's write_golden (the golden tests skip
# without it). Uses Debian's junit4 + hamcrest jars (make android-deps).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/android
JUNIT=${JUNIT_JAR:-/usr/share/java/junit4.jar}
HAMCREST=${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}
[ -f "$JUNIT" ] || { echo "android_junit: $JUNIT not found: run 'make android-deps' (Debian package junit4)" >&2; exit 3; }
rm -rf "$OUT/classes-test" && mkdir -p "$OUT/classes-test"
CP="$OUT/edge-shitu-android.jar:$JUNIT:$HAMCREST"
javac --release 8 -Xlint:-options -encoding UTF-8 -cp "$CP" -d "$OUT/classes-test" \
  $(find "$ROOT/android_demo/core/src/test/java" -name '*.java')
classes=$(cd "$OUT/classes-test" && find . -name '*Test.class' | sed 's#^\./##; s#\.class$##; s#/#.#g' | sort)
exec java -Dgolden.dir="${ANDROID_GOLDEN:-}" -Dfuzz.dir="${ANDROID_FUZZ:-}" -Djni.hamming="${JNI_HAMMING:-$OUT/host/libeshamming_jni.so}" -Djni.required="${JNI_REQUIRED:-}" \
  -cp "$OUT/classes-test:$CP" org.junit.runner.JUnitCore $classes
