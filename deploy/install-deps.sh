#!/usr/bin/env bash
# Installs the Debian packages wacast needs to build, test and run its local
# stack. Safe to run again: it installs only what is missing.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config clang-format
  libhiredis-dev libevent-dev libpq-dev libjansson-dev libcurl4-openssl-dev
  libssl-dev libsodium-dev libprotobuf-c-dev protobuf-c-compiler
  libwebp-dev libturbojpeg0-dev libpng-dev libcmocka-dev
  imagemagick
  redis-server redis-tools postgresql postgresql-client
  podman mmdebstrap fuse-overlayfs stunnel4 openssl
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Node.js runs the fake provider servers of the tests (tests/fakes) and the
# BullMQ baseline of the bench; any node >= 18 with npm will do.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# kubectl renders the Kubernetes overlays (kubectl kustomize) in the deploy
# check. Some machines have it from Kubernetes' own packages; otherwise
# Debian's kubernetes-client provides it.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root (or with sudo) to install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's packages start system-wide servers; wacast runs its own in a
# temporary or local folder, so the system ones are left stopped.
for svc in redis-server postgresql; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
