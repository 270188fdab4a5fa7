# Sourced by the dependency scripts: apt_ensure NAME WHAT PKG... installs the Debian packages
# among PKG... that are not installed yet (as root); without root it prints
# "NAME: not root; WHAT: <missing>" and exits the calling script with status 0.
apt_ensure() {
  local name=$1 what=$2 p
  shift 2
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "$name: not root; $what: ${missing[*]}" >&2
    exit 0
  fi
  echo "$name: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
