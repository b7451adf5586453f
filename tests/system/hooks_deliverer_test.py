"""The deliverer's hooks, end to end: send_email, get_mx, deferred, delivered.

A whole Tern (cluster.py) whose config/hooks.ini names a user's Hooks server
written with Python's grpcio (tests/fakes/hook_server.py). The hook answers
depend on the recipient, so one cluster serves every scenario:

  send_email  hold@...      DELAY 2 s the first time, then CONTINUE
              slow@...      sleeps past timeout_ms (the delivery goes on)
  get_mx      routed.test   ROUTES to the good.test sink (routed.test has no DNS)
              nomx.test     FAIL with the default reply
              later.test    DEFER with the hook's own text
              badroute@...  ROUTES with an impossible port (ignored: DNS decides)
              implicit@, required@  ROUTES to the plain sink with tls=
                            IMPLICIT / REQUIRED (must not deliver)
  deferred    later@defer.test     DELAY 1 s the first time
              bounceme@defer.test  BOUNCE with a reason (CR LF inside)
              dropme@defer.test    DROP
  delivered   every delivery is recorded

The queue's own retry schedule is 60 s, so a retry within seconds can only
come from the deferred hook.
"""

import sys
import threading
import time
import unittest
import urllib.request

from deliverer_test import deliverer_log_lines, send_for_id, ternctl_json, wait_for_last_result
from hook_cluster import HookClusterTestCase, pb



def body(tag):
    return (f"From: Alice <alice@sender.test>\r\nSubject: hooks {tag}\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nHello {tag}.\r\n").encode()


class Hooks:
    """The user's hook logic for this test (see the module comment)."""

    def __init__(self, mx_port):
        self.mx_port = mx_port
        self.lock = threading.Lock()
        self.held = set()      # delivery ids send_email has delayed once
        self.delayed_once = set()  # message ids the deferred hook has delayed once

    def send_email(self, req):
        m = pb()
        rcpt = req.delivery.recipients[0]
        if rcpt.startswith("slow@"):
            time.sleep(3)  # past timeout_ms=1000
        if rcpt.startswith("hold@"):
            with self.lock:
                first = req.delivery.delivery_id not in self.held
                self.held.add(req.delivery.delivery_id)
            if first:
                return m.SendEmailResponse(action=m.SEND_EMAIL_ACTION_DELAY, delay_seconds=2)
        return m.SendEmailResponse(action=m.SEND_EMAIL_ACTION_CONTINUE)

    def get_mx(self, req):
        m = pb()
        domain = req.delivery.domain
        rcpt = req.delivery.recipients[0]
        # TLS toward a hook's route: the good.test sink speaks plain text
        # and offers no STARTTLS, so neither of these may deliver.
        if rcpt.startswith("implicit@") or rcpt.startswith("required@"):
            tls = m.MX_ROUTE_TLS_IMPLICIT if rcpt.startswith("implicit@") else m.MX_ROUTE_TLS_REQUIRED
            return m.GetMxResponse(action=m.GET_MX_ACTION_ROUTES,
                                   routes=[m.MxRoute(host="127.0.0.2", port=self.mx_port, tls=tls)])
        if domain == "routed.test":
            return m.GetMxResponse(action=m.GET_MX_ACTION_ROUTES,
                                   routes=[m.MxRoute(host="127.0.0.2", port=self.mx_port)])
        if domain == "nomx.test":
            return m.GetMxResponse(action=m.GET_MX_ACTION_FAIL)
        if domain == "later.test":
            return m.GetMxResponse(action=m.GET_MX_ACTION_DEFER, reply_text="routing table is being rebuilt")
        if req.delivery.recipients[0].startswith("badroute@"):
            return m.GetMxResponse(action=m.GET_MX_ACTION_ROUTES,
                                   routes=[m.MxRoute(host="127.0.0.2", port=70000)])
        return m.GetMxResponse(action=m.GET_MX_ACTION_CONTINUE)

    def deferred(self, req):
        m = pb()
        rcpt = req.recipients[0]
        if rcpt.startswith("later@"):
            with self.lock:
                first = req.delivery.message_id not in self.delayed_once
                self.delayed_once.add(req.delivery.message_id)
            if first:
                return m.DeferredResponse(action=m.DEFERRED_ACTION_DELAY, delay_seconds=1)
        if rcpt.startswith("bounceme@"):
            return m.DeferredResponse(action=m.DEFERRED_ACTION_BOUNCE,
                                      reply_text="policy: gave up\r\nInjected: yes")
        if rcpt.startswith("dropme@"):
            return m.DeferredResponse(action=m.DEFERRED_ACTION_DROP)
        return m.DeferredResponse(action=m.DEFERRED_ACTION_CONTINUE)


class DelivererHooksTest(HookClusterTestCase):
    HOOKS = "send_email,get_mx,deferred,delivered"
    TIMEOUT_MS = 1000
    CLUSTER_OPTIONS = {"temp_fail_intervals": "60s*5"}
    hooks = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The answers need the cluster's ports, so they are set once it runs.
        cls.hooks = Hooks(cls.cluster.ports["mx"])
        for name in ("send_email", "get_mx", "deferred"):
            cls.server.set(name, getattr(cls.hooks, name))
        cls.server.set("delivered", pb().DeliveredResponse())

    def arrived(self, sink, tag, timeout=30):
        needle = f"Subject: hooks {tag}\r\n".encode()
        return self.cluster.wait_until(
            lambda: [t for t in self.cluster.sinks[sink].received() if needle in t.data], timeout,
            f"'{tag}' at the {sink} sink")

    def dsn_for(self, rcpt, timeout=30):
        """The DSN at the sender's sink that names `rcpt`."""
        return self.cluster.wait_until(
            lambda: [t for t in self.cluster.sinks["sender.test"].received()
                     if t.mail_from == "" and rcpt.encode() in t.data], timeout, f"a DSN for {rcpt}")[0]

    def log(self, needle):
        return deliverer_log_lines(self.cluster, needle)

    # -- send_email ---------------------------------------------------------
    def test_send_email_delay_holds_the_delivery_without_counting_an_attempt(self):
        start = time.time()
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["hold@good.test"], body("hold"))
        (got,) = self.arrived("good.test", "hold")
        self.assertEqual(got.rcpts, ["hold@good.test"])
        self.assertGreaterEqual(time.time() - start, 1.9, "delivered before the hook's 2 s delay")
        asked = [r for r in self.server.requests("send_email") if r.delivery.message_id == msg_id]
        self.assertEqual(len(asked), 2, asked)
        # Held is not tried: the second lease is still the first attempt.
        self.assertEqual([r.delivery.attempt for r in asked], [1, 1])
        self.assertEqual(asked[0].delivery.mail_from, "alice@sender.test")
        self.assertEqual(list(asked[0].delivery.recipients), ["hold@good.test"])
        (held,) = self.log(f"delivery_held msg={msg_id}")
        self.assertIn("seconds=2", held)

    def test_a_hook_slower_than_timeout_ms_is_logged_and_the_mail_goes_out(self):
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["slow@good.test"], body("slow"))
        self.arrived("good.test", "slow")
        (failed,) = self.log(f"id={msg_id}")
        self.assertIn("hook_failed hook=send_email", failed)
        self.assertIn("DEADLINE_EXCEEDED", failed)
        self.assertIn('fallback="delivering now"', failed)

    # -- get_mx -------------------------------------------------------------
    def test_get_mx_routes_deliver_to_the_hooks_host(self):
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["someone@routed.test"], body("routed"))
        (got,) = self.arrived("good.test", "routed")
        self.assertEqual(got.rcpts, ["someone@routed.test"])
        (line,) = [l for l in self.log(f"msg={msg_id}") if " delivery " in l]
        self.assertIn("status=sent", line)
        self.assertIn("relay=127.0.0.2", line)
        (routes,) = self.log(f"hook_routes msg={msg_id}")
        self.assertIn("domain=routed.test", routes)

    def test_get_mx_route_tls_is_honoured(self):
        for local, status, words in (("implicit", "4.7.5", "implicit TLS with host 127.0.0.2"),
                                     ("required", "4.7.4", "does not offer STARTTLS")):
            msg_id = send_for_id(self.cluster, "alice@sender.test", [f"{local}@routed.test"], body(f"tls {local}"))
            try:
                shown = wait_for_last_result(self.cluster, msg_id, 30)
                (rcpt,) = shown["deliveries"][0]["recipients"]
                self.assertEqual(rcpt["state"], "deferred", rcpt)
                self.assertEqual(rcpt["last_result"]["enhanced_status"], status, rcpt)
                self.assertIn(words, rcpt["last_result"]["reply_text"])
                self.assertEqual([m for m in self.cluster.sinks["good.test"].received()
                                  if f"tls {local}".encode() in m.data], [])
            finally:
                ternctl_json(self.cluster, "delete", msg_id, "--yes")

    def test_get_mx_fail_bounces_with_no_mx_for_the_domain(self):
        send_for_id(self.cluster, "alice@sender.test", ["x@nomx.test"], body("nomx"))
        dsn = self.dsn_for("x@nomx.test").data.decode("utf-8", "replace")
        self.assertIn("Status: 5.1.2", dsn)
        self.assertIn("No MX for nomx.test", dsn)

    def test_get_mx_defer_keeps_the_message_with_the_hooks_reason(self):
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["x@later.test"], body("later"))
        shown = wait_for_last_result(self.cluster, msg_id, 30)
        (rcpt,) = shown["deliveries"][0]["recipients"]
        self.assertEqual(rcpt["state"], "deferred", rcpt)
        result = rcpt["last_result"]
        self.assertEqual(result["enhanced_status"], "4.1.2", result)
        self.assertEqual(result["reply_code"], 450, result)
        self.assertEqual(result["reply_text"], "routing table is being rebuilt", result)

    def test_an_invalid_get_mx_answer_is_ignored_and_dns_decides(self):
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["badroute@good.test"], body("badroute"))
        (got,) = self.arrived("good.test", "badroute")
        self.assertEqual(got.rcpts, ["badroute@good.test"])
        (failed,) = self.log(f"id={msg_id}")
        self.assertIn("hook_failed hook=get_mx", failed)
        self.assertIn("70000", failed)
        self.assertIn('fallback="looking up DNS"', failed)

    # -- deferred -----------------------------------------------------------
    def test_deferred_delay_retries_after_the_hooks_delay_and_counts_the_attempt(self):
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["later@defer.test"], body("deferred later"))

        def asked():
            got = [r for r in self.server.requests("deferred") if r.delivery.message_id == msg_id]
            return got if len(got) >= 2 else None
        first, second = self.cluster.wait_until(asked, 20, "a second attempt after the hook's 1 s")[:2]
        self.assertEqual((first.delivery.attempt, second.delivery.attempt), (1, 2))
        self.assertEqual(list(first.recipients), ["later@defer.test"])
        self.assertEqual(first.results[0].reply_code, 451)
        self.assertEqual(first.results[0].enhanced_status, "4.3.0")
        # After its one DELAY the hook answers CONTINUE: the queue's 60 s.
        shown = ternctl_json(self.cluster, "show", msg_id)
        (rcpt,) = shown["deliveries"][0]["recipients"]
        self.assertEqual(rcpt["state"], "deferred", rcpt)
        (delay_line,) = self.log(f"hook_deferred msg={msg_id}")
        self.assertIn("action=delay", delay_line)

    def test_deferred_bounce_fails_now_with_the_hooks_reason_in_the_dsn(self):
        send_for_id(self.cluster, "alice@sender.test", ["bounceme@defer.test"], body("deferred bounce"))
        dsn = self.dsn_for("bounceme@defer.test").data.decode("utf-8", "replace")
        self.assertIn("Status: 5.3.0", dsn)
        self.assertIn("policy: gave up", dsn)
        # The hook's CR LF did not become a header line of its own.
        self.assertNotIn("\r\nInjected:", dsn)

    def test_deferred_drop_fails_the_recipient_without_a_dsn(self):
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["dropme@defer.test"], body("deferred drop"))
        self.cluster.wait_until(lambda: self.log(f"hook_deferred msg={msg_id}"), 30, "the deferred hook's drop")
        (line,) = self.log(f"hook_deferred msg={msg_id}")
        self.assertIn("action=drop", line)
        # The message is done (nothing left to try) and no DSN names it.
        def gone():
            try:
                ternctl_json(self.cluster, "show", msg_id)
                return False
            except AssertionError:
                return True
        self.cluster.wait_until(gone, 30, f"{msg_id} to leave the queue")
        # A DSN would have been queued and sent by now; wait a little anyway.
        time.sleep(3)
        self.assertFalse([t for t in self.cluster.sinks["sender.test"].received()
                          if b"dropme@defer.test" in t.data])

    # -- delivered ----------------------------------------------------------
    def test_delivered_tells_the_hook_where_each_recipient_went(self):
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["notify@good.test", "notify2@good.test"],
                             body("notify"))
        self.arrived("good.test", "notify")
        told = self.cluster.wait_until(
            lambda: [r for r in self.server.requests("delivered") if r.delivery.message_id == msg_id], 20,
            "the delivered notification")
        (req,) = told
        self.assertEqual(sorted(req.recipients), ["notify2@good.test", "notify@good.test"])
        outcomes = sys.modules["tern.v1.message_pb2"]
        for result in req.results:
            self.assertEqual(result.outcome, outcomes.OUTCOME_DELIVERED)
            self.assertEqual(result.reply_code, 250)
            self.assertEqual(result.remote_ip, "127.0.0.2")
        counted = self.cluster.wait_until(
            lambda: self.hook_calls("delivered", "continue") >= 1, 10, "tern_hook_calls_total for delivered")
        self.assertTrue(counted)

    def hook_calls(self, hook, result):
        url = f"http://127.0.0.1:{self.cluster.ports['m_deliverer']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        series = f'tern_hook_calls_total{{hook="{hook}",result="{result}"}} '
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(series))

if __name__ == "__main__":
    unittest.main()
