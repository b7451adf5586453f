#!/usr/bin/env python3
"""Ingest acceptance benchmark (issue 5), Tern next to Postfix in one run.

Throughput: Postfix's `smtp-source` (50 sessions, 2 KB messages, 1 recipient)
against
  tern      tern-ingest + tern-queue from the build tree; every 250 follows the
            queue's synced RocksDB write. No deliverers run: the messages stay
            queued, so what is measured is acceptance alone.
  postfix   a private Postfix instance (smtpd -> cleanup -> queue file, fsync
            on, Debian's defaults), with `smtpd_data_restrictions =
            check_client_access static:HOLD` so every accepted message goes
            to the hold queue and nothing is delivered either.
in two modes: `reuse` (smtp-source -d: many messages per connection) and
`single` (one message per connection: connect, banner, EHLO, ..., QUIT).
Systems are interleaved within each repetition. Columns: accepted msgs/s
(messages / smtp-source's wall time), CPU seconds per 1,000 messages of the
system's process tree (reaped children included), peak memory (sum of PSS).

Idle: N clients (default 10,000) connect, read the banner, say EHLO and then
stay idle; ingest's RSS is read before and while they are held.

  python3 bench/ingest/run.py                    # 20,000 messages x 2 modes x 2 systems, 1 rep; idle 10,000
  python3 bench/ingest/run.py --reps 3
  python3 bench/ingest/run.py --messages 5000 --idle 0          # quick throughput look
  python3 bench/ingest/run.py --systems tern --modes reuse --idle 0
  TERN_BIN_DIR=build-ingest python3 bench/ingest/run.py         # another build tree

Needs: postfix (for smtp-source and the comparison; `apt-get install postfix`),
root for the private Postfix instance, and a hard RLIMIT_NOFILE above the
idle count (this script raises its soft limit; tern-ingest raises its own).
"""

import argparse
import json
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "compare"))
import compare  # noqa: E402  (process accounting and the private Postfix instance)

BIN = os.environ.get("TERN_BIN_DIR", os.path.join(ROOT, "build"))
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)


class Tern:
    """tern-queue + tern-ingest, nothing else."""

    name = "tern"

    def __init__(self, connections_per_ip=0, max_connections=20000):
        self.dir = tempfile.mkdtemp(prefix="bench-ingest-tern-")
        cfg = os.path.join(self.dir, "config")
        shutil.copytree(os.path.join(ROOT, "deploy", "config"), cfg)
        self.port = compare.free_port()
        queue = compare.free_port()
        with open(os.path.join(cfg, "tern.ini"), "w") as f:
            f.write(f"[queue]\nlisten=127.0.0.1:{queue}\ndata_dir={self.dir}/queue\nmetrics_listen=\n"
                    f"[ingest]\nqueue=127.0.0.1:{queue}\nhealth_listen=\nmetrics_listen=\n")
        with open(os.path.join(cfg, "smtp.ini"), "w") as f:
            f.write(f"[main]\nlisten=127.0.0.1:{self.port}\n")
        # Postfix exempts $mynetworks from its per-client limits; ingest's
        # per-IP limit (default 100) is lifted the same way for the load run.
        with open(os.path.join(cfg, "connection.ini"), "w") as f:
            f.write(f"[max]\nconnections={max_connections}\nconnections_per_ip={connections_per_ip}\n")
        with open(os.path.join(cfg, "log.ini"), "w") as f:
            f.write("[main]\nlevel=warn\n")
        self.log = open(os.path.join(self.dir, "tern.log"), "wb")
        self.procs = {}
        for s in ("queue", "ingest"):
            self.procs[s] = subprocess.Popen([os.path.join(BIN, "services", s, f"tern-{s}"), "--config", cfg],
                                             stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
            compare.wait_port(queue if s == "queue" else self.port)

    def pids(self):
        return [p.pid for p in self.procs.values()]

    def check(self, n):
        # smtp-source exits non-zero on any reply that is not 2xx/3xx, so a
        # zero exit already means n x "250 ... queued"; nothing more to count.
        return n

    def close(self):
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Postfix(compare.Postfix):
    """compare.py's private instance, made to keep what it accepts (hold queue)."""

    name = "postfix"

    def __init__(self):
        self.saved_dirs = compare.sh(["postconf", "-h", "alternate_config_directories"]).stdout.strip()
        # The relayhost compare.Postfix sets is never used: nothing leaves hold.
        super().__init__(sink_port=compare.free_port())
        compare.sh(["postconf", "-c", self.conf, "-e",
                    "smtpd_data_restrictions = check_client_access static:HOLD"])
        compare.sh(["postfix", "-c", self.conf, "reload"])
        time.sleep(2)  # reload is asynchronous: let master restart its children
        compare.wait_port(self.port)

    def check(self, n):
        held = sum(len(files) for _, _, files in os.walk(os.path.join(self.dir, "queue", "hold")))
        if held != n:
            raise RuntimeError(f"postfix: {held} messages in hold, expected {n}")
        return held

    def close(self):
        super().close()
        # compare.Postfix adds its directory to the system-wide list; take it out again.
        subprocess.run(["postconf", "-e", f"alternate_config_directories = {self.saved_dirs}"],
                       capture_output=True)


def throughput(factory, args, mode):
    system = factory()
    try:
        time.sleep(1)
        cpu0, _ = compare.cpu_and_rss(system.pids())
        sampler = compare.Sampler(system.pids)
        sampler.start()
        cmd = ["smtp-source", "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size),
               "-f", "from@bench.test", "-t", "to@dest.test"]
        if mode == "reuse":
            cmd.append("-d")
        t0 = time.time()
        src = subprocess.run(cmd + [f"127.0.0.1:{system.port}"], capture_output=True, text=True,
                             timeout=args.timeout)
        elapsed = time.time() - t0
        cpu1, _ = compare.cpu_and_rss(system.pids())
        sampler.stop_flag.set()
        sampler.join()
        if src.returncode != 0:
            raise RuntimeError(f"{system.name}: smtp-source failed: {src.stdout[-300:]} {src.stderr[-500:]}")
        system.check(args.messages)
        return dict(accepted_s=args.messages / elapsed, seconds=elapsed,
                    cpu_per_1k=(cpu1 - cpu0) / args.messages * 1000, peak_pss_mb=sampler.peak / 2**20)
    finally:
        system.close()


# -- idle connections ------------------------------------------------------------

def read_replies(socks, timeout):
    """Reads one whole SMTP reply from every socket; returns {sock: bytes}."""
    sel = selectors.DefaultSelector()
    bufs = {s: b"" for s in socks}
    done = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.time() + timeout
    while len(done) < len(socks) and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            try:
                chunk = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            bufs[s] += chunk
            lines = bufs[s].split(b"\r\n")
            # complete when the last full line is "ddd " (not "ddd-"), or at EOF
            if not chunk or any(len(l) >= 4 and l[3:4] == b" " for l in lines[:-1]):
                done[s] = bufs[s]
                sel.unregister(s)
    sel.close()
    for s in socks:
        s.setblocking(True)
    return done


def vm_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def idle(n, ehlo=True, per_ip=50):
    want = n + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise SystemExit(f"idle: RLIMIT_NOFILE hard limit {hard} < {want}; raise it (ulimit -Hn) as root")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    # Default limits (connections=20000, connections_per_ip=100): the clients
    # come from n / per_ip loopback addresses, like many real clients would.
    system = Tern(connections_per_ip=100, max_connections=max(20000, n + 100))
    socks = []
    try:
        pid = system.procs["ingest"].pid
        if vm_kb(pid, "VmRSS") == 0:
            raise RuntimeError("ingest is not running")
        time.sleep(1)
        rss0 = vm_kb(pid, "VmRSS")
        t0 = time.time()
        for i in range(n):
            ip = f"127.1.{i // per_ip // 250}.{i // per_ip % 250 + 1}"
            socks.append(socket.create_connection(("127.0.0.1", system.port), timeout=30, source_address=(ip, 0)))
        banners = read_replies(socks, 120)
        good = [s for s in socks if banners.get(s, b"").startswith(b"220 ")]
        if len(good) != n:
            bad = {banners.get(s, b"(none)")[:80] for s in socks if s not in good}
            raise RuntimeError(f"idle: {len(good)}/{n} got a banner; others: {bad}")
        if ehlo:
            for s in socks:
                s.sendall(b"EHLO idle.bench.test\r\n")
            replies = read_replies(socks, 120)
            ok = sum(1 for s in socks if replies.get(s, b"").startswith(b"250"))
            if ok != n:
                raise RuntimeError(f"idle: {ok}/{n} EHLO replies")
        setup = time.time() - t0
        time.sleep(3)  # let the allocator settle; every client is now idle
        rss1, hwm = vm_kb(pid, "VmRSS"), vm_kb(pid, "VmHWM")
        pss1 = compare.pss_bytes(pid) / 1024
        alive = system.procs["ingest"].poll() is None
        return dict(clients=n, addresses=(n + per_ip - 1) // per_ip, ehlo=ehlo, setup_s=setup,
                    rss_before_mb=rss0 / 1024, rss_mb=rss1 / 1024, hwm_mb=hwm / 1024, pss_mb=pss1 / 1024,
                    kb_per_client=(rss1 - rss0) / n, ingest_alive=alive)
    finally:
        for s in socks:
            s.close()
        system.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="tern,postfix")
    ap.add_argument("--modes", default="reuse,single")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--idle", type=int, default=10000, help="idle clients to hold (0 skips)")
    ap.add_argument("--no-ehlo", action="store_true", help="idle clients do not say EHLO")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", help="also write raw results here")
    args = ap.parse_args()
    factories = {"tern": Tern, "postfix": Postfix}
    systems = [s for s in args.systems.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    for s in systems:
        if s not in factories:
            raise SystemExit(f"unknown system {s}")
    for m in modes:
        if m not in ("reuse", "single"):
            raise SystemExit(f"unknown mode {m}")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} CPUs  load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}  bin {BIN}", flush=True)
    results = {}
    if args.messages > 0 and systems and modes:
        for rep in range(args.reps):
            for mode in modes:
                for s in systems:
                    r = throughput(factories[s], args, mode)
                    results.setdefault((mode, s), []).append(r)
                    print(f"rep {rep + 1} {mode:6s} {s:8s} " +
                          " ".join(f"{k}={v:.1f}" for k, v in r.items()), flush=True)
        print(f"\n{args.messages} messages x {args.size} B, {args.sessions} sessions; "
              f"median (min-max) over {args.reps} rep(s)")
        print(f"{'mode':7s} {'system':8s} {'accepted/s':>22s} {'CPU s/1k msgs':>18s} {'peak PSS MB':>18s}")

        def cell(vals, fmt):
            return f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"
        for (mode, s), rs in results.items():
            print(f"{mode:7s} {s:8s} {cell([r['accepted_s'] for r in rs], '{:.0f}'):>22s} "
                  f"{cell([r['cpu_per_1k'] for r in rs], '{:.2f}'):>18s} "
                  f"{cell([r['peak_pss_mb'] for r in rs], '{:.0f}'):>18s}")
        if "tern" in systems and "postfix" in systems:
            for mode in modes:
                t = statistics.median([r["accepted_s"] for r in results[(mode, "tern")]])
                p = statistics.median([r["accepted_s"] for r in results[(mode, "postfix")]])
                tc = statistics.median([r["cpu_per_1k"] for r in results[(mode, "tern")]])
                pc = statistics.median([r["cpu_per_1k"] for r in results[(mode, "postfix")]])
                print(f"{mode:7s} tern/postfix accepted/s x{t / p:.2f}; postfix CPU per message / tern's = {pc / tc:.2f}")
    idle_result = None
    if args.idle > 0:
        idle_result = idle(args.idle, ehlo=not args.no_ehlo)
        r = idle_result
        print(f"\nidle: {r['clients']} clients from {r['addresses']} addresses held "
              f"({'after EHLO' if r['ehlo'] else 'after the banner'}; set up in {r['setup_s']:.1f} s): "
              f"ingest RSS {r['rss_before_mb']:.1f} MB before -> {r['rss_mb']:.1f} MB "
              f"(peak {r['hwm_mb']:.1f} MB, PSS {r['pss_mb']:.1f} MB), {r['kb_per_client']:.1f} KB per client; "
              f"ingest {'still running' if r['ingest_alive'] else 'DIED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"throughput": {f"{m}|{s}": rs for (m, s), rs in results.items()}, "idle": idle_result},
                      f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
