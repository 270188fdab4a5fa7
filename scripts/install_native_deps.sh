#!/usr/bin/env bash
# Debian packages for the native kernel's cross builds and their qemu tests, and a CJK font for
# annotated results with Chinese labels (idempotent).
# Needs root (CI and the dev machines run as root); without it, prints what to install.
set -euo pipefail
pkgs=(gcc make gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
      qemu-user-static clang lld libclang-rt-14-dev fonts-wqy-microhei)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install_native_deps: not root; install these Debian packages to build and test the cross targets: ${missing[*]}" >&2
  exit 0
fi
echo "install_native_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
