#!/usr/bin/env bash
# build/android/edge-shitu-demo.apk without Google's servers (make android-apk): Debian's aapt,
# javac --release 8, dx (bullseye's dalvik-exchange), zipalign, apksigner with a debug key made
# here (build/android/apk/debug.keystore, never committed). The app, the Java core and the
# native libraries for arm64-v8a, armeabi-v7a and x86_64; NOT LiteRT (only Google's Maven has it
# for Android): this APK says so on screen. The Gradle build (android_demo/README.md) includes it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/android
W=$OUT/apk
DEPS=${ANDROID_DEPS_DIR:-$OUT/deps}
ANDROID_JAR=$DEPS/usr/share/java/com.android.android-23.jar
DX_JAR=$DEPS/usr/share/java/com.android.dx-10.0.0.jar
for f in "$ANDROID_JAR" "$DX_JAR"; do
  [ -f "$f" ] || { echo "android_apk: $f missing: run 'make android-deps'" >&2; exit 3; }
done
for t in aapt zipalign apksigner keytool javac; do
  command -v "$t" >/dev/null || { echo "android_apk: $t not found: run 'make android-deps'" >&2; exit 3; }
done
APP=$ROOT/android_demo/app/src/main
bash "$ROOT/scripts/android_jni.sh" >/dev/null
mkdir -p "$W"
rm -rf "$W/gen" "$W/classes" "$W/stage" "$W"/*.apk "$W/classes.dex"
mkdir -p "$W/gen" "$W/classes" "$W/stage"
# the Gradle manifest has no package / SDK levels (AGP sets them): add them for aapt
sed -e 's#<manifest xmlns:android="http://schemas.android.com/apk/res/android"#<manifest xmlns:android="http://schemas.android.com/apk/res/android"\n    package="com.edgeshitu.demo"#' \
    -e 's#^    <application#    <uses-sdk android:minSdkVersion="23" android:targetSdkVersion="23" />\n\n    <application#' \
    "$APP/AndroidManifest.xml" > "$W/AndroidManifest.xml"
aapt package -f -m -J "$W/gen" -M "$W/AndroidManifest.xml" -S "$APP/res" -I "$ANDROID_JAR"
# against API 23's own class library (not the JDK's): a Java API the phone lacks fails here
javac -source 8 -target 8 -Xlint:-options -encoding UTF-8 -bootclasspath "$ANDROID_JAR" -d "$W/classes" \
  $(find "$APP/java" "$ROOT/android_demo/core/src/main/java" "$W/gen" -name '*.java')
java -cp "$DX_JAR" com.android.dx.command.Main --dex --min-sdk-version=23 --output="$W/stage/classes.dex" "$W/classes"
aapt package -f -M "$W/AndroidManifest.xml" -S "$APP/res" -I "$ANDROID_JAR" -F "$W/unsigned.apk"
cp -r "$OUT/jniLibs" "$W/stage/lib"
(cd "$W/stage" && aapt add -v "$W/unsigned.apk" classes.dex $(find lib -name '*.so' | sort) >/dev/null)
zipalign -f -p 4 "$W/unsigned.apk" "$W/aligned.apk"
if [ ! -f "$W/debug.keystore" ]; then
  keytool -genkeypair -keystore "$W/debug.keystore" -storepass android -keypass android -alias androiddebugkey \
    -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=Android Debug,O=edge-shitu,C=US" >/dev/null 2>&1
fi
apksigner sign --ks "$W/debug.keystore" --ks-pass pass:android --key-pass pass:android --out "$W/signed.apk" "$W/aligned.apk"
apksigner verify "$W/signed.apk"
mv "$W/signed.apk" "$OUT/edge-shitu-demo.apk"
echo "android_apk: $OUT/edge-shitu-demo.apk ($(stat -c %s "$OUT/edge-shitu-demo.apk") bytes)"
