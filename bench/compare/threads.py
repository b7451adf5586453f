#!/usr/bin/env python3
"""CPU time and context switches per message, for each thread, during a tern1 run.

End-to-end rates on this host move by about 10 % between identical runs, so
a change worth a few per cent cannot be seen in them. Per-thread counters
over a fixed window of a run move much less. This script starts one
compare.py run of tern1 with the queue's metrics on, and waits until 2,000
messages are queued. Then it reads every thread of Tern's services, of
smtp-source and of smtp-sink (/proc/PID/task/TID: CPU ticks and voluntary
and involuntary switches) at the start and the end of a window, and divides
by the number of messages the queue accepted in between.

    python3 bench/compare/threads.py [--seconds 4] [--scale 3] [--workload "2KB x1"]

TERN_BIN_DIR picks the build, as for compare.py.
"""

import argparse
import collections
import os
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CLK = os.sysconf("SC_CLK_TCK")
METRICS_PORT = 19090


def queue_metrics():
    """The queue's counters: {series (name with labels): value}, or {} while it is not up."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=1).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("tern_queue_") and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            try:
                out[series] = float(value)
            except ValueError:
                pass
    return out


def queued(metrics=None):
    return (metrics if metrics is not None else queue_metrics()).get("tern_queue_enqueued_total")


# Counters shown per message beside the threads: what each message costs the
# queue in RPCs and in synced writes.
PER_MESSAGE = ("tern_queue_rpc_calls_total", "tern_queue_rpc_items_total", "tern_queue_group_commits_total",
               "tern_queue_group_commits_led_total", "tern_queue_wal_syncs_total",
               "tern_queue_group_commit_ops_total")


def watched(comm):
    return comm.startswith("tern-") or comm in ("smtp-source", "smtp-sink")


def snapshot():
    """(process, thread name, tid) -> (voluntary, involuntary, CPU ticks)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            if not watched(comm):
                continue
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}"
            try:
                with open(f"{base}/comm") as f:
                    name = f.read().strip()
                with open(f"{base}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                with open(f"{base}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the thread ended between listing and reading
            out[(comm, name, tid)] = (int(status["voluntary_ctxt_switches"]),
                                      int(status["nonvoluntary_ctxt_switches"]),
                                      int(stat[11]) + int(stat[12]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0, help="length of the measured window")
    ap.add_argument("--scale", type=float, default=3.0, help="compare.py --scale (3: 30,000 messages of 2 KB)")
    ap.add_argument("--workload", default="2KB x1")
    args = ap.parse_args()

    env = dict(os.environ, TERN_BENCH_TERN_INI=f"[queue]\\nmetrics_listen=127.0.0.1:{METRICS_PORT}")
    run = subprocess.Popen([sys.executable, os.path.join(HERE, "compare.py"), "--reps", "1", "--scale",
                            str(args.scale), "--systems", "tern1", "--workloads", args.workload],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while (queued() or 0) < 2000:
            if run.poll() is not None or time.time() > deadline:
                # Stop it first: reading the output of a run that is still
                # going would wait for its end.
                run.kill()
                sys.exit("the run ended or stalled before 2,000 messages were queued:\n" + run.communicate()[0])
            time.sleep(0.05)
        before, m0 = snapshot(), queue_metrics()
        time.sleep(args.seconds)
        after, m1 = snapshot(), queue_metrics()
        q0, q1 = queued(m0), queued(m1)
        out, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    messages = (q1 or 0) - (q0 or 0)
    if messages <= 0:
        sys.exit("no messages were queued in the window; make --scale larger")

    per = collections.defaultdict(lambda: [0, 0, 0])
    for key, now in after.items():
        if key in before:
            row = per[(key[0], key[1])]
            for i in range(3):
                row[i] += now[i] - before[key][i]
    print(f"{messages:.0f} messages queued in {args.seconds:g} s")
    print(f"{'process':16} {'thread':18} {'voluntary/msg':>14} {'preempted/msg':>14} {'CPU ms/msg':>11}")
    totals = {"tern": [0, 0, 0], "all": [0, 0, 0]}
    for (comm, name), (vol, invol, ticks) in sorted(per.items(), key=lambda kv: -kv[1][2]):
        for group in ("all", "tern") if comm.startswith("tern-") else ("all",):
            for i, v in enumerate((vol, invol, ticks)):
                totals[group][i] += v
        if max(vol, invol) / messages >= 0.005 or ticks / CLK * 1000 / messages >= 0.0005:  # hide idle threads
            print(f"{comm:16} {name:18} {vol / messages:14.2f} {invol / messages:14.2f} "
                  f"{ticks / CLK * 1000 / messages:11.3f}")
    for group, (vol, invol, ticks) in totals.items():
        print(f"{group.upper():35} {vol / messages:14.2f} {invol / messages:14.2f} "
              f"{ticks / CLK * 1000 / messages:11.3f}")
    print(f"{'queue counter':55} {'per message':>11}")
    for series in sorted(m1):
        if series.startswith(PER_MESSAGE) and series in m0 and m1[series] > m0[series]:
            print(f"{series:55} {(m1[series] - m0[series]) / messages:11.3f}")
    print([line for line in out.splitlines() if line.startswith("rep ")][-1])


if __name__ == "__main__":
    main()
