#!/usr/bin/env bash
# The container image, built and exercised here (ctest label deploy): builds
# the root Dockerfile with podman (base image debian:bookworm-slim made from
# Debian's archive with mmdebstrap when it is missing, cached under the build
# folder), checks its metadata (non-root user, ENTRYPOINT, HEALTHCHECK), then
# mounts it and runs its own binaries through its ENTRYPOINT as its own user
# (chroot --userspec) against real Redis and PostgreSQL on loopback:
# tests/deploy/test_image_run.c (one-shot migrate, HEALTHCHECK, SIGTERM) and
# the spine scenario (test_spine). This machine's OCI runtime cannot start
# containers, so chroot stands in for it; what runs is the image's own files.
# Usage: image_test.sh BUILD_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:?usage: image_test.sh BUILD_DIR}
image=$(sed -n 's/^image=//p' "$root/deploy/image/NAME")
base=docker.io/library/debian:bookworm-slim
cache=$build/deploy-image
mkdir -p "$cache"
t0=$(date +%s)

if [ "$(id -u)" -ne 0 ]; then
  echo "image_test: needs root (podman build, chroot); skipped" >&2
  exit 77
fi
for tool in podman mmdebstrap chroot; do
  command -v "$tool" >/dev/null || { echo "image_test: $tool missing (deploy/install-deps.sh)" >&2; exit 1; }
done

if ! podman image exists "$base"; then
  if [ ! -s "$cache/rootfs.tar" ]; then
    echo "image_test: making $base from Debian's archive (mmdebstrap)" >&2
    # As Debian's slim image does: no manuals, locales or docs, no apt lists.
    mmdebstrap --variant=minbase --format=tar \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      bookworm "$cache/rootfs.tar.part" >"$cache/mmdebstrap.log" 2>&1 \
      || { tail -20 "$cache/mmdebstrap.log" >&2; exit 1; }
    mv "$cache/rootfs.tar.part" "$cache/rootfs.tar"
  fi
  podman import "$cache/rootfs.tar" "$base" >/dev/null
fi
t1=$(date +%s)

podman build --isolation=chroot --network=host --pull=never --format=docker -t "$image" "$root" \
  >"$cache/build.log" 2>&1 || { tail -30 "$cache/build.log" >&2; exit 1; }
t2=$(date +%s)

inspect() { podman image inspect --format "$1" "$image"; }
user=$(inspect '{{.Config.User}}')
entrypoint=$(inspect '{{range .Config.Entrypoint}}{{.}} {{end}}')
health=$(inspect '{{if .Config.Healthcheck}}{{range .Config.Healthcheck.Test}}{{.}} {{end}}{{end}}')
size=$(inspect '{{.Size}}')
fail() { echo "image_test: $*" >&2; exit 1; }
case "$user" in "" | 0 | 0:* | root | root:*) fail "the image runs as root (User='$user')" ;; esac
[ -n "$entrypoint" ] || fail "the image has no ENTRYPOINT"
# The HEALTHCHECK must be the entrypoint's healthcheck role, the command
# test_image_run runs against a live daemon.
[ "$health" = "CMD ${entrypoint}healthcheck " ] \
  || fail "HEALTHCHECK is '$health', not 'CMD ${entrypoint}healthcheck' (built without --format=docker?)"
echo "image_test: $image: $((size / 1000000)) MB, user $user, entrypoint '$entrypoint', healthcheck '$health'" >&2

mnt=$(podman image mount "$image")
trap 'podman image unmount "$image" >/dev/null 2>&1 || true' EXIT
# The user as numbers (chroot --userspec needs them when the host lacks the name).
uid=${user%%:*}
gid=${user#*:}
[ "$gid" != "$user" ] || gid=$uid
case "$uid$gid" in *[!0-9]*) fail "USER must be numeric uid:gid (got '$user')" ;; esac
export WACAST_TEST_LAUNCHER="/usr/sbin/chroot --userspec=$uid:$gid $mnt ${entrypoint% }"
# --help of every role runs from the image as a first smoke test.
for role in scheduler dispatcher sender; do
  $WACAST_TEST_LAUNCHER "$role" --help >"$cache/help-$role.txt" \
    || fail "wacast $role --help failed from the image"
done
$WACAST_TEST_LAUNCHER bogus 2>/dev/null && fail "an unknown role was accepted"

# Every start command the deploy files give a daemon (compose, Deployments,
# Railway; listed by the deploy check) starts that daemon from the image.
bash "$root/tests/deploy/check.sh" "$build/.." >"$cache/check.log" 2>&1 || true
[ -s "$build/../deploy-check/start-commands.txt" ] || { tail -20 "$cache/check.log" >&2; fail "no start commands from tests/deploy/check.sh"; }
n=0
while read -r role where cmd; do
  [ -n "$role" ] || continue
  # A start command runs as is, without a shell (Railway): split on spaces only.
  # shellcheck disable=SC2086
  help=$(/usr/sbin/chroot --userspec="$uid:$gid" "$mnt" $cmd --help) \
    || fail "$where: '$cmd' does not run from the image"
  usage=${help%%$'\n'*}
  [ "$usage" = "usage: /usr/local/bin/wacast-$role [--help]" ] \
    || fail "$where: '$cmd' started '$usage', not the $role"
  n=$((n + 1))
done <"$build/../deploy-check/start-commands.txt"
[ "$n" -ge 9 ] || fail "only $n start commands checked"
echo "image_test: $n start commands (compose, Kubernetes, Railway) start their daemon from the image" >&2

"$build/test_image_run"
"$build/test_spine"
t3=$(date +%s)
echo "image_test: base image $((t1 - t0)) s, podman build $((t2 - t1)) s, runs $((t3 - t2)) s; image $size bytes" >&2
