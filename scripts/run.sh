#!/usr/bin/env bash
# README command 1: install dependencies, build, and run the four Tern services
# on loopback with the default config (deploy/config) and the queue's data in
# var/queue. Ctrl-C stops all of them cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh tern-queue tern-ingest tern-deliverer tern-bouncer ternctl
BUILD_DIR="${TERN_BUILD_DIR:-build}"
CONFIG="${TERN_CONFIG:-deploy/config}"
mkdir -p var/log

pids=()
stop() {
  trap - INT TERM
  echo
  echo "Stopping Tern..."
  # Front to back: stop taking mail first, the queue last.
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "Stopped."
  exit 0
}
trap stop INT TERM

start() {
  local name=$1; shift
  "$BUILD_DIR/services/$name/tern-$name" --config "$CONFIG" "$@" >>"var/log/$name.log" 2>&1 &
  pids+=($!)
}
# The queue first: the others retry until it answers.
start queue
start deliverer
start bouncer
start ingest

listen=$(awk -F= '/^listen=/{print $2; exit}' "$CONFIG/smtp.ini")
queue=$(awk -F= '/^\[queue\]/{q=1} q&&/^listen=/{print $2; exit}' "$CONFIG/tern.ini")
cat <<INFO
Tern is running (config: $CONFIG, queue data: var/queue, logs: var/log/).
  Send mail to:     smtp://${listen:-127.0.0.1:2525}  (relaying allowed from 127.0.0.1 and ::1)
                    e.g. swaks --server ${listen:-127.0.0.1:2525} --from me@example.com --to you@example.org
  Watch the queue:  $BUILD_DIR/tools/ternctl/ternctl --queue ${queue:-127.0.0.1:7070} stats
  Follow the logs:  tail -f var/log/*.log
Press Ctrl-C to stop.
INFO
# Exit (and stop the rest) if any service dies.
wait -n "${pids[@]}" || true
echo "A Tern service exited; see var/log/. Stopping the others."
stop
