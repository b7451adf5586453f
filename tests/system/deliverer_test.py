"""Whole-system tests of tern-deliverer's routing and protocol features.

The real binaries (cluster.py) with extra config: static routes in
outbound_routes.ini, one of them to an LMTP server on a unix socket (a small
scripted LMTP server below, since the scenario needs a per-recipient failure
after the dot that a real LMTP server only gives when its disk is full).
"""

import asyncio
import os
import smtplib
import threading
import unittest

from cluster import Cluster, ClusterTestCase, ZONES

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


if __name__ == "__main__":
    unittest.main()
