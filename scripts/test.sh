#!/usr/bin/env bash
# README command 2: install dependencies, build, run every test (unit and
# whole-system), plus 60 s of each libFuzzer target (scripts/fuzz.sh, a
# separate clang build; TERN_FUZZ_SECONDS=0 skips it). Ends with ctest's
# summary line; exits non-zero if either ctest run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
BUILD_DIR="${TERN_BUILD_DIR:-build}"
fuzz_status=0
scripts/fuzz.sh || fuzz_status=$?
# Unit tests run two at a time; system tests are marked RUN_SERIAL.
ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 "$@"
if [ "$fuzz_status" -ne 0 ]; then
  echo "FAILED: scripts/fuzz.sh (libFuzzer finding or fuzz build error, see above)" >&2
  exit "$fuzz_status"
fi
