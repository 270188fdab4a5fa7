#!/usr/bin/env bash
# Debian packages for the Android demo's host tests and its offline APK (idempotent):
#   bookworm: default-jdk-headless junit4 (host tests), aapt apksigner zipalign (APK);
#   bullseye: dalvik-exchange (dx) and libandroid-23-java (android.jar, API 23), which bookworm no
#   longer ships; they are architecture-independent and are unpacked (not installed) into
#   build/android/deps/ with a private apt configuration (the system's sources are untouched).
# Needs root for apt-get install; without it, prints what to install.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPS=${ANDROID_DEPS_DIR:-$ROOT/build/android/deps}
. "$ROOT/scripts/lib_apt.sh"
apt_ensure android_deps "install these Debian packages" default-jdk-headless junit4 aapt apksigner zipalign
if [ -f "$DEPS/usr/share/java/com.android.android-23.jar" ] && [ -f "$DEPS/usr/share/java/com.android.dx-10.0.0.jar" ]; then
  exit 0
fi
mkdir -p "$DEPS/apt/lists/partial" "$DEPS/apt/archives/partial" "$DEPS/debs"
cat > "$DEPS/apt/sources.list" <<SRC
deb http://deb.debian.org/debian bullseye main
SRC
APT=(-o Dir::Etc::sourcelist="$DEPS/apt/sources.list" -o Dir::Etc::sourceparts=- \
     -o Dir::State::Lists="$DEPS/apt/lists" -o Dir::Cache="$DEPS/apt" -o Debug::NoLocking=1 \
     -o APT::Get::List-Cleanup=0)
echo "android_deps: fetching dalvik-exchange and libandroid-23-java from bullseye into $DEPS"
apt-get "${APT[@]}" update -qq
(cd "$DEPS/debs" && apt-get "${APT[@]}" download dalvik-exchange libandroid-23-java)
for d in "$DEPS"/debs/*.deb; do dpkg-deb -x "$d" "$DEPS"; done
ls "$DEPS/usr/share/java/com.android.android-23.jar" "$DEPS/usr/share/java/com.android.dx-10.0.0.jar" >/dev/null
