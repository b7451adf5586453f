"""Ingest's queue_outbound hook, end to end: Hooks.QueueOutbound after the
final dot and before the message is queued.

A whole Tern (cluster.py) whose config/hooks.ini names a user's Hooks server
written with Python's grpcio (tests/fakes/hook_server.py). The hook's answer
depends on the sender's local part, so one cluster serves every scenario:

  cont@      CONTINUE: queued and delivered as usual
  reject@    REJECT 550 "5.7.1 no thanks": the client gets it, nothing is queued
  soft@      REJECT 451 with an empty text: a generic 4.7.1 reply
  take@      TAKE_OVER: the client gets 250, nothing is queued
  slow@      sleeps past timeout_ms, then TAKE_OVER (too late): delivered anyway
  badcode@   REJECT with 250 (invalid): delivered anyway

and one test switches the hook off on the server (UNIMPLEMENTED). Messages
over tern.ini enqueue_inline_max (256 KiB) stream to the queue while DATA is
read; the hook must see and stop those too.
"""

import os
import smtplib
import time
import unittest

from hook_cluster import HookClusterTestCase, pb

TIMEOUT_MS = 300
BIG = 400 * 1024  # over enqueue_inline_max: streamed to the queue


def body(tag, sender, filler=0):
    text = (f"From: <{sender}>\r\nTo: <x@good.test>\r\nSubject: queue_outbound {tag}\r\n"
            f"Message-Id: <{tag}@client.test>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n"
            f"Body of {tag}.\r\n")
    text += ("y" * 70 + "\r\n") * (filler // 72)
    return text.encode()


def queue_outbound(req):
    m = pb()
    local = req.envelope.mail_from.split("@", 1)[0]
    if local == "reject":
        return m.QueueOutboundResponse(action=m.QUEUE_OUTBOUND_ACTION_REJECT, reply_code=550,
                                       reply_text="5.7.1 no thanks")
    if local == "soft":
        return m.QueueOutboundResponse(action=m.QUEUE_OUTBOUND_ACTION_REJECT, reply_code=451)
    if local == "take":
        return m.QueueOutboundResponse(action=m.QUEUE_OUTBOUND_ACTION_TAKE_OVER)
    if local == "slow":
        time.sleep(5 * TIMEOUT_MS / 1000)
        return m.QueueOutboundResponse(action=m.QUEUE_OUTBOUND_ACTION_TAKE_OVER)  # too late to count
    if local == "badcode":
        return m.QueueOutboundResponse(action=m.QUEUE_OUTBOUND_ACTION_REJECT, reply_code=250, reply_text="ok")
    return m.QueueOutboundResponse(action=m.QUEUE_OUTBOUND_ACTION_CONTINUE)


class IngestHookTest(HookClusterTestCase):
    HOOKS = "queue_outbound"
    TIMEOUT_MS = TIMEOUT_MS

    @classmethod
    def answers(cls):
        return {"queue_outbound": queue_outbound}

    # -- helpers --------------------------------------------------------------
    def transaction(self, s, sender, rcpts, data):
        """MAIL, RCPTs and DATA on an open smtplib session; returns DATA's (code, text)."""
        code, reply = s.mail(sender)
        self.assertEqual(code, 250, reply)
        for r in rcpts:
            code, reply = s.rcpt(r)
            self.assertEqual(code, 250, reply)
        code, reply = s.data(data)
        return code, reply.decode()

    def send(self, sender, rcpts, data):
        host, port = self.cluster.smtp_address()
        with smtplib.SMTP(host, port, timeout=30) as s:
            s.ehlo("client.test")
            return self.transaction(s, sender, rcpts, data)

    def at_sink(self, tag):
        needle = f"Subject: queue_outbound {tag}\r\n".encode()
        return [m for m in self.cluster.sinks["good.test"].received() if needle in m.data]

    def asked(self, tag):
        needle = f"Subject: queue_outbound {tag}\r\n".encode()
        return [r for r in self.server.requests("queue_outbound") if needle in r.body]

    def ingest_log(self, needle):
        with open(os.path.join(self.cluster.logs, "ingest.log"), "rb") as f:
            return [l for l in f.read().decode("utf-8", "replace").splitlines() if needle in l]

    def hook_calls(self, result):
        return self.cluster.metric("ingest", f'tern_hook_calls_total{{hook="queue_outbound",result="{result}"}}')

    def enqueue_calls(self):
        return sum(self.cluster.metric("queue", f'tern_queue_rpc_calls_total{{method="{method}"}}')
                   for method in ("Enqueue", "EnqueueBatch"))

    def queue_empty(self):
        return int(self.cluster.stats().get("messages", 0)) == 0

    def assert_nothing_queued(self, tag, send):
        """Runs send() once the queue is empty and checks that it queued nothing."""
        self.cluster.wait_until(self.queue_empty, 60, "earlier messages to leave the queue")
        calls = self.enqueue_calls()
        queued = self.cluster.metric("ingest", 'tern_ingest_messages_total{outcome="queued"}')
        result = send()
        self.assertEqual(self.enqueue_calls(), calls, "the queue was asked to store the message")
        self.assertEqual(self.cluster.metric("ingest", 'tern_ingest_messages_total{outcome="queued"}'), queued)
        self.assertTrue(self.queue_empty(), self.cluster.stats())
        time.sleep(1)  # what would have been queued would reach the sink within this
        self.assertEqual(self.at_sink(tag), [])
        return result

    # -- CONTINUE -------------------------------------------------------------
    def test_continue_delivers_and_the_hook_saw_the_envelope_and_the_queued_body(self):
        continued = self.hook_calls("continue")
        code, reply = self.send("cont@sender.test", ["a@good.test", "b@good.test"], body("cont", "cont@sender.test"))
        self.assertEqual(code, 250, reply)
        self.assertIn("queued as", reply)
        (msg,) = self.cluster.wait_until(lambda: self.at_sink("cont"), 60, "the message at good.test")
        (req,) = self.asked("cont")
        self.assertEqual(req.envelope.mail_from, "cont@sender.test")
        self.assertEqual([r.address for r in req.envelope.recipients], ["a@good.test", "b@good.test"])
        self.assertEqual(req.envelope.client.ip, "127.0.0.1")
        self.assertEqual(req.envelope.client.helo, "client.test")
        self.assertTrue(req.session_id)
        # The body as queued: with ingest's Received: header first, not dot-stuffed.
        self.assertTrue(req.body.startswith(b"Received: from client.test"), req.body[:80])
        self.assertIn(b"Body of cont.\r\n", req.body)
        self.assertEqual(req.body, msg.data)
        self.assertEqual(self.hook_calls("continue"), continued + 1)

    def test_continue_on_a_streamed_message_delivers_all_of_it(self):
        code, reply = self.send("cont@sender.test", ["big@good.test"], body("bigcont", "cont@sender.test", BIG))
        self.assertEqual(code, 250, reply)
        (msg,) = self.cluster.wait_until(lambda: self.at_sink("bigcont"), 60, "the big message at good.test")
        (req,) = self.asked("bigcont")
        self.assertGreater(len(req.body), BIG)
        self.assertEqual(req.body, msg.data)

    # -- REJECT ---------------------------------------------------------------
    def test_reject_answers_the_hooks_reply_queues_nothing_and_the_session_goes_on(self):
        applied = self.hook_calls("applied")
        host, port = self.cluster.smtp_address()
        with smtplib.SMTP(host, port, timeout=30) as s:
            s.ehlo("client.test")
            code, reply = self.assert_nothing_queued(
                "reject", lambda: self.transaction(s, "reject@sender.test", ["x@good.test"],
                                                   body("reject", "reject@sender.test")))
            self.assertEqual(code, 550)
            self.assertEqual(reply, "5.7.1 no thanks")
            # The transaction is over: the next one in the same session works.
            code, reply = self.transaction(s, "cont@sender.test", ["x@good.test"], body("after", "cont@sender.test"))
            self.assertEqual(code, 250, reply)
        self.cluster.wait_until(lambda: self.at_sink("after"), 60, "the next message at good.test")
        (line,) = self.ingest_log("hook_rejected")
        self.assertIn("from=reject@sender.test", line)
        self.assertIn("5.7.1 no thanks", line)
        self.assertEqual(self.hook_calls("applied"), applied + 1)

    def test_reject_without_text_gets_a_generic_reply_with_an_enhanced_code(self):
        code, reply = self.send("soft@sender.test", ["x@good.test"], body("soft", "soft@sender.test"))
        self.assertEqual(code, 451)
        self.assertTrue(reply.startswith("4.7.1 "), reply)
        self.assertIn("try again later", reply)

    def test_reject_of_a_streamed_message_cancels_it_in_the_queue(self):
        code, reply = self.assert_nothing_queued(
            "bigreject", lambda: self.send("reject@sender.test", ["x@good.test"],
                                           body("bigreject", "reject@sender.test", BIG)))
        self.assertEqual(code, 550)
        self.assertEqual(reply, "5.7.1 no thanks")
        (req,) = self.asked("bigreject")
        self.assertGreater(len(req.body), BIG)

    # -- TAKE_OVER ------------------------------------------------------------
    def test_take_over_answers_250_and_queues_nothing(self):
        taken = self.cluster.metric("ingest", 'tern_ingest_messages_total{outcome="taken_over"}')
        code, reply = self.assert_nothing_queued(
            "take", lambda: self.send("take@sender.test", ["x@good.test"], body("take", "take@sender.test")))
        self.assertEqual(code, 250)
        self.assertIn("accepted by hook", reply)
        (req,) = self.asked("take")
        (line,) = self.ingest_log("message_taken_over")
        self.assertIn(f"session={req.session_id}", line)
        self.assertIn("from=take@sender.test", line)
        self.assertEqual(self.cluster.metric("ingest", 'tern_ingest_messages_total{outcome="taken_over"}'), taken + 1)

    # -- failures: queued as usual ---------------------------------------------
    def test_a_hook_slower_than_timeout_ms_changes_nothing(self):
        start = time.time()
        code, reply = self.send("slow@sender.test", ["x@good.test"], body("slow", "slow@sender.test"))
        self.assertEqual(code, 250, reply)
        self.assertIn("queued as", reply)
        self.assertLess(time.time() - start, 5 * TIMEOUT_MS / 1000, "ingest waited for the slow hook")
        self.cluster.wait_until(lambda: self.at_sink("slow"), 60, "the message at good.test")
        lines = self.cluster.wait_until(lambda: self.ingest_log("hook_failed hook=queue_outbound"), 10, "hook_failed")
        self.assertTrue(any("DEADLINE_EXCEEDED" in l and 'fallback="queued as usual"' in l for l in lines), lines)

    def test_an_invalid_reply_code_is_a_failure_and_the_message_is_delivered(self):
        code, reply = self.send("badcode@sender.test", ["x@good.test"], body("badcode", "badcode@sender.test"))
        self.assertEqual(code, 250, reply)
        self.assertIn("queued as", reply)
        self.cluster.wait_until(lambda: self.at_sink("badcode"), 60, "the message at good.test")
        self.assertTrue(any("reply code 250" in l for l in self.ingest_log("hook_failed hook=queue_outbound")))

    def test_an_unimplemented_hook_changes_nothing(self):
        failed = self.hook_calls("failed")
        self.server.set("queue_outbound", None)
        try:
            code, reply = self.send("reject@sender.test", ["x@good.test"], body("unimpl", "reject@sender.test"))
        finally:
            self.server.set("queue_outbound", queue_outbound)
        self.assertEqual(code, 250, reply)
        self.cluster.wait_until(lambda: self.at_sink("unimpl"), 60, "the message at good.test")
        self.assertTrue(any("UNIMPLEMENTED" in l for l in self.ingest_log("hook_failed hook=queue_outbound")))
        self.assertEqual(self.hook_calls("failed"), failed + 1)


if __name__ == "__main__":
    unittest.main()
