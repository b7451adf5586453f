#!/usr/bin/env python3
"""Tern vs Postfix vs Haraka, side by side, on this machine, in one run.

Each system relays the same load from Postfix's `smtp-source` (20 sessions)
to the same sink (Postfix's `smtp-sink`). For every (system, workload,
repetition) it records:
  accepted/s  messages / time smtp-source took to hand them all over
  e2e/s       messages / time from the first byte in until the sink counted all
  cpu/1k      CPU seconds of the relay's processes (including reaped children) per 1,000 messages
  peak mem    the highest sum of the relay's processes' PSS, sampled every 100 ms
Systems are interleaved within each repetition, in an order that rotates
from one repetition to the next; the table shows medians and
the spread (min-max) over the repetitions, and the ratios Tern/Postfix and
Tern/Haraka.

Setup it does itself (Debian packages and npm only): installs postfix
(binaries only; a private instance runs from a temp dir) and the Haraka npm
package into bench/compare/.work. Tern is run from the build tree with a
dnsmasq zone whose MX points at the sink.

  python3 bench/compare/compare.py                 # the full run (3 reps, all workloads)
  python3 bench/compare/compare.py --reps 1 --scale 0.2 --systems tern1,postfix
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "system"))
from cluster import free_port  # noqa: E402  (never hands out one port twice)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
WORK = os.path.join(HERE, ".work")
BIN = os.environ.get("TERN_BIN_DIR", os.path.join(ROOT, "build"))
CLK = os.sysconf("SC_CLK_TCK")

# smtp-source's parallel sessions: 20 as the issue sets it; TERN_BENCH_SESSIONS
# changes it to see whether a system is bound by latency (more sessions go
# faster) or by CPU (they do not).
SESSIONS = os.environ.get("TERN_BENCH_SESSIONS", "20")

WORKLOADS = {
    "2KB x1": dict(messages=10000, size=2048, rcpts=1),
    "50KB x1": dict(messages=10000, size=50 * 1024, rcpts=1),
    "2KB x10": dict(messages=5000, size=2048, rcpts=10),
}


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def wait_unix_socket(path, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"socket {path} never opened")


def sh(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


# -- process accounting --------------------------------------------------------

def children_of():
    kids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            kids.setdefault(int(fields[1]), []).append(int(pid))
        except OSError:
            pass
    return kids


def tree(roots):
    kids = children_of()
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def pss_bytes(pid):
    # PSS splits shared pages between the processes that map them, so summing
    # it over Postfix's or Haraka's many processes does not count libraries
    # once per process the way summing RSS would.
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_and_rss(roots):
    """CPU seconds (self + reaped children) and memory (PSS) of the process trees."""
    cpu, rss = 0.0, 0
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime stime cutime cstime are fields 14-17 (1-based) of stat;
            # after splitting past the comm they start at index 11.
            cpu += sum(int(x) for x in fields[11:15]) / CLK
            rss += pss_bytes(pid)
        except (OSError, IndexError, ValueError):
            pass
    return cpu, rss


class Sampler(threading.Thread):
    def __init__(self, roots):
        super().__init__(daemon=True)
        self.roots, self.peak, self.stop_flag = roots, 0, threading.Event()

    def run(self):
        # Every 0.25 s: each sample walks /proc for the process tree and reads
        # every member's smaps_rollup, which at 10 Hz cost the harness ~4 % of
        # a core, taken from whichever system was being measured. The
        # daemons' memory moves slowly; a quarter second misses no peak that
        # matters.
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, cpu_and_rss(self.roots())[1])
            time.sleep(0.25)


# -- the sink ------------------------------------------------------------------

class Sink:
    def __init__(self):
        self.port = free_port()
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1000"],
                                     stdout=self.out, stderr=subprocess.STDOUT)
        wait_port(self.port)

    def count(self):
        # Only the tail: smtp-sink -c rewrites its counter line per message.
        self.out.seek(0, os.SEEK_END)
        self.out.seek(max(0, self.out.tell() - 200))
        data = self.out.read().decode(errors="replace")
        last = data.replace("\r", "\n").strip().splitlines()
        for line in reversed(last):
            if "mesg=" in line:
                return int(line.rsplit("mesg=", 1)[1].split()[0])
        return 0

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


# -- the systems ---------------------------------------------------------------

class Postfix:
    name = "postfix"

    def __init__(self, sink_port):
        self.dir = tempfile.mkdtemp(prefix="bench-postfix-")
        os.chmod(self.dir, 0o755)  # Postfix's daemons run as the postfix user
        self.port = free_port()
        conf, queue, data = (os.path.join(self.dir, d) for d in ("conf", "queue", "data"))
        for d in (conf, queue, data):
            os.makedirs(d)
        shutil.chown(data, "postfix")
        shutil.copy("/etc/postfix/master.cf", conf)
        with open(os.path.join(conf, "main.cf"), "w") as f:
            f.write(f"""compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
myhostname = relay.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = {self.dir}/maillog
maillog_file_prefixes = /tmp, /var
alias_maps =
local_recipient_maps =
smtp_tls_security_level = none
""")
        with open(os.path.join(conf, "master.cf")) as f:
            master = f.read().replace("smtp      inet", f"{self.port}      inet", 1)
        with open(os.path.join(conf, "master.cf"), "w") as f:
            f.write(master)
        # postfix -c DIR must be listed in the default main.cf (a set-gid safety rule).
        dirs = sh(["postconf", "-h", "alternate_config_directories"]).stdout.strip()
        sh(["postconf", "-e", f"alternate_config_directories = {dirs} {conf}".strip(),
            "maillog_file_prefixes = /var, /dev/stdout, /tmp"])
        self.conf = conf
        sh(["postfix", "-c", conf, "start"])
        wait_port(self.port)

    def pids(self):
        try:
            with open(os.path.join(self.dir, "data", "master.lock")) as f:
                return [int(f.read().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def close(self):
        subprocess.run(["postfix", "-c", self.conf, "stop"], capture_output=True)
        time.sleep(1)
        shutil.rmtree(self.dir, ignore_errors=True)


class Haraka:
    name = "haraka"

    @staticmethod
    def install():
        haraka = os.path.join(WORK, "node_modules", ".bin", "haraka")
        if not os.path.exists(haraka):
            # haraka-package.json pins Haraka 3.3.4 and overrides two transitive
            # versions that the npm mirror reachable here does not carry
            # (encoding-japanese, libqp: older releases of the same majors).
            os.makedirs(WORK, exist_ok=True)
            shutil.copy(os.path.join(HERE, "haraka-package.json"), os.path.join(WORK, "package.json"))
            sh(["npm", "install", "--no-audit", "--no-fund"], cwd=WORK, timeout=900)
        return haraka

    def __init__(self, sink_port):
        haraka = self.install()
        self.dir = tempfile.mkdtemp(prefix="bench-haraka-")
        self.port = free_port()
        sh([haraka, "-i", self.dir])
        cfg = os.path.join(self.dir, "config")

        def write(name, text):
            with open(os.path.join(cfg, name), "w") as f:
                f.write(text)

        write("smtp.ini", f"[main]\nlisten=127.0.0.1:{self.port}\nnodes={os.cpu_count()}\n")
        write("plugins", "relay\nbench_get_mx\n")
        write("relay.ini", "[relay]\nacl=true\n")
        write("relay_acl_allow", "127.0.0.1/32\n")
        write("outbound.ini", "[main]\nlocal_mx_ok=true\n")
        write("log.ini", "[main]\nlevel=warn\n")
        write("me", "relay.bench.test\n")
        os.makedirs(os.path.join(self.dir, "plugins"), exist_ok=True)
        with open(os.path.join(self.dir, "plugins", "bench_get_mx.js"), "w") as f:
            f.write("exports.register = function () { this.register_hook('get_mx', 'get_mx'); };\n"
                    f"exports.get_mx = function (next, hmail, domain) {{ next(OK, '127.0.0.1:{sink_port}'); }};\n")
        self.log = open(os.path.join(self.dir, "haraka.log"), "wb")
        self.proc = subprocess.Popen([haraka, "-c", self.dir], stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, 60)

    def pids(self):
        return [self.proc.pid]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Tern:
    def __init__(self, sink_port, deliverers=1):
        self.name = f"tern{deliverers}"
        self.dir = tempfile.mkdtemp(prefix="bench-tern-")
        cfg = os.path.join(self.dir, "config")
        shutil.copytree(os.path.join(ROOT, "deploy", "config"), cfg)
        self.port = free_port()
        queue = free_port()
        dns = free_port()
        # TERN_BENCH_GRPC_UNIX=1: the services talk gRPC over a Unix socket
        # instead of loopback TCP (both are supported listen addresses).
        self.queue_socket = None
        queue_addr = f"127.0.0.1:{queue}"
        if os.environ.get("TERN_BENCH_GRPC_UNIX") == "1":
            self.queue_socket = os.path.join(self.dir, "queue.sock")
            queue_addr = f"unix:{self.queue_socket}"
        with open(os.path.join(cfg, "tern.ini"), "w") as f:
            f.write(f"[queue]\nlisten={queue_addr}\ndata_dir={self.dir}/queue\nmetrics_listen=\n"
                    f"[ingest]\nqueue={queue_addr}\nhealth_listen=\nmetrics_listen=\n"
                    f"[deliverer]\nqueue={queue_addr}\ndns_servers=127.0.0.1:{dns}\nmx_port={sink_port}\n"
                    f"health_listen=\nmetrics_listen=\n"
                    f"[bouncer]\nqueue={queue_addr}\nhealth_listen=\nmetrics_listen=\n")
            # For A/B runs of a setting, e.g. "[ingest]\nenqueue_stream=false".
            f.write(os.environ.get("TERN_BENCH_TERN_INI", "").replace("\\n", "\n") + "\n")
        with open(os.path.join(cfg, "smtp.ini"), "w") as f:
            f.write(f"[main]\nlisten=127.0.0.1:{self.port}\n")
            # The same for smtp.ini's [main], e.g. "nodes=1".
            f.write(os.environ.get("TERN_BENCH_SMTP_MAIN", "").replace("\\n", "\n") + "\n")
        with open(os.path.join(cfg, "outbound.ini"), "w") as f:
            f.write("[main]\nlocal_mx_ok=true\n")
        # TERN_BENCH_DKIM=rsa|ed25519: sign every message (dkim.ini, a key
        # for the load's sender domain made here with openssl), to measure
        # what signing costs.
        dkim = os.environ.get("TERN_BENCH_DKIM")
        if dkim:
            key_dir = os.path.join(cfg, "dkim", "bench.test")
            os.makedirs(key_dir)
            algorithm = ["RSA", "-pkeyopt", "rsa_keygen_bits:2048"] if dkim == "rsa" else ["ED25519"]
            subprocess.run(["openssl", "genpkey", "-algorithm", *algorithm, "-out", os.path.join(key_dir, "private")],
                           check=True, capture_output=True, timeout=60)
            with open(os.path.join(key_dir, "selector"), "w") as f:
                f.write("bench\n")
            with open(os.path.join(cfg, "dkim.ini"), "w") as f:
                f.write("[sign]\nenabled=true\n")
        with open(os.path.join(cfg, "log.ini"), "w") as f:
            f.write(f"[main]\nlevel={os.environ.get('TERN_BENCH_LOG_LEVEL', 'warn')}\n")
        # --local-ttl: a real zone's records have TTLs (dnsmasq's own records
        # default to 0, which no production zone uses) and the deliverer
        # caches answers for them; Postfix and Haraka here look up nothing.
        self.procs = [subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
             "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={dns}", "--pid-file=", "--user=root",
             "--local=/test/", "--local-ttl=300", "--mx-host=dest.test,mx.dest.test,10", "--host-record=mx.dest.test,127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        self.log = open(os.path.join(self.dir, "tern.log"), "wb")
        services = ["queue"] + ["deliverer"] * deliverers + ["bouncer", "ingest"]
        self.tern_pids = []
        for s in services:
            # TERN_WRAP_QUEUE="valgrind --tool=callgrind" etc.: run one service under a profiler.
            wrap = os.environ.get(f"TERN_WRAP_{s.upper()}", "").split()
            p = subprocess.Popen(wrap + [os.path.join(BIN, "services", s, f"tern-{s}"), "--config", cfg],
                                 stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
            self.procs.append(p)
            self.tern_pids.append(p.pid)
            if s == "queue":
                if self.queue_socket:
                    wait_unix_socket(self.queue_socket)
                else:
                    wait_port(queue)
        wait_port(self.port)

    def pids(self):
        return self.tern_pids

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep:  # for looking into a slow run afterwards
            shutil.copy(os.path.join(self.dir, "tern.log"), os.path.join(keep, f"{os.path.basename(self.dir)}.log"))
        shutil.rmtree(self.dir, ignore_errors=True)


# -- one run -------------------------------------------------------------------

def run_once(system_factory, workload, timeout):
    sink = Sink()
    try:
        system = system_factory(sink.port)
    except BaseException:
        sink.close()
        raise
    try:
        time.sleep(1)
        cpu0, _ = cpu_and_rss(system.pids())
        sampler = Sampler(system.pids)
        sampler.start()
        n = workload["messages"]
        t0 = time.time()
        src = subprocess.run(["smtp-source", "-s", SESSIONS, "-m", str(n), "-l", str(workload["size"]),
                              "-r", str(workload["rcpts"]), "-f", "from@bench.test", "-t", "to@dest.test",
                              f"127.0.0.1:{system.port}"], capture_output=True, text=True, timeout=timeout)
        t_accepted = time.time() - t0
        if src.returncode != 0:
            raise RuntimeError(f"smtp-source failed: {src.stderr[-500:]}")
        deadline = t0 + timeout
        # Every 5 ms: the end is taken to the poll, so a coarse poll adds up
        # to its period to every run (at 50 ms, up to 1.8 % of a 2.8 s tern1
        # run and 0.3 % of an 18 s Haraka run). Reading the counter's last
        # 200 bytes costs next to nothing, and only the stragglers are still
        # being delivered by then.
        while sink.count() < n and time.time() < deadline:
            time.sleep(0.005)
        t_e2e = time.time() - t0
        got = sink.count()
        cpu1, _ = cpu_and_rss(system.pids())
        sampler.stop_flag.set()
        sampler.join()
        return dict(delivered=got, accepted_s=n / t_accepted, e2e_s=got / t_e2e if got >= n else float("nan"),
                    cpu_per_1k=(cpu1 - cpu0) / n * 1000, peak_rss_mb=sampler.peak / 2**20)
    finally:
        system.close()
        sink.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts (for quick runs)")
    ap.add_argument("--systems", default="tern1,tern2,postfix,haraka")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", help="also write raw results here")
    args = ap.parse_args()
    factories = {"tern1": lambda p: Tern(p, 1), "tern2": lambda p: Tern(p, 2), "postfix": Postfix, "haraka": Haraka}
    systems = args.systems.split(",")
    if "haraka" in systems:
        Haraka.install()
    results = {}
    for rep in range(args.reps):
        for wname in args.workloads.split(","):
            w = dict(WORKLOADS[wname])
            w["messages"] = max(100, int(w["messages"] * args.scale))
            # The order rotates with each repetition: on this host the
            # second of two identical runs back to back was the faster in
            # every pair tried (session 23), so a fixed order would favour
            # whichever system runs after another.
            shift = rep % len(systems)
            for sname in systems[shift:] + systems[:shift]:
                r = run_once(factories[sname], w, args.timeout)
                results.setdefault((wname, sname), []).append(r)
                print(f"rep {rep + 1} {wname:8s} {sname:8s} " + " ".join(
                    f"{k}={v:.3f}" if k == "cpu_per_1k" else f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in r.items()), flush=True)
    print("\nmedian (min-max) over", args.reps, "repetitions")
    print(f"{'workload':9s} {'system':8s} {'accepted/s':>20s} {'e2e/s':>20s} {'cpu s/1k':>16s} {'peak PSS MB':>16s}")

    def cell(vals, digits=0):
        return f"{statistics.median(vals):8.{max(digits, 1)}f} ({min(vals):.{digits}f}-{max(vals):.{digits}f})"
    for (wname, sname), rs in results.items():
        print(f"{wname:9s} {sname:8s} {cell([r['accepted_s'] for r in rs]):>20s} {cell([r['e2e_s'] for r in rs]):>20s}"
              f" {cell([r['cpu_per_1k'] for r in rs], 2):>16s} {cell([r['peak_rss_mb'] for r in rs]):>16s}")
    print("\nratios (median e2e/s; cpu per message: other/tern)")
    for wname in args.workloads.split(","):
        med = {s: statistics.median([r["e2e_s"] for r in results[(wname, s)]]) for s in systems}
        cpu = {s: statistics.median([r["cpu_per_1k"] for r in results[(wname, s)]]) for s in systems}
        for t in [s for s in systems if s.startswith("tern")]:
            for o in [s for s in systems if not s.startswith("tern")]:
                print(f"{wname:9s} {t} vs {o}: e2e x{med[t] / med[o]:.2f}, cpu/msg {o}/{t} = {cpu[o] / cpu[t]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{w}|{s}": rs for (w, s), rs in results.items()}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
