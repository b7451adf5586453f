"""The bouncer's hook, end to end: Hooks.Bounce before each DSN.

A whole Tern (cluster.py) whose config/hooks.ini names a user's Hooks server
written with Python's grpcio (tests/fakes/hook_server.py). Every message goes
to a recipient at reject.test, whose sink answers RCPT with 550, so each one
bounces; the hook's answer depends on the original sender (who would receive
the DSN), so one cluster serves every scenario:

  keep@sender.test    CONTINUE: the DSN is sent
  quiet@sender.test   SUPPRESS: no DSN, the bounce is acknowledged
  slow@sender.test    sleeps past timeout_ms: the DSN is sent anyway
  broken@sender.test  raises (the server answers UNKNOWN): the DSN is sent anyway

and one test switches the hook off on the server (UNIMPLEMENTED).
"""

import os
import sys
import time
import unittest

from deliverer_test import send_for_id, ternctl_json
from hook_cluster import HookClusterTestCase, pb


TIMEOUT_MS = 1000


def body(tag, sender):
    return (f"From: <{sender}>\r\nTo: <x@reject.test>\r\nSubject: bounce hook {tag}\r\n"
            f"Message-Id: <{tag}@client.test>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n"
            f"Body of {tag}.\r\n").encode()


def bounce_hook(req):
    m = pb()
    if req.mail_from.startswith("quiet@"):
        return m.BounceResponse(action=m.BOUNCE_ACTION_SUPPRESS)
    if req.mail_from.startswith("slow@"):
        time.sleep(3 * TIMEOUT_MS / 1000)
        return m.BounceResponse(action=m.BOUNCE_ACTION_SUPPRESS)  # too late to count
    if req.mail_from.startswith("broken@"):
        raise RuntimeError("the hook's own bug")
    return m.BounceResponse(action=m.BOUNCE_ACTION_CONTINUE)


class BouncerHookTest(HookClusterTestCase):
    HOOKS = "bounce"
    TIMEOUT_MS = TIMEOUT_MS

    @classmethod
    def answers(cls):
        return {"bounce": bounce_hook}

    # -- helpers --------------------------------------------------------------
    def bounce(self, tag, sender, rcpt="x@reject.test"):
        """Sends a message that bounces; returns its queue id."""
        return send_for_id(self.cluster, sender, [rcpt], body(tag, sender))

    def dsns(self, tag):
        needle = f"Subject: bounce hook {tag}\r\n".encode()
        return [m for m in self.cluster.sinks["sender.test"].received() if m.mail_from == "" and needle in m.data]

    def asked(self, msg_id):
        return [r for r in self.server.requests("bounce") if r.message_id == msg_id]

    def log(self, service, needle):
        with open(os.path.join(self.cluster.logs, f"{service}.log"), "rb") as f:
            return [l for l in f.read().decode("utf-8", "replace").splitlines() if needle in l]

    def bouncer_log(self, needle):
        return self.log("bouncer", needle)

    def in_queue(self, msg_id):
        try:
            ternctl_json(self.cluster, "show", msg_id)
            return True
        except AssertionError:
            return False

    def hook_calls(self, result):
        series = f'tern_hook_calls_total{{hook="bounce",result="{result}"}}'
        return self.cluster.metric("bouncer", series)

    # -- CONTINUE -------------------------------------------------------------
    def test_continue_sends_the_dsn_and_the_hook_saw_sender_recipient_and_result(self):
        msg_id = self.bounce("keep", "keep@sender.test")
        (dsn,) = self.cluster.wait_until(lambda: self.dsns("keep"), 60, "the DSN at sender.test")
        self.assertEqual(dsn.rcpts, ["keep@sender.test"])
        self.assertIn(b"Final-Recipient: rfc822;x@reject.test", dsn.data)
        (req,) = self.asked(msg_id)
        self.assertEqual(req.mail_from, "keep@sender.test")
        self.assertEqual(req.kind, sys.modules["tern.v1.queue_pb2"].BOUNCE_KIND_FAILED)
        self.assertTrue(req.bounce_id.startswith(msg_id), req.bounce_id)
        self.assertEqual(list(req.recipients), ["x@reject.test"])
        self.assertEqual(len(req.results), 1)
        self.assertEqual(req.results[0].reply_code, 550)
        self.assertEqual(req.results[0].enhanced_status, "5.1.1")
        self.assertIn("No such user here", req.results[0].reply_text)
        self.assertEqual(req.results[0].outcome, sys.modules["tern.v1.message_pb2"].OUTCOME_PERMANENT)

    # -- SUPPRESS -------------------------------------------------------------
    def test_suppress_sends_no_dsn_and_the_bounce_is_acknowledged(self):
        msg_id = self.bounce("quiet", "quiet@sender.test")
        (line,) = self.cluster.wait_until(lambda: self.bouncer_log(f"dsn_suppressed bounce={msg_id}"), 60,
                                          "the bouncer to suppress the DSN")
        self.assertIn("why=hook", line)
        self.assertIn("to=quiet@sender.test", line)
        # Acknowledged: the queue lets go of the message (an unacknowledged
        # bounce would keep it until the lease expired, then ask again).
        self.cluster.wait_until(lambda: not self.in_queue(msg_id), 30, f"{msg_id} to leave the queue")
        (done,) = self.log("queue", f"bounce_done bounce={msg_id}.")
        self.assertIn("dsn_msg=none", done)
        self.assertEqual(len(self.asked(msg_id)), 1)
        self.assertGreaterEqual(self.cluster.metric("bouncer", 'tern_bouncer_suppressed_total{reason="hook"}'), 1)
        self.assertGreaterEqual(self.hook_calls("applied"), 1)
        # A DSN would have reached the sink within a second or two; give it 5 s.
        time.sleep(5)
        self.assertEqual(self.dsns("quiet"), [])
        self.assertEqual(len(self.asked(msg_id)), 1)

    # -- failures ----------------------------------------------------------------
    def test_a_hook_slower_than_timeout_ms_is_logged_and_the_dsn_goes_out(self):
        msg_id = self.bounce("slow", "slow@sender.test")
        (dsn,) = self.cluster.wait_until(lambda: self.dsns("slow"), 60, "the DSN despite the slow hook")
        self.assertEqual(dsn.rcpts, ["slow@sender.test"])
        (failed,) = self.bouncer_log(f"hook_failed hook=bounce id={msg_id}")
        self.assertIn("DEADLINE_EXCEEDED", failed)
        self.assertIn('fallback="DSN sent"', failed)
        self.cluster.wait_until(lambda: not self.in_queue(msg_id), 30, f"{msg_id} to leave the queue")

    def test_a_hook_that_errs_is_logged_and_the_dsn_goes_out(self):
        msg_id = self.bounce("broken", "broken@sender.test")
        self.cluster.wait_until(lambda: self.dsns("broken"), 60, "the DSN despite the failing hook")
        (failed,) = self.bouncer_log(f"hook_failed hook=bounce id={msg_id}")
        self.assertIn("UNKNOWN", failed)
        self.assertIn('fallback="DSN sent"', failed)

    def test_an_unimplemented_hook_is_logged_and_the_dsn_goes_out(self):
        self.server.set("bounce", None)
        try:
            msg_id = self.bounce("unimplemented", "keep@sender.test")
            self.cluster.wait_until(lambda: self.dsns("unimplemented"), 60, "the DSN without the hook")
        finally:
            self.server.set("bounce", bounce_hook)
        (failed,) = self.bouncer_log(f"hook_failed hook=bounce id={msg_id}")
        self.assertIn("UNIMPLEMENTED", failed)
        self.assertIn('fallback="DSN sent"', failed)
        self.assertGreaterEqual(self.hook_calls("failed"), 1)


if __name__ == "__main__":
    unittest.main()
