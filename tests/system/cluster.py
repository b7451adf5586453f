"""Starts a whole Tern on loopback for whole-system tests.

Real parts wherever users meet them: the four real service binaries with a
generated Haraka-style config dir, RocksDB on disk in a temp dir, a real DNS
server (dnsmasq) serving the test zones, real SMTP clients (smtplib). The
destination MXes are scripted sinks (tests/fakes/smtp_sink.py) on
127.0.0.2-127.0.0.5, all on one port that the deliverer uses as `mx_port`.

Every process is started here and stopped here by PID; every wait is bounded.
"""

import json
import os
import random
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "fakes"))

from smtp_sink import SmtpSink  # noqa: E402

BIN_DIR = os.environ.get("TERN_BIN_DIR", os.path.join(SOURCE_DIR, "build"))

# Destination domains and the loopback address of their MX.
ZONES = {
    "good.test": "127.0.0.2",
    "reject.test": "127.0.0.3",
    "defer.test": "127.0.0.4",
    "sender.test": "127.0.0.5",
}


_handed_out = set()  # ports free_port() already gave to someone in this process
_rng = random.Random()  # seeded from the OS: concurrent test processes pick differently


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host="127.0.0.1", kind=socket.SOCK_STREAM):
    """A port nothing is bound to now, outside the kernel's ephemeral range,
    and never one this process was given before.

    Outside the ephemeral range because the chaos tests kill services and
    start them again on the same ports: while a service is down, any outgoing
    connection on the machine may take its port as a source port (the tests
    open hundreds of connections a second), and the restarted service then
    fails to bind (seen: a restarted bouncer's health port). Never twice
    because the kernel may hand the same free port out twice in a row (a CI
    run once gave the deliverer's and the bouncer's metrics one port)."""
    lo, _ = _ephemeral_range()
    if lo > 12000:
        for _ in range(200):
            port = _rng.randrange(10000, lo)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    # No room below the ephemeral range: let the kernel choose.
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port")


def free_dns_port():
    """A port free for both UDP and TCP: dnsmasq listens on both, and a UDP
    port the kernel calls free may still be some TCP connection's local port."""
    for _ in range(50):
        port = free_port(kind=socket.SOCK_DGRAM)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def free_port_on_all(hosts):
    """A TCP port that is free on every one of `hosts` (for the sinks)."""
    for _ in range(50):
        port = free_port()
        ok = True
        for h in hosts:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no common free port")


def terminate(proc, grace=15):
    """SIGTERM, then SIGKILL if `proc` has not exited within `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_port(host, port, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not open within {timeout}s")


def binary(service):
    if service == "ternctl":
        return os.path.join(BIN_DIR, "tools", "ternctl", "ternctl")
    return os.path.join(BIN_DIR, "services", service, f"tern-{service}")


class Cluster:
    """The whole system. Use as a context manager."""

    def __init__(self, relay_acl=("127.0.0.1/32", "::1/128"), temp_fail_intervals="5s*100", lease_seconds=None,
                 queue_ini_extra="", deliverer_ini_extra="", tern_ini_extra="", hooks_ini="", smtp_main_extra="",
                 ingest_ini_extra=""):
        self.tmp = tempfile.mkdtemp(prefix="tern-system-")
        self.config = os.path.join(self.tmp, "config")
        self.data = os.path.join(self.tmp, "queue")
        self.logs = os.path.join(self.tmp, "logs")
        os.makedirs(self.logs)
        self.relay_acl = relay_acl
        self.temp_fail_intervals = temp_fail_intervals
        # Shorter leases make a killed deliverer's work due again sooner.
        self.lease_seconds = lease_seconds
        self.queue_ini_extra = queue_ini_extra  # more [queue] lines for tern.ini
        self.deliverer_ini_extra = deliverer_ini_extra  # more [deliverer] lines
        self.ingest_ini_extra = ingest_ini_extra  # more [ingest] lines
        self.tern_ini_extra = tern_ini_extra  # more sections at the end of tern.ini
        self.hooks_ini = hooks_ini  # config/hooks.ini (the user's gRPC Hooks server), if any
        self.smtp_main_extra = smtp_main_extra  # more [main] lines for smtp.ini
        self.procs = {}
        self.sinks = {}
        self.dns = None
        self.ports = {}

    # -- setup -------------------------------------------------------------
    def __enter__(self):
        try:
            self._set_up()
        except Exception:
            self.dump_logs()
            self.close()
            raise
        return self

    def _set_up(self):
        """Writes the config and starts everything; subclasses that run less
        or more override this (a failure prints the logs and closes)."""
        self._write_config()
        self._start_dns()
        self._start_sinks()
        for service in ("queue", "ingest", "deliverer", "bouncer"):
            self.start(service)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.dump_logs()
        self.close()

    def _write_config(self):
        shutil.copytree(os.path.join(SOURCE_DIR, "deploy", "config"), self.config)
        p = self.ports
        for name in ("queue", "ingest_health", "deliverer_health", "bouncer_health", "smtp",
                     "m_queue", "m_ingest", "m_deliverer", "m_bouncer"):
            p[name] = free_port()
        p["dns"] = free_dns_port()
        p["mx"] = free_port_on_all(list(ZONES.values()))
        q = f"127.0.0.1:{p['queue']}"
        with open(os.path.join(self.config, "tern.ini"), "w") as f:
            f.write(f"""[queue]
listen={q}
data_dir={self.data}
metrics_listen=127.0.0.1:{p['m_queue']}
{f"lease_seconds={self.lease_seconds}" if self.lease_seconds else ""}
{self.queue_ini_extra}
[ingest]
queue={q}
queue_timeout_ms=10000
health_listen=127.0.0.1:{p['ingest_health']}
metrics_listen=127.0.0.1:{p['m_ingest']}
{self.ingest_ini_extra}
[deliverer]
queue={q}
dns_servers=127.0.0.1:{p['dns']}
mx_port={p['mx']}
health_listen=127.0.0.1:{p['deliverer_health']}
metrics_listen=127.0.0.1:{p['m_deliverer']}
{self.deliverer_ini_extra}
[bouncer]
queue={q}
health_listen=127.0.0.1:{p['bouncer_health']}
metrics_listen=127.0.0.1:{p['m_bouncer']}
{self.tern_ini_extra}
""")
        with open(os.path.join(self.config, "smtp.ini"), "w") as f:
            f.write(f"[main]\nlisten=127.0.0.1:{p['smtp']}\n{self.smtp_main_extra}\n")
        if self.hooks_ini:
            with open(os.path.join(self.config, "hooks.ini"), "w") as f:
                f.write(self.hooks_ini)
        with open(os.path.join(self.config, "relay_acl_allow"), "w") as f:
            f.write("\n".join(self.relay_acl) + "\n")
        with open(os.path.join(self.config, "me"), "w") as f:
            f.write("tern.test\n")
        with open(os.path.join(self.config, "outbound.ini"), "w") as f:
            f.write(f"""[main]
local_mx_ok=true
connect_timeout=10
temp_fail_intervals={self.temp_fail_intervals}
""")

    def dns_extra_args(self):
        """More dnsmasq arguments (zones, forwarded zones) for subclasses."""
        return []

    def _start_dns(self):
        args = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.ports['dns']}",
                "--pid-file=", "--local=/test/", "--log-facility=-"]
        if os.geteuid() == 0:
            args.append("--user=root")
        for domain, ip in ZONES.items():
            args.append(f"--mx-host={domain},mx.{domain},10")
            args.append(f"--host-record=mx.{domain},{ip}")
        args += self.dns_extra_args()
        log = open(os.path.join(self.logs, "dnsmasq.log"), "wb")
        self.dns = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.dns.poll() is not None:
                raise RuntimeError("dnsmasq exited; see " + log.name)
            if self._dns_answers():
                return
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not answer")

    def _dns_answers(self):
        # A minimal DNS query for good.test MX; any reply means dnsmasq is up.
        query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04good\x04test\x00\x00\x0f\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(query, ("127.0.0.1", self.ports["dns"]))
                data, _ = s.recvfrom(512)
                return data[:2] == b"\x12\x34"
            except OSError:
                return False

    def _start_sinks(self):
        for domain, ip in ZONES.items():
            self.sinks[domain] = SmtpSink(ip, self.ports["mx"], name=f"mx.{domain}").start()
        self.sinks["reject.test"].set_rcpt_reply("550 5.1.1 No such user here")
        self.sinks["defer.test"].set_rcpt_reply("451 4.3.0 Try again later")

    # -- processes ---------------------------------------------------------
    def start(self, service):
        args = [binary(service), "--config", self.config]
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with open(os.path.join(self.logs, f"{service}.log"), "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)
        self.procs[service] = proc
        if service == "queue":
            wait_port("127.0.0.1", self.ports["queue"], 20, proc)
        elif service == "ingest":
            wait_port("127.0.0.1", self.ports["smtp"], 20, proc)
        else:
            wait_port("127.0.0.1", self.ports[f"{service}_health"], 20, proc)
        return proc

    def kill(self, service, sig=signal.SIGKILL):
        proc = self.procs.pop(service)
        proc.send_signal(sig)
        proc.wait(20)
        return proc.returncode

    def stop(self, service):
        return self.kill(service, signal.SIGTERM)

    def close(self):
        for service in list(self.procs):
            terminate(self.procs.pop(service))
        for sink in self.sinks.values():
            sink.stop()
        if self.dns is not None and self.dns.poll() is None:
            self.dns.terminate()
            self.dns.wait(5)
        if os.environ.get("TERN_KEEP_TMP"):
            print("kept", self.tmp, file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def dump_logs(self):
        for name in sorted(os.listdir(self.logs)):
            with open(os.path.join(self.logs, name), "rb") as f:
                data = f.read()[-6000:]
            sys.stderr.write(f"\n===== {name} (tail) =====\n{data.decode('utf-8', 'replace')}\n")

    # -- helpers for tests -------------------------------------------------
    def smtp_address(self):
        return ("127.0.0.1", self.ports["smtp"])

    def queues(self):
        """ternctl's --queue for the whole queue: every shard, comma-separated."""
        return f"127.0.0.1:{self.ports['queue']}"

    def stats(self):
        """The whole queue's counters (with shards, ternctl's sum of them)."""
        out = subprocess.run([binary("ternctl"), "--queue", self.queues(), "stats", "--json"],
                             capture_output=True, timeout=20, check=True)
        return json.loads(out.stdout)

    def metric(self, service, name, missing=0.0):
        """The value of Prometheus metric `name` on `service`'s exporter,
        summed over its label sets; `missing` when no series has that name."""
        url = f"http://127.0.0.1:{self.ports['m_' + service]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name + " ") or line.startswith(name + "{")]
        return sum(values) if values else missing

    def send_burst(self, subject, count, domain="good.test"):
        """Relays `count` messages, "Subject: <subject> <i>", one recipient
        each at `domain`, over one SMTP session."""
        host, port = self.smtp_address()
        with smtplib.SMTP(host, port, timeout=30) as s:
            s.ehlo("client.test")
            for i in range(count):
                s.sendmail("alice@sender.test", [f"user{i}@{domain}"],
                           f"Subject: {subject} {i}\r\n\r\nbody {i}\r\n".encode())

    def wait_for_burst(self, subject, count, timeout=60, domain="good.test"):
        """Waits until the sink of `domain` holds `count` messages of a
        send_burst(subject); returns them."""
        sink = self.sinks[domain]
        tag = f"Subject: {subject} ".encode()

        def arrived():
            got = [m for m in sink.received() if tag in m.data]
            return got if len(got) >= count else None
        return self.wait_until(arrived, timeout, f"every '{subject}' message at {domain}")

    def wait_until(self, predicate, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ClusterTestCase(unittest.TestCase):
    """One whole Tern per test class (make_cluster() picks which); the
    services' logs are printed when a test fails, so CI failures are readable."""

    cluster = None

    @classmethod
    def make_cluster(cls):
        return Cluster()

    @classmethod
    def setUpClass(cls):
        cls.cluster = cls.make_cluster().__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.__exit__(None, None, None)

    def run(self, result=None):
        outcome = super().run(result)
        if result is not None and (result.failures or result.errors) and self.cluster is not None:
            self.cluster.dump_logs()
        return outcome
