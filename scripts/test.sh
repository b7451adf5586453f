#!/usr/bin/env bash
# README command 2: install dependencies, build, run every test (unit and
# whole-system). Ends with ctest's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
BUILD_DIR="${TERN_BUILD_DIR:-build}"
# Unit tests run two at a time; system tests are marked RUN_SERIAL.
ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 "$@"
