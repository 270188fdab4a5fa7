#!/usr/bin/env bash
# A CJK font, so the demo's annotated photos carry readable Chinese product names (idempotent).
# Needs root (CI and the dev machines run as root); without it, prints what to install.
set -euo pipefail
. "$(dirname "$0")/lib_apt.sh"
apt_ensure install_demo_font "install this Debian package for Chinese labels on the demo's photos" fonts-wqy-microhei
