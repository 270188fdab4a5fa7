#!/usr/bin/env bash
# Debian packages for the native kernel's cross builds and their qemu tests, and a CJK font for
# annotated results with Chinese labels (idempotent).
# Needs root (CI and the dev machines run as root); without it, prints what to install.
set -euo pipefail
. "$(dirname "$0")/lib_apt.sh"
apt_ensure install_native_deps "install these Debian packages to build and test the cross targets" \
  gcc make gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross \
  qemu-user-static clang lld libclang-rt-14-dev fonts-wqy-microhei
