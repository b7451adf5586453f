#!/usr/bin/env bash
# Installs everything Tern needs to build, run and test, from Debian 12's own
# packages only. Does nothing when every package is already installed.
set -euo pipefail

PACKAGES=(
  # toolchain
  g++ cmake ninja-build ccache pkg-config git
  # libraries (see README "Dependencies" for why each one)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libssl-dev libc-ares-dev
  librocksdb-dev libabsl-dev libgtest-dev libgmock-dev libasio-dev libinih-dev libspdlog-dev
  libcli11-dev libidn2-dev libjemalloc-dev zlib1g-dev
  # tests: real DNS server, real SMTP client, Python for the whole-system harness
  dnsmasq-base swaks libnet-ssleay-perl python3 openssl
  # tests: Knot DNS signs the test zones for a real DNSSEC chain (tests/fakes/dnssec_dns.py)
  knot
  # tests: RocksDB's ldb, to damage a queue record on disk as a bad disk or bug would
  rocksdb-tools
  # tests: a user's gRPC Hooks server written in Python (tests/fakes/hook_server.py)
  python3-grpcio python3-protobuf
  # tests: deploy/k8s manifests read as YAML
  python3-yaml
  # tests: dkimpy verifies the deliverer's DKIM signatures (tests/system/dkim_test.py)
  python3-dkim
  # tests: HAProxy in front of ingest, sending the PROXY protocol v1 and v2
  haproxy
  # tests: Postfix as the receiving MTA (and smtp-sink for bench/), Cyrus SASL's saslpasswd2 for its AUTH
  postfix sasl2-bin
  # fuzz tests (scripts/fuzz.sh): clang with the libFuzzer/ASan runtimes (only a
  # Recommends of clang, so named here) and llvm-symbolizer for readable reports
  clang libclang-rt-dev llvm
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "Installing: ${missing[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
# Debian starts the knot and haproxy services on install; the tests run
# their own knotd and haproxy on free ports, so a package we just installed
# is not left running (knot would serve port 53).
for service in knot haproxy; do
  if [[ " ${missing[*]} " == *" $service "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now "$service.service" >/dev/null 2>&1 || true
  fi
done
