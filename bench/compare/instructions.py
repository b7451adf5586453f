#!/usr/bin/env python3
"""Instructions one Tern service spends per message, counted by callgrind.

End-to-end rates on this host move by ±15 % between identical runs minutes
apart, which hides any change smaller than that. Instruction counts do not
move with the host, so this measures a service's own work per message:

  python3 bench/compare/instructions.py --service ingest
  python3 bench/compare/instructions.py --service deliverer --workload "2KB x1" --small 2000

It runs compare.py's tern1 setup twice with the service under
`valgrind --tool=callgrind` (TERN_WRAP_<SERVICE>), once with `--small`
messages and once with twice as many, and prints the difference of the two
totals divided by the difference in messages: the work per message, without
the service's start-up (loading certificates, opening RocksDB, ...).

Caveat: the service runs ~50 times slower under callgrind, so its batches
(EnqueueBatch items, group commits) are larger than in a real run, and work
that is paid per batch looks cheaper per message than it is. Compare figures
taken the same way, before and after a change.

Environment passes through to compare.py (TERN_BIN_DIR, TERN_BENCH_TERN_INI).
"""
import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SERVICES = ("queue", "ingest", "deliverer", "bouncer")


def total_instructions(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"summary:\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError(f"no summary line in {path}")


def run(service, workload, messages, base_messages, out_dir, tag):
    """One compare.py run of about `messages` with `service` under callgrind.

    Returns (messages sent, instructions): compare.py scales its workload's
    count, so the count is worked out the way it does it."""
    env = dict(os.environ)
    out = os.path.join(out_dir, f"{tag}.%p")
    env[f"TERN_WRAP_{service.upper()}"] = f"valgrind --tool=callgrind --callgrind-out-file={out}"
    scale = f"{messages / base_messages:.6f}"
    sent = max(100, int(base_messages * float(scale)))
    cmd = [sys.executable, os.path.join(HERE, "compare.py"), "--reps", "1", "--scale", scale,
           "--systems", "tern1", "--workloads", workload]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    files = glob.glob(os.path.join(out_dir, f"{tag}.*"))
    if len(files) != 1:
        raise RuntimeError(f"expected one callgrind file for {tag}, found {files}")
    return sent, total_instructions(files[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--service", choices=SERVICES, required=True)
    ap.add_argument("--workload", default="2KB x1", help="a compare.py workload name")
    ap.add_argument("--small", type=int, default=2000, help="messages in the first run (the second has twice as many)")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    import compare  # noqa: E402  (for the workload's message count only)
    if args.workload not in compare.WORKLOADS:
        ap.error(f"unknown workload {args.workload!r}; known: {', '.join(compare.WORKLOADS)}")
    base = compare.WORKLOADS[args.workload]["messages"]
    if args.small < 100:
        ap.error("--small must be at least 100 (compare.py's minimum)")
    with tempfile.TemporaryDirectory(prefix="tern-instr-") as out_dir:
        n_small, small = run(args.service, args.workload, args.small, base, out_dir, "small")
        n_large, large = run(args.service, args.workload, 2 * args.small, base, out_dir, "large")
    per_message = (large - small) / (n_large - n_small)
    print(f"{args.service}, {args.workload}: {small:,} instructions for {n_small:,} messages, "
          f"{large:,} for {n_large:,}: {per_message:,.0f} per message")


if __name__ == "__main__":
    main()
