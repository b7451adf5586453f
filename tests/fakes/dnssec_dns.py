#!/usr/bin/env python3
"""A real DNSSEC chain on loopback for the DANE tests (RFC 7672).

Real parts only: Knot DNS (knotd) is the authoritative server and signs the
zones itself (ECDSA P-256, one combined signing key per zone); dnsmasq in
front of it is the validating resolver that sets the AD bit. The tests talk
to dnsmasq the way Tern does in production with a validating resolver.

    dns = DnssecDns()
    dns.add_zone("test.", "mx A 127.0.0.2\\n@ MX 10 mx", kind="signed")
    dns.add_zone("plain.test.", "host A 127.0.0.3", kind="unsigned")
    dns.add_zone("bogus.test.", "host A 127.0.0.4", kind="bogus")
    dns.start()          # resolver on 127.0.0.1:dns.port, knotd on dns.auth_port
    ...
    dns.stop()

Zone kinds:
  signed    knot signs it; the parent holds its real DS (the top zone is the
            trust anchor's zone, see below)
  unsigned  not signed, no DS in the parent: provably insecure (AD=0)
  bogus     knot signs it, but the parent holds a DS whose digest matches no
            key: validation fails and the resolver answers SERVFAIL

Exactly one zone is the top (every other zone lies below it), and it must
be signed. dnsmasq 2.90 refuses to validate without a trust anchor for the
root ("no root trust anchor provided for DNSSEC"), so unless the top zone is
"." itself, the fixture also serves a signed root zone that delegates the top
zone with its real DS; the trust anchor is the root key's DS, as `keymgr`
prints it (SHA-256 digest).

The fixture writes each zone's $ORIGIN, $TTL, SOA and apex NS itself (every
zone's NS is ns.<top zone>, with `ns.<top zone> A 127.0.0.1`), and in each
parent the delegation NS (+ the DS for signed and bogus children). The TEXT
given to add_zone is the rest: zone-file lines, names relative to the zone
or absolute.

CLI (for a C++ test to spawn):
    python3 dnssec_dns.py --zone NAME:KIND:FILE [--zone ...]
prints one JSON line {"port": P, "auth_port": A} when the chain validates,
then runs until stdin reaches EOF or SIGTERM/SIGINT, and stops everything.

Every process is started here and stopped here by PID; every wait is bounded.
Stdlib only.
"""

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "system"))
from cluster import free_dns_port  # noqa: E402

KINDS = ("signed", "unsigned", "bogus")
TTL = 60
ALGORITHM = 13  # ECDSAP256SHA256
DIGEST_TYPE = 2  # SHA-256

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "DS": 43,
          "RRSIG": 46, "NSEC": 47, "DNSKEY": 48, "NSEC3": 50, "TLSA": 52}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


# --- A minimal DNS client (stdlib) ----------------------------------------------------------

DnsReply = collections.namedtuple("DnsReply", "rcode flags ad aa tc answers")
DnsReply.__doc__ = """rcode: "NOERROR", "NXDOMAIN", "SERVFAIL", ... (or the number);
flags: the header's second 16 bits; ad, aa, tc: those bits as bools;
answers: [(type number, rdata bytes)] of the answer section, in order."""


def _encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


def _skip_name(buf, off):
    while True:
        n = buf[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed mid-reply")
        data += chunk
    return data


def dns_query(port, name, qtype, *, ad=True, do=False, tcp=False, host="127.0.0.1", timeout=3.0):
    """Sends one query with RD (and AD when `ad`; an EDNS OPT with DO when `do`)
    and returns a DnsReply. A truncated UDP reply is asked again over TCP.
    Raises OSError (e.g. socket.timeout) when nothing answers."""
    qid = random.randrange(1 << 16)
    flags = 0x0100 | (0x0020 if ad else 0)  # RD, AD
    qt = QTYPES[qtype.upper()] if isinstance(qtype, str) else qtype
    query = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if do else 0)
    query += _encode_name(name) + struct.pack(">HH", qt, 1)
    if do:  # OPT: root name, type 41, payload 1232, ext-rcode/version 0, DO bit, no options
        query += b"\x00" + struct.pack(">HHIH", 41, 1232, 0x00008000, 0)
    if tcp:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">H", len(query)) + query)
            (length,) = struct.unpack(">H", _recv_exact(s, 2))
            reply = _recv_exact(s, length)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(query, (host, port))
            while True:
                reply, _ = s.recvfrom(65535)
                if reply[:2] == query[:2]:
                    break
    rid, rflags, qd, an, _, _ = struct.unpack(">HHHHHH", reply[:12])
    if rid != qid:
        raise OSError("reply id does not match the query")
    if rflags & 0x0200 and not tcp:
        return dns_query(port, name, qtype, ad=ad, do=do, tcp=True, host=host, timeout=timeout)
    off = 12
    for _ in range(qd):
        off = _skip_name(reply, off) + 4
    answers = []
    for _ in range(an):
        off = _skip_name(reply, off)
        rtype, _, _, rdlen = struct.unpack(">HHIH", reply[off:off + 10])
        off += 10
        answers.append((rtype, reply[off:off + rdlen]))
        off += rdlen
    rcode = rflags & 0x000F
    return DnsReply(rcode=RCODES.get(rcode, rcode), flags=rflags, ad=bool(rflags & 0x0020),
                    aa=bool(rflags & 0x0400), tc=bool(rflags & 0x0200), answers=answers)


# --- The fixture --------------------------------------------------------------------------

def _find_tool(name):
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if not path:
        raise RuntimeError(f"{name} not found: install knot and dnsmasq-base (scripts/deps.sh)")
    return path


def _normalize(name):
    name = name.strip().lower()
    if name in ("", "."):
        return "."
    return name.rstrip(".") + "."


def _is_below(child, parent):
    """True when `child` is a proper subdomain of `parent` (both normalized)."""
    if child == parent:
        return False
    return parent == "." or child.endswith("." + parent)


def _tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError as e:
        return f"({e})"


def _pdeathsig():
    """A function for the child to run before exec: get SIGTERM when the thread that
    started it ends, so a killed fixture leaves no daemon behind. Linux only, best
    effort (None elsewhere); looked up in the parent, as a forked child must not import."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


class DnssecDns:
    """knotd (authoritative, signing) + dnsmasq (validating resolver) on 127.0.0.1.

    After start(): `port` is the resolver's port (UDP and TCP), `auth_port`
    knotd's, `trust_anchor` dnsmasq's --trust-anchor value. Start it from a
    thread that lives as long as the fixture: the daemons are told to exit when
    the thread that started them ends (PR_SET_PDEATHSIG)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tern-dnssec-")
        self.zones = {}  # name -> (kind, text), in the order added
        self.port = None
        self.auth_port = None
        self.trust_anchor = None
        self.knotd = None
        self.dnsmasq = None
        self._logs = []
        self._started = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- configuration --

    def add_zone(self, name, text="", kind="signed"):
        """Adds zone `name` (e.g. "test.") with zone-file lines `text` (no SOA or
        apex NS: the fixture writes those). kind: "signed", "unsigned" or "bogus"."""
        if self._started:
            raise RuntimeError("add_zone after start()")
        if kind not in KINDS:
            raise ValueError(f"zone kind {kind!r}: one of {', '.join(KINDS)}")
        name = _normalize(name)
        if name in self.zones:
            raise ValueError(f"zone {name} added twice")
        self.zones[name] = (kind, text)

    def _top(self):
        tops = [z for z in self.zones if not any(_is_below(z, p) for p in self.zones)]
        if len(tops) != 1:
            raise ValueError("exactly one zone must be the top with every other zone below it; "
                             f"tops now: {tops or 'none'}")
        top = tops[0]
        if self.zones[top][0] != "signed":
            raise ValueError(f"the top zone {top} is the trust anchor's zone: it must be signed")
        return top

    @staticmethod
    def _parent(name, names):
        below = [p for p in names if _is_below(name, p)]
        return max(below, key=len)

    # -- lifecycle --

    def start(self, timeout=20.0):
        """Signs and serves the zones, starts the resolver, and returns once the
        resolver answers the top zone's SOA with AD set (bounded by `timeout`).
        On failure raises RuntimeError with the daemons' log tails, stopped."""
        if self._started:
            raise RuntimeError("start() twice")
        self._started = True
        try:
            self._start(timeout)
        except BaseException as e:
            logs = "\n".join(f"--- {os.path.basename(p)}:\n{_tail(p)}" for p in self._logs)
            self.stop()
            if isinstance(e, Exception):
                raise RuntimeError(f"DNSSEC DNS fixture did not start: {e}\n{logs}") from e
            raise
        return self

    def _start(self, timeout):
        deadline = time.monotonic() + timeout
        knotd, keymgr, dnsmasq = _find_tool("knotd"), _find_tool("keymgr"), _find_tool("dnsmasq")
        top = self._top()
        zones = dict(self.zones)
        if top != ".":  # dnsmasq wants a root trust anchor: a signed root delegating `top`
            zones["."] = ("signed", "")
        ns = "ns." + top if top != "." else "ns."
        self.auth_port = free_dns_port()
        self.port = free_dns_port()

        conf = self._write_knot_conf(zones)
        ds = {}  # zone -> (key tag, DS rdata text) for every signed or bogus zone
        for name, (kind, _) in zones.items():
            if kind != "unsigned":
                ds[name] = self._generate_key(keymgr, conf, name)
        for name, (kind, text) in zones.items():
            self._write_zone(name, kind, text, zones, ds, ns, top)

        self._logs.append(os.path.join(self.dir, "knotd.log"))
        self.knotd = self._spawn([knotd, "-c", conf], self._logs[-1])
        for name in zones:  # every zone loaded (and signed) before the resolver asks
            self._wait(deadline, lambda n=name: self._auth_ready(n), self.knotd,
                       f"knotd serving {name} on 127.0.0.1:{self.auth_port}")

        tag, digest = ds["."][0], ds["."][1].split()[-1]
        self.trust_anchor = f".,{tag},{ALGORITHM},{DIGEST_TYPE},{digest}"
        args = [dnsmasq, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--pid-file=", "--log-facility=-", "--log-queries",
                "--dnssec", "--dnssec-check-unsigned", f"--trust-anchor={self.trust_anchor}",
                f"--server=127.0.0.1#{self.auth_port}"]
        if os.geteuid() == 0:
            args.append("--user=root")  # else it drops to "nobody"; nothing to protect here
        self._logs.append(os.path.join(self.dir, "dnsmasq.log"))
        self.dnsmasq = self._spawn(args, self._logs[-1])
        self._wait(deadline, lambda: self._validated(top), self.dnsmasq,
                   f"dnsmasq on 127.0.0.1:{self.port} answering {top} SOA with AD")

    def stop(self):
        """Stops the daemons this fixture started (by PID) and removes its temp dir."""
        for attr in ("dnsmasq", "knotd"):
            proc = getattr(self, attr)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        if self.dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers --

    def _spawn(self, args, log_path):
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.dir, preexec_fn=_pdeathsig())

    @staticmethod
    def _wait(deadline, ready, proc, what):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{os.path.basename(proc.args[0])} exited with {proc.returncode} "
                                   f"before {what}")
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}")

    def _auth_ready(self, name):
        try:
            r = dns_query(self.auth_port, name, "SOA", ad=False, timeout=0.5)
        except OSError:
            return False
        return r.rcode == "NOERROR" and r.aa and r.answers

    def _validated(self, name):
        try:
            r = dns_query(self.port, name, "SOA", ad=True, timeout=1.0)
        except OSError:
            return False
        return r.rcode == "NOERROR" and r.ad

    def _file(self, name):
        return os.path.join(self.dir, "zones", "root.zone" if name == "." else name + "zone")

    def _write_knot_conf(self, zones):
        for sub in ("zones", "db", "run"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        lines = [
            "server:",
            f'    rundir: "{self.dir}/run"',
            f"    listen: 127.0.0.1@{self.auth_port}",
            "    udp-workers: 1",
            "    tcp-workers: 1",
            "    background-workers: 1",
            "log:",
            "  - target: stderr",
            "    any: info",
            "database:",
            f'    storage: "{self.dir}/db"',
            "policy:",
            # Keys made here with keymgr before knotd starts (their DS go into the
            # parents' zone files); `manual` so knot never makes or rolls any itself.
            "  - id: csk",
            "    algorithm: ecdsap256sha256",
            "    single-type-signing: on",
            "    manual: on",
            "template:",
            "  - id: default",
            "    zonefile-sync: -1",  # never rewrite our zone files
            "    journal-content: none",
            "zone:",
        ]
        for name, (kind, _) in zones.items():
            lines += [f"  - domain: {name}", f'    file: "{self._file(name)}"']
            if kind != "unsigned":
                lines += ["    dnssec-signing: on", "    dnssec-policy: csk"]
        path = os.path.join(self.dir, "knot.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _generate_key(self, keymgr, conf, name):
        """A CSK for `name` in knot's KASP database; returns (key tag, "<tag> 13 2 <hex>")."""
        def run(*args):
            p = subprocess.run([keymgr, "-c", conf, name, *args], capture_output=True, text=True, timeout=30)
            if p.returncode != 0:
                raise RuntimeError(f"keymgr {name} {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
            return p.stdout
        run("generate", "algorithm=ecdsap256sha256", "ksk=yes", "zsk=yes")
        for line in run("ds").splitlines():  # "test. DS 41814 13 2 334d..."
            f = line.split()
            if len(f) == 6 and f[1] == "DS" and f[3] == str(ALGORITHM) and f[4] == str(DIGEST_TYPE):
                return int(f[2]), " ".join(f[2:])
        raise RuntimeError(f"keymgr {name} ds printed no SHA-256 DS")

    def _write_zone(self, name, kind, text, zones, ds, ns, top):
        lines = [f"$ORIGIN {name}", f"$TTL {TTL}",
                 f"@ SOA {ns} hostmaster.{top if top != '.' else ''} 1 {TTL} {TTL} 600 {TTL}",
                 f"@ NS {ns}"]
        if name in (top, "."):
            lines.append(f"{ns} A 127.0.0.1")  # in the root it is the glue under `top`'s delegation
        children = [c for c in zones if c not in (".", name) and self._parent(c, zones) == name]
        for child in children:
            lines.append(f"{child} NS {ns}")
            ckind = zones[child][0]
            if ckind == "signed":
                lines.append(f"{child} DS {ds[child][1]}")
            elif ckind == "bogus":  # the child's real key tag, a digest of nothing it has
                made_up = hashlib.sha256(b"no such key " + child.encode()).hexdigest()
                lines.append(f"{child} DS {ds[child][0]} {ALGORITHM} {DIGEST_TYPE} {made_up}")
        # The test's own lines last, after a fresh $ORIGIN (ours used absolute names).
        lines += [f"$ORIGIN {name}", text, ""]
        with open(self._file(name), "w") as f:
            f.write("\n".join(lines))


# --- CLI ------------------------------------------------------------------------------------

class _Stop(BaseException):  # not an Exception: start() passes it through unwrapped
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zone", action="append", required=True, metavar="NAME:KIND:FILE",
                    help=f"a zone; KIND is one of {', '.join(KINDS)}; FILE holds its records")
    args = ap.parse_args(argv)
    dns = DnssecDns()
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        for spec in args.zone:
            parts = spec.split(":", 2)
            if len(parts) != 3:
                raise ValueError(f"--zone {spec!r}: want NAME:KIND:FILE")
            with open(parts[2]) as f:
                dns.add_zone(parts[0], f.read(), kind=parts[1])
        dns.start()
        sys.stdout.write(json.dumps({"port": dns.port, "auth_port": dns.auth_port}) + "\n")
        sys.stdout.flush()
        while sys.stdin.buffer.read1(65536):  # until EOF: the spawning test closed the pipe or died
            pass
    except _Stop:
        pass
    except Exception as e:  # noqa: BLE001 - a clear one-line cause for the spawning test's log
        print(f"dnssec_dns: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        dns.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
