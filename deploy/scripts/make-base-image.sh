#!/usr/bin/env bash
# Makes the base image localhost/debian:bookworm that deploy/Dockerfile builds
# FROM. Uses the registry's debian:bookworm-slim when a registry answers;
# otherwise (no registry reachable, as on our CI machines) builds a minimal
# Debian 12 root with debootstrap from the machine's configured Debian mirror
# and imports it. Does nothing when the image already exists (unless --force).
set -euo pipefail
IMAGE=localhost/debian:bookworm
ENGINE=${ENGINE:-podman}

if [ "${1:-}" != "--force" ] && $ENGINE image exists "$IMAGE" 2>/dev/null; then
  echo "$IMAGE exists"
  exit 0
fi

if timeout 20 $ENGINE pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
  $ENGINE tag docker.io/library/debian:bookworm-slim "$IMAGE"
  echo "$IMAGE from the registry's debian:bookworm-slim"
  exit 0
fi

# The mirror the host's apt uses (deb822 sources first, then sources.list).
mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/tern-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
# Give the image the host's sources (bookworm, -updates, -security) so runtime
# libraries match what the host builds against.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  rm -f "$root/etc/apt/sources.list"
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | $ENGINE import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "$IMAGE built with debootstrap from $mirror"
