"""Whole-system tests: a message's whole life through the real binaries.

Each test names the behaviour a user relies on. The cluster (cluster.py) runs
queue, ingest, deliverer and bouncer with a dnsmasq serving the test zones and
scripted MXes on 127.0.0.2-5.
"""

import email
import email.policy
import smtplib
import time
import unittest

from cluster import Cluster, ClusterTestCase

BODY = (b"From: Alice <alice@sender.test>\r\n"
        b"To: Bob <bob@good.test>\r\n"
        b"Subject: system test %s\r\n"
        b"Message-Id: <%s@sender.test>\r\n"
        b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        b"\r\n"
        b"Hello Bob.\r\n"
        b".a line that starts with a dot must survive dot-stuffing\r\n"
        b"..and one with two dots\r\n"
        b"\r\n"
        b"Last line.\r\n")


def body(tag):
    return BODY % (tag.encode(), tag.encode())


def strip_received(data):
    """The message as the client sent it: Tern prepends its Received: header."""
    lines = data.split(b"\r\n")
    i = 0
    while i < len(lines) and lines[i].startswith(b"Received:"):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\r\n".join(lines[i:]), lines[:i]


def send(cluster, mail_from, rcpts, data, source=None):
    host, port = cluster.smtp_address()
    with smtplib.SMTP(host, port, timeout=30, source_address=source) as s:
        s.ehlo("client.test")
        return s.sendmail(mail_from, rcpts, data)


class PipelineTest(ClusterTestCase):

    def test_message_to_good_domain_arrives_intact(self):
        data = body("intact")
        refused = send(self.cluster, "alice@sender.test", ["bob@good.test"], data)
        self.assertEqual(refused, {})
        sink = self.cluster.sinks["good.test"]
        got = self.cluster.wait_until(
            lambda: [m for m in sink.received() if b"system test intact" in m.data], 30, "delivery to good.test")
        self.assertEqual(len(got), 1)
        msg = got[0]
        self.assertEqual(msg.mail_from, "alice@sender.test")
        self.assertEqual(msg.rcpts, ["bob@good.test"])
        original, received = strip_received(msg.data)
        self.assertEqual(original, data, "body must arrive byte for byte")
        self.assertTrue(received and received[0].startswith(b"Received: from client.test"), received)
        self.assertIn(b"by tern.test", b" ".join(received))

    def test_recipient_refused_with_550_produces_rfc3464_dsn_to_sender(self):
        data = body("bounce")
        send(self.cluster, "alice@sender.test", ["nobody@reject.test"], data)
        sink = self.cluster.sinks["sender.test"]
        dsns = self.cluster.wait_until(
            lambda: [m for m in sink.received() if b"nobody@reject.test" in m.data], 60, "DSN at sender.test")
        self.assertEqual(len(dsns), 1)
        dsn = dsns[0]
        self.assertEqual(dsn.mail_from, "", "a DSN is sent from the null sender")
        self.assertEqual(dsn.rcpts, ["alice@sender.test"])
        msg = email.message_from_bytes(dsn.data, policy=email.policy.default)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(msg["MIME-Version"], "1.0")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        parts = list(msg.iter_parts())
        types = [p.get_content_type() for p in parts]
        self.assertIn("message/delivery-status", types)
        status_part = parts[types.index("message/delivery-status")]
        # message/delivery-status is a list of header blocks: per-message then per-recipient.
        blocks = [dict((k.lower(), str(v)) for k, v in b.items()) for b in status_part.get_payload()]
        self.assertTrue(blocks[0]["reporting-mta"].startswith("dns;"), blocks[0])
        rcpt = blocks[1]
        self.assertEqual(rcpt["final-recipient"].replace(" ", ""), "rfc822;nobody@reject.test")
        self.assertEqual(rcpt["action"], "failed")
        self.assertEqual(rcpt["status"], "5.1.1")
        self.assertIn("550", rcpt["diagnostic-code"])
        self.assertIn("No such user here", rcpt["diagnostic-code"])
        self.assertIn("mx.reject.test", rcpt.get("remote-mta", ""))

    def test_deferred_message_stays_queued_then_is_delivered_when_mx_accepts(self):
        sink = self.cluster.sinks["defer.test"]
        sink.set_rcpt_reply("451 4.3.0 Try again later")
        data = body("deferred")
        send(self.cluster, "alice@sender.test", ["carol@defer.test"], data)
        self.cluster.wait_until(lambda: sink.rcpt_attempts >= 1, 30, "a first attempt at defer.test")
        time.sleep(1)
        self.assertEqual([m for m in sink.received() if b"system test deferred" in m.data], [])
        stats = self.cluster.stats()
        self.assertGreaterEqual(int(stats.get("deliveries", 0)), 1, stats)
        sink.set_rcpt_reply("250 2.1.5 Ok")
        got = self.cluster.wait_until(
            lambda: [m for m in sink.received() if b"system test deferred" in m.data], 60, "retry delivers")
        self.assertEqual(len(got), 1)
        self.assertEqual(strip_received(got[0].data)[0], data)

    def test_client_outside_relay_acl_is_refused_with_550_5_7_1(self):
        host, port = self.cluster.smtp_address()
        with smtplib.SMTP(host, port, timeout=30, source_address=("127.0.0.9", 0)) as s:
            s.ehlo("stranger.test")
            code, _ = s.mail("spammer@stranger.test")
            self.assertEqual(code, 250)
            code, text = s.rcpt("victim@good.test")
            self.assertEqual(code, 550)
            self.assertTrue(text.startswith(b"5.7.1"), text)

    def test_queue_drains_after_deliveries(self):
        data = body("drain")
        send(self.cluster, "alice@sender.test", ["dave@good.test", "erin@good.test"], data)
        sink = self.cluster.sinks["good.test"]
        got = self.cluster.wait_until(
            lambda: [m for m in sink.received() if b"system test drain" in m.data], 30, "delivery")
        # Both recipients share a domain, so one transaction carries both.
        self.assertEqual(sorted(got[0].rcpts), ["dave@good.test", "erin@good.test"])

    def test_commit_path_latencies_are_exported_for_every_message(self):
        # Operators read where a 250 waits from these histograms; each one
        # must count every message (or call) that went through it.
        names = {"ingest": ["tern_ingest_enqueue_seconds_count", "tern_ingest_enqueue_call_seconds_count"],
                 "queue": ["tern_queue_group_write_seconds_count", "tern_queue_rpc_seconds_count"],
                 "deliverer": ["tern_deliverer_data_gate_seconds_count", "tern_deliverer_queue_call_seconds_count"]}
        before = {(svc, n): self.cluster.metric(svc, n, missing=None) for svc, ns in names.items() for n in ns}
        self.assertNotIn(None, before.values(), before)
        self.cluster.send_burst("latency", 3)
        self.cluster.wait_for_burst("latency", 3)
        calls = ("deliverer", "tern_deliverer_queue_call_seconds_count")
        # The deliverer's Report (its second call, after Progress) is
        # answered only after the sink has the messages.
        self.cluster.wait_until(lambda: self.cluster.metric(*calls) >= before[calls] + 2, 30, "the report call")
        after = {k: self.cluster.metric(*k) for k in before}
        delta = {k: after[k] - before[k] for k in before}
        self.assertEqual(delta[("ingest", "tern_ingest_enqueue_seconds_count")], 3, delta)
        self.assertGreaterEqual(delta[("ingest", "tern_ingest_enqueue_call_seconds_count")], 1, delta)
        self.assertGreaterEqual(delta[("queue", "tern_queue_group_write_seconds_count")], 1, delta)
        self.assertGreaterEqual(delta[("queue", "tern_queue_rpc_seconds_count")], 3, delta)
        self.assertGreaterEqual(delta[("deliverer", "tern_deliverer_data_gate_seconds_count")], 3, delta)
        self.assertGreater(self.cluster.metric("ingest", "tern_ingest_enqueue_seconds_sum"), 0)


class QueueCrashTest(unittest.TestCase):
    def test_messages_survive_kill_9_of_the_queue(self):
        with Cluster() as cluster:
            sink = cluster.sinks["defer.test"]
            sink.set_rcpt_reply("451 4.3.0 Try again later")
            tags = [f"crash{i}" for i in range(5)]
            for tag in tags:
                send(cluster, "alice@sender.test", [f"{tag}@defer.test"], body(tag))
            cluster.wait_until(lambda: sink.rcpt_attempts >= 1, 30, "first attempts")
            cluster.kill("queue")
            # The deliverer keeps running and must reconnect by itself.
            sink.set_rcpt_reply("250 2.1.5 Ok")
            cluster.start("queue")
            got = cluster.wait_until(
                lambda: (lambda ms: ms if all(any(f"system test {t}".encode() in m.data for m in ms) for t in tags)
                         else None)(sink.received()),
                90, "all messages after the queue restart")
            for tag in tags:
                self.assertEqual(len([m for m in got if f"system test {tag}\r".encode() in m.data]), 1, tag)
            cluster.wait_until(lambda: int(cluster.stats().get("messages", -1)) == 0, 30, "queue drained")


if __name__ == "__main__":
    unittest.main()
