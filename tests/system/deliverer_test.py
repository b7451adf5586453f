"""Whole-system tests of tern-deliverer's routing and protocol features.

The real binaries (cluster.py) with extra config: static routes in
outbound_routes.ini, one of them to an LMTP server on a unix socket (a small
scripted LMTP server below, since the scenario needs a per-recipient failure
after the dot that a real LMTP server only gives when its disk is full).

DelivererDnsTest: DNS failures and address-family preference on dnsmasq -
a zone forwarded to an upstream that answers SERVFAIL (a scripted UDP
responder, since no real server fails on demand), a zone forwarded to a closed
port (dnsmasq never answers: the resolver times out), and MX hosts with A and
AAAA records whose sinks listen on 127.0.0.x and ::1.
"""

import asyncio
import json
import os
import re
import socket
import smtplib
import subprocess
import threading
import time
import unittest

from cluster import Cluster, ClusterTestCase, ZONES, binary
from smtp_sink import SmtpSink

BODY = (b"From: Alice <alice@sender.test>\r\n"
        b"Subject: deliverer test %s\r\n"
        b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        b"\r\n"
        b"Hello.\r\n")


def send(cluster, mail_from, rcpts, tag):
    host, port = cluster.smtp_address()
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo("client.test")
        return s.sendmail(mail_from, rcpts, BODY % tag.encode())


def send_for_id(cluster, mail_from, rcpts, body):
    """Sends one message through ingest; returns its queue id (from the
    "250 2.0.0 Ok: queued as ID" reply)."""
    host, port = cluster.smtp_address()
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo("client.test")
        code, _ = s.mail(mail_from)
        assert code == 250, code
        for r in rcpts:
            code, reply = s.rcpt(r)
            assert code == 250, (code, reply)
        code, reply = s.data(body)
        assert code == 250, (code, reply)
    return reply.decode().rsplit(" ", 1)[1]


def ternctl_json(cluster, *args):
    out = subprocess.run([binary("ternctl"), "--queue", f"127.0.0.1:{cluster.ports['queue']}", *args, "--json"],
                         capture_output=True, timeout=20)
    if out.returncode != 0:
        raise AssertionError(f"ternctl {' '.join(args)} failed: {out.stderr.decode(errors='replace')}")
    return json.loads(out.stdout)


def wait_for_last_result(cluster, message_id, timeout):
    """Waits until every recipient of `message_id` has a reported result;
    returns `ternctl show --json` then."""
    def reported():
        shown = ternctl_json(cluster, "show", message_id)
        rcpts = [r for d in shown.get("deliveries", []) for r in d.get("recipients", [])]
        return shown if rcpts and all("last_result" in r for r in rcpts) else None
    return cluster.wait_until(reported, timeout, f"a reported attempt for {message_id}")


def deliverer_log_lines(cluster, needle):
    with open(os.path.join(cluster.logs, "deliverer.log"), "rb") as f:
        return [l for l in f.read().decode("utf-8", "replace").splitlines() if needle in l]


class DnsCluster(Cluster):
    """A Cluster whose dnsmasq also gets `dns_extra_args()` (more zones,
    forwarded zones), which subclasses or tests override."""

    def set_outbound(self, **keys):
        """Rewrites outbound.ini [main] with `keys` added and restarts the
        deliverer (it reads outbound.ini at start only)."""
        path = os.path.join(self.config, "outbound.ini")
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.split("=", 1)[0] not in keys]
        lines += [f"{k}={v}" for k, v in keys.items()]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.stop("deliverer")
        self.start("deliverer")


class LmtpServer:
    """LMTP (RFC 2033) on a unix socket: after the dot, one reply per
    accepted recipient, 550 for local parts starting with "bad"."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.messages = []  # (rcpts, data)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("LMTP server did not start")
        return self

    def stop(self):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_unix_server(self._session, path=self.path))
        self._ready.set()
        self._loop.run_forever()

    async def _session(self, reader, writer):
        def say(line):
            writer.write(line.encode() + b"\r\n")

        say("220 lmtp.test LMTP")
        rcpts = []
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), 30)
                if not line:
                    break
                cmd = line.decode("utf-8", "replace").rstrip("\r\n")
                verb = cmd.split(" ", 1)[0].upper()
                if verb == "LHLO":
                    say("250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES")
                elif verb == "MAIL":
                    rcpts = []
                    say("250 2.1.0 ok")
                elif verb == "RCPT":
                    rcpts.append(cmd[cmd.index("<") + 1:cmd.index(">")])
                    say("250 2.1.5 ok")
                elif verb == "DATA":
                    say("354 go")
                    await writer.drain()
                    data = b""
                    while True:
                        chunk = await reader.readline()
                        if chunk in (b".\r\n", b""):
                            break
                        data += chunk[1:] if chunk.startswith(b"..") else chunk
                    with self.lock:
                        self.messages.append((list(rcpts), data))
                    for r in rcpts:
                        if r.startswith("bad"):
                            say(f"550 5.1.1 <{r}> mailbox unavailable")
                        else:
                            say(f"250 2.0.0 <{r}> delivered")
                    rcpts = []
                elif verb == "RSET":
                    rcpts = []
                    say("250 2.0.0 ok")
                elif verb == "QUIT":
                    say("221 2.0.0 bye")
                    await writer.drain()
                    break
                else:
                    say("500 5.5.2 what")
                await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        writer.close()


class RoutedCluster(Cluster):
    def _write_config(self):
        super()._write_config()
        self.lmtp_path = os.path.join(self.tmp, "lmtp.sock")
        with open(os.path.join(self.config, "outbound_routes.ini"), "w") as f:
            f.write(f"""[routed.example]
host[]={ZONES['good.test']}:{self.ports['mx']}

[lmtp.test]
host[]={self.lmtp_path}
""")

    def _start_sinks(self):
        super()._start_sinks()
        self.lmtp = LmtpServer(self.lmtp_path).start()

    def close(self):
        if getattr(self, "lmtp", None):
            self.lmtp.stop()
        super().close()


class DelivererTest(ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        return RoutedCluster()

    def test_static_route_is_used_for_a_domain_without_dns(self):
        # routed.example is in no DNS zone the deliverer can see: only the
        # route can deliver it.
        self.assertEqual(send(self.cluster, "alice@sender.test", ["carol@routed.example"], "routed"), {})
        sink = self.cluster.sinks["good.test"]
        got = self.cluster.wait_until(
            lambda: [m for m in sink.received() if b"deliverer test routed" in m.data], 30, "routed delivery")
        self.assertEqual(got[0].rcpts, ["carol@routed.example"])

    def test_lmtp_over_unix_socket_attributes_each_reply_to_its_recipient(self):
        self.assertEqual(send(self.cluster, "alice@sender.test", ["ok@lmtp.test", "bad@lmtp.test"], "lmtp"), {})
        lmtp = self.cluster.lmtp
        self.cluster.wait_until(lambda: any(b"deliverer test lmtp" in d for _, d in lmtp.messages), 30,
                                "LMTP delivery")
        # The 550 after the dot was for bad@ only (Haraka charged it to the
        # first recipient). The deliverer's per-recipient log lines are what
        # operators read, and what the queue was told.
        log_path = os.path.join(self.cluster.logs, "deliverer.log")

        def outcome_lines():
            with open(log_path, "rb") as f:
                lines = [l for l in f.read().decode("utf-8", "replace").splitlines() if " delivery msg=" in l]
            ok = [l for l in lines if "rcpt=ok@lmtp.test" in l]
            bad = [l for l in lines if "rcpt=bad@lmtp.test" in l]
            return (ok, bad) if ok and bad else None

        ok, bad = self.cluster.wait_until(outcome_lines, 30, "LMTP outcomes in the deliverer log")
        self.assertIn("status=sent", ok[0])
        self.assertIn("dsn=2.0.0", ok[0])
        self.assertIn("status=bounced", bad[0])
        self.assertIn("dsn=5.1.1", bad[0])
        self.assertIn("mailbox unavailable", bad[0])
        rcpts, data = lmtp.messages[0]
        self.assertEqual(rcpts, ["ok@lmtp.test", "bad@lmtp.test"])

    def test_sequential_messages_reuse_one_connection(self):
        sink = self.cluster.sinks["defer.test"]  # not used by the other tests
        sink.set_rcpt_reply("250 2.1.5 Ok")
        before = sink.connections
        for i in range(3):
            tag = f"reuse {i}"
            self.assertEqual(send(self.cluster, "alice@sender.test", [f"dave{i}@defer.test"], tag), {})
            self.cluster.wait_until(
                lambda: [m for m in sink.received() if (b"deliverer test " + tag.encode()) in m.data], 30, tag)
        self.assertEqual(sink.connections - before, 1, "three messages, one pooled connection")


class ServfailUpstream:
    """A DNS server on 127.0.0.1 answering every query with SERVFAIL."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(data) < 12:
                continue
            self.queries += 1
            # QR=1 (opcode and RD kept), RA=1, RCODE=2; the question echoed.
            reply = data[:2] + bytes([0x80 | (data[2] & 0x79), 0x82]) + data[4:6] + b"\0" * 6 + data[12:]
            self.sock.sendto(reply, peer)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# dnsmasq records for DelivererDnsTest. Sinks: V4_SINK on 127.0.0.6,
# LEVEL_SINK on 127.0.0.7, one on ::1; all on the cluster's mx_port. Nothing
# listens on DEAD_MX.
V4_SINK, LEVEL_SINK, V6_SINK, DEAD_MX = "127.0.0.6", "127.0.0.7", "::1", "127.0.0.8"


class DnsScenarioCluster(DnsCluster):
    def dns_extra_args(self):
        self.servfail = ServfailUpstream()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]  # closed again when this block ends
        return [
            # More specific than --local=/test/: these zones are forwarded.
            f"--server=/servfail.test/127.0.0.1#{self.servfail.port}",
            f"--server=/unreachable.test/127.0.0.1#{closed}",
            # One MX host with both families.
            "--mx-host=dual.test,mx.dual.test,10",
            f"--host-record=mx.dual.test,{V4_SINK},{V6_SINK}",
            # An IPv4-only MX at 10 and an IPv6-only MX at 20.
            "--mx-host=levels.test,v4.levels.test,10",
            "--mx-host=levels.test,v6.levels.test,20",
            f"--host-record=v4.levels.test,{LEVEL_SINK}",
            f"--host-record=v6.levels.test,{V6_SINK}",
            # A better MX that refuses every connection, and a working one.
            "--mx-host=deadfirst.test,dead.deadfirst.test,10",
            "--mx-host=deadfirst.test,live.deadfirst.test,20",
            f"--host-record=dead.deadfirst.test,{DEAD_MX}",
            f"--host-record=live.deadfirst.test,{LEVEL_SINK}",
        ]

    def _start_sinks(self):
        super()._start_sinks()
        # mx_port was picked free on the ZONES addresses; these addresses are
        # unused by anything else on a test machine, so the same port is
        # expected to be free there too (a clash fails loudly at bind).
        for name, ip in (("v4", V4_SINK), ("level", LEVEL_SINK), ("v6", V6_SINK)):
            self.sinks[name] = SmtpSink(ip, self.ports["mx"], name=f"{name}.sink.test").start()

    def close(self):
        if getattr(self, "servfail", None):
            self.servfail.stop()
        super().close()


class DelivererDnsTest(ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        # Host flags refreshed every second, so a clearing reaches the
        # deliverer within the test's patience.
        return DnsScenarioCluster(deliverer_ini_extra="host_flags_refresh=1")

    def assert_deferred_by_dns(self, domain, timeout):
        msg_id = send_for_id(self.cluster, "alice@sender.test", [f"x@{domain}"],
                             BODY % f"dns {domain}".encode())
        shown = wait_for_last_result(self.cluster, msg_id, timeout)
        (delivery,) = shown["deliveries"]
        (rcpt,) = delivery["recipients"]
        result = rcpt["last_result"]
        # Transient: still queued, waiting for its next attempt.
        self.assertEqual(rcpt["state"], "deferred", rcpt)
        self.assertEqual(result["outcome"], "OUTCOME_TRANSIENT", result)
        self.assertEqual(result["enhanced_status"], "4.4.3", result)
        self.assertIn(f"MX lookup for {domain} failed", result["reply_text"])
        # Nothing was attempted over SMTP.
        self.assertEqual(result["remote_ip"], "", result)
        # It is still there on the next look, and no DSN was made for it.
        again = ternctl_json(self.cluster, "show", msg_id)
        self.assertEqual(again["message_id"], msg_id)
        self.assertFalse(again.get("bounces"), again)
        return result

    def test_servfail_defers_with_4_4_3_and_keeps_the_message(self):
        before = self.cluster.servfail.queries
        result = self.assert_deferred_by_dns("servfail.test", 30)
        self.assertGreater(self.cluster.servfail.queries, before, "dnsmasq did not forward to the upstream")
        self.assertNotIn("NXDOMAIN", result["reply_text"])

    def test_unreachable_upstream_defers_with_4_4_3_and_keeps_the_message(self):
        # dnsmasq never answers; the deliverer's resolver gives up after its
        # own timeouts (5 s + 10 s).
        self.assert_deferred_by_dns("unreachable.test", 60)

    def deliver_and_find(self, rcpt, tag):
        """Sends one message to `rcpt`; returns (names of the sinks that got
        it, the deliverer's outcome line for it)."""
        msg_id = send_for_id(self.cluster, "alice@sender.test", [rcpt], BODY % tag.encode())
        line = self.cluster.wait_until(
            lambda: [l for l in deliverer_log_lines(self.cluster, f"msg={msg_id}") if " delivery " in l], 30,
            f"the outcome of {tag}")[-1]
        needle = b"deliverer test " + tag.encode()
        got = [name for name in ("v4", "level", "v6")
               if any(needle in m.data for m in self.cluster.sinks[name].received())]
        return got, line

    def test_an_mx_refusing_connections_is_suspended_after_three_and_mail_goes_to_the_next(self):
        # unreachable_after=3 (the default): the first three messages each
        # try the dead MX, are refused and go to the next; after the third
        # the address is suspended (60 s) and the next ones go straight on.
        dead = f"dead.deadfirst.test[{DEAD_MX}]"
        for i in range(5):
            tag = f"deadfirst {i}"
            msg_id = send_for_id(self.cluster, "alice@sender.test", [f"r{i}@deadfirst.test"], BODY % tag.encode())
            line = self.cluster.wait_until(
                lambda: [l for l in deliverer_log_lines(self.cluster, f"msg={msg_id}") if " delivery " in l], 30,
                f"the outcome of {tag}")[-1]
            self.assertIn("status=sent", line)
            self.assertIn(f"relay=live.deadfirst.test[{LEVEL_SINK}]", line)
            tried_dead = [l for l in deliverer_log_lines(self.cluster, f"msg={msg_id}")
                          if " attempt " in l and dead in l]
            if i < 3:
                self.assertEqual(len(tried_dead), 1, tried_dead)
                self.assertRegex(tried_dead[0], r"[Rr]efused")
            else:
                self.assertEqual(tried_dead, [], f"message {i} still tried the suspended MX")
            suspended = [l for l in deliverer_log_lines(self.cluster, "address_suspended") if dead in l]
            self.assertEqual(len(suspended), 1 if i >= 2 else 0, suspended)
        self.assertIn("failures_in_a_row=3", suspended[0])
        # The deliverer shared it through the queue, where an operator sees it.
        flags = ternctl_json(self.cluster, "hosts", "--flag", "unreachable").get("flags", [])
        (flag,) = [f for f in flags if f["host"] == DEAD_MX]
        self.assertEqual(flag["flag"], "unreachable")
        self.assertRegex(flag["reason"], r"[Rr]efused")
        self.assertGreater(int(flag["expires_unix_ms"]), time.time() * 1000)
        table = subprocess.run([binary("ternctl"), "--queue", f"127.0.0.1:{self.cluster.ports['queue']}", "hosts"],
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(table.returncode, 0, table.stderr)
        self.assertRegex(table.stdout, rf"{re.escape(DEAD_MX)}\s+unreachable\s")
        needle = b"deliverer test deadfirst"
        self.assertEqual(sum(needle in m.data for m in self.cluster.sinks["level"].received()), 5)

        # The operator fixed the MX (here: still dead, so the test sees it
        # tried): clearing ends the suspension for the deliverer at its next
        # refresh, and its count of failures starts afresh.
        queue = f"127.0.0.1:{self.cluster.ports['queue']}"
        cleared = subprocess.run([binary("ternctl"), "--queue", queue, "hosts", "clear", DEAD_MX, "--flag",
                                  "unreachable"], capture_output=True, text=True, timeout=30)
        self.assertEqual(cleared.returncode, 0, cleared.stderr)
        self.assertIn(f"cleared unreachable on {DEAD_MX}", cleared.stdout)
        (flag,) = [f for f in ternctl_json(self.cluster, "hosts").get("flags", []) if f["host"] == DEAD_MX]
        self.assertTrue(flag.get("cleared"), flag)
        table = subprocess.run([binary("ternctl"), "--queue", queue, "hosts"], capture_output=True, text=True,
                               timeout=30)
        self.assertRegex(table.stdout, rf"{re.escape(DEAD_MX)}\s+unreachable\s+-\s+cleared\s")
        self.cluster.wait_until(lambda: [l for l in deliverer_log_lines(self.cluster, "host_flag_cleared")
                                         if f"host={DEAD_MX}" in l], 15, "the deliverer dropping the cleared flag")
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["r5@deadfirst.test"], BODY % b"deadfirst 5")
        line = self.cluster.wait_until(
            lambda: [l for l in deliverer_log_lines(self.cluster, f"msg={msg_id}") if " delivery " in l], 30,
            "the outcome of the message after the clearing")[-1]
        self.assertIn("status=sent", line)
        tried_dead = [l for l in deliverer_log_lines(self.cluster, f"msg={msg_id}") if " attempt " in l and dead in l]
        self.assertEqual(len(tried_dead), 1, "the cleared address was not tried again")
        suspended = [l for l in deliverer_log_lines(self.cluster, "address_suspended") if dead in l]
        self.assertEqual(len(suspended), 1, "one failure after the clearing suspended it again")
        again = subprocess.run([binary("ternctl"), "--queue", queue, "hosts", "clear", DEAD_MX],
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(again.returncode, 1, again.stdout)
        self.assertIn(f"{DEAD_MX} has no host flag in force", again.stderr)

    def test_inet_prefer_orders_families_within_one_mx_host(self):
        try:
            for prefer, sink in (("v6", "v6"), ("v4", "v4"), ("default", "v6")):
                self.cluster.set_outbound(inet_prefer=prefer)
                got, line = self.deliver_and_find("a@dual.test", f"prefer {prefer}")
                self.assertIn("status=sent", line)
                self.assertEqual(got, [sink], prefer)
                address = V6_SINK if sink == "v6" else V4_SINK
                self.assertIn(f"relay=mx.dual.test[{address}]:{self.cluster.ports['mx']}", line)
        finally:
            self.cluster.set_outbound(inet_prefer="default")

    def test_inet_prefer_v6_does_not_reorder_across_mx_preferences(self):
        # Haraka moved IPv6 addresses of a worse MX ahead of a better MX's
        # IPv4 ones; the MX preference must win.
        try:
            self.cluster.set_outbound(inet_prefer="v6")
            got, line = self.deliver_and_find("b@levels.test", "levels v6")
            self.assertIn("status=sent", line)
            self.assertEqual(got, ["level"])
            self.assertIn(f"relay=v4.levels.test[{LEVEL_SINK}]:", line)
        finally:
            self.cluster.set_outbound(inet_prefer="default")


if __name__ == "__main__":
    unittest.main()
