#!/usr/bin/env bash
# Builds the libFuzzer targets (lib/smtp/fuzz: SMTP command parser, the
# DATA/BDAT reader and the SMTP reply parser; lib/dsn/fuzz: the DSN report
# parser; lib/tlsrpt/fuzz: the TLSRPT record parser; lib/address/fuzz: the
# path parser and IDNA; lib/mime/fuzz: header reading and writing and
# quoted-printable; services/ingest/fuzz: the PROXY protocol parser;
# services/deliverer/fuzz: the MTA-STS record and policy parsers) with clang
# in their own build directory and runs each for TERN_FUZZ_SECONDS (default
# 60) as ctest tests labelled "fuzz". Exits non-zero on any finding.
# scripts/test.sh runs this; TERN_FUZZ_SECONDS=0 skips it.
#
# Only the fuzz targets are built (a few pure source files, no gRPC), so the
# clang build costs about a minute; the targets fuzz two at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_BASEDIR="$PWD"
FUZZ_DIR="${TERN_FUZZ_BUILD_DIR:-build-fuzz}"
SECONDS_EACH="${TERN_FUZZ_SECONDS:-60}"
if [ "$SECONDS_EACH" = "0" ]; then
  echo "fuzz: skipped (TERN_FUZZ_SECONDS=0)"
  exit 0
fi
if [ ! -f "$FUZZ_DIR/build.ninja" ]; then
  cmake -S . -B "$FUZZ_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ \
    -DTERN_FUZZ=ON -DTERN_BUILD_TESTS=OFF -DTERN_FUZZ_SECONDS="$SECONDS_EACH"
else
  cmake "$FUZZ_DIR" -DTERN_FUZZ_SECONDS="$SECONDS_EACH" >/dev/null
fi
ninja -C "$FUZZ_DIR" command_parser_fuzz data_phase_fuzz reply_parser_fuzz report_parser_fuzz tlsrpt_record_fuzz \
  address_fuzz mime_fuzz proxy_protocol_fuzz sts_policy_fuzz
ctest --test-dir "$FUZZ_DIR" -L fuzz --output-on-failure -j2
