#!/usr/bin/env bash
# Makes a container engine usable for docker-compose on this kind of machine
# and prints the DOCKER_HOST to use. Source it or eval its output:
#   eval "$(deploy/scripts/container-engine.sh)"
#
# If a Docker engine already answers, it is used as is. Otherwise rootful
# podman serves the Docker API on a unix socket. Three workarounds are needed
# on machines like ours (no systemd, cgroup v1 hybrid, no CAP_SYS_RESOURCE),
# found and explained in shared/reference/toolchain.md §3:
#   1. default ulimits within the hard limits (podman's defaults exceed them),
#   2. runc instead of crun (crun refuses hybrid cgroups),
#   3. cgroupfs as cgroup manager (no systemd).
# Exit status 3 means no engine can run here (the caller may skip).
set -euo pipefail

if docker info >/dev/null 2>&1; then
  echo "export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}"
  exit 0
fi

if ! command -v podman >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "no container engine and not root to install podman" >&2
    exit 3
  fi
  env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
    podman runc netavark aardvark-dns catatonit iptables uidmap slirp4netns fuse-overlayfs debootstrap \
    docker-compose >&2 || exit 3
fi

conf=/etc/containers/containers.conf
if [ ! -f "$conf" ] || ! grep -q 'tern: ulimits' "$conf"; then
  mkdir -p /etc/containers
  hard_nofile=$(ulimit -Hn)
  cat > "$conf" <<CONF
# tern: ulimits within this machine's hard limits; runc; cgroupfs (see deploy/scripts/container-engine.sh)
[containers]
default_ulimits = ["nofile=${hard_nofile}:${hard_nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
fi

sock=/run/podman/podman.sock
if ! curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
  mkdir -p /run/podman
  # From / : the service outlives this script, and conmon fails every later
  # container start ("write child: broken pipe") once its working directory
  # is deleted, e.g. a CI checkout removed between two runs.
  nohup env -C / podman system service --time=0 "unix://$sock" </dev/null >/var/log/tern-podman-service.log 2>&1 &
  echo $! > /run/podman/tern-service.pid
  for _ in $(seq 1 100); do
    curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
if ! podman run --rm --network none localhost/debian:bookworm true >/dev/null 2>&1 && \
   ! podman info >/dev/null 2>&1; then
  echo "podman cannot run containers here" >&2
  exit 3
fi
echo "export DOCKER_HOST=unix://$sock"
