# Sourced by scripts/setup.sh: apt_install PKG... installs what is missing, waiting for the dpkg lock
# (another apt, e.g. unattended-upgrades, may hold it) instead of failing at once.
APT_LOCK_TIMEOUT_S=${APT_LOCK_TIMEOUT_S:-600}

apt_get() {
  # DPkg::Lock::Timeout: apt waits this long for the dpkg (and lists) lock, then fails naming it.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o "DPkg::Lock::Timeout=$APT_LOCK_TIMEOUT_S" "$@"
}

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    say "apt: installing ${missing[*]} (if another apt holds the dpkg lock, this waits up to ${APT_LOCK_TIMEOUT_S}s for it)"
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
