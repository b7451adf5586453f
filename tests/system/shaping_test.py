"""Whole-system tests of the queue's per-destination limits: the concurrency
limit (tern.ini [queue] destination_concurrency_max) and the start rate
(shaping.ini rate_max). However many deliveries of one domain are due, no
more than the limit are in transactions with its MX at once, or start faster
than the rate, other domains are not held up, and everything arrives."""

import json
import os
import smtplib
import subprocess
import unittest

from cluster import Cluster, ClusterTestCase, binary

LIMIT = 2
MESSAGES = 12

RATE = int(os.environ.get("TERN_TEST_SHAPING_RATE", "5"))  # good.test: bursts of 5, then one every 200 ms
RATED_MESSAGES = 15


class DestinationConcurrencyTest(ClusterTestCase):

    @classmethod
    def make_cluster(cls):
        return Cluster(queue_ini_extra=f"destination_concurrency_max={LIMIT}")

    def test_a_slow_destination_never_has_more_than_the_limit_in_flight_and_gets_everything(self):
        sink = self.cluster.sinks["good.test"]
        sink.dot_delay = 0.3  # long enough for every due delivery to be wanted at once
        self.cluster.send_burst("shaping", MESSAGES)
        got = self.cluster.wait_for_burst("shaping", MESSAGES)
        self.assertEqual(len(got), MESSAGES)
        self.assertLessEqual(sink.max_active, LIMIT)
        self.assertGreaterEqual(sink.max_active, 1)
        self.assertEqual(self.cluster.stats()["deliveries"], 0)


class RateShapedCluster(Cluster):
    def _write_config(self):
        super()._write_config()
        # Upper case on purpose: sections are domains, matched as the queue
        # stores them.
        with open(os.path.join(self.config, "shaping.ini"), "w") as f:
            f.write(f"[GOOD.test]\nrate_max={RATE}/s\n")


class DestinationRateTest(ClusterTestCase):

    @classmethod
    def make_cluster(cls):
        return RateShapedCluster()

    def test_a_rate_limited_destination_gets_its_mail_spaced_out_and_others_are_not_held_up(self):
        self.cluster.send_burst("rated", RATED_MESSAGES)
        # Sent while good.test's backlog waits for its rate: not held up.
        self.cluster.send_burst("unrated", 3, domain="sender.test")
        others = self.cluster.wait_for_burst("unrated", 3, domain="sender.test")
        got = self.cluster.wait_for_burst("rated", RATED_MESSAGES, timeout=60)
        self.assertEqual(len(got), RATED_MESSAGES)
        arrivals = sorted(m.received_at for m in got)
        # The first 5 may go at once; each further one needs 1/5 s of the
        # bucket: 2 s for 15. The margin covers delivery jitter (a start is
        # the lease, the arrival a few ms later); unshaped, the 15 arrive
        # within a fraction of a second.
        span = arrivals[-1] - arrivals[0]
        self.assertGreaterEqual(span, (RATED_MESSAGES - 5) / 5 - 0.4, arrivals)
        # ...and the rate is used, not starved (released by each Lease or tick).
        self.assertLess(span, (RATED_MESSAGES - 5) / 5 + 4, arrivals)
        # No second of arrivals holds more than the burst and one second's
        # starts, plus one for jitter.
        for t in arrivals:
            self.assertLessEqual(sum(1 for u in arrivals if t <= u < t + 1.0), 2 * 5 + 1, arrivals)
        self.assertLess(max(m.received_at for m in others), arrivals[-1],
                        "sender.test waited behind good.test's rate")
        self.assertGreater(self.cluster.metric("queue", "tern_queue_throttled_total"), 0)
        self.assertEqual(self.cluster.stats()["deliveries"], 0)

    def test_explain_names_the_rate_a_delivery_waits_for(self):
        count = 25  # 4 s of backlog at 5/s
        self.cluster.send_burst("explained", count)
        queue = f"127.0.0.1:{self.cluster.ports['queue']}"

        def waiting():
            out = subprocess.run([binary("ternctl"), "--queue", queue, "list", "--state", "due"],
                                 capture_output=True, text=True, timeout=30)
            ids = [line.split()[0] for line in out.stdout.splitlines()[1:] if line.strip()]
            for msg_id in ids[:3]:
                shown = subprocess.run([binary("ternctl"), "--queue", queue, "explain", msg_id],
                                       capture_output=True, text=True, timeout=30)
                if "rate_max=" in shown.stdout:
                    return shown.stdout
            return None
        text = self.cluster.wait_until(waiting, 20, "a delivery explained as waiting for good.test's rate")
        self.assertIn(f"waiting for a slot: good.test has rate_max={RATE}/s starts used up", text)
        self.cluster.wait_for_burst("explained", count)


class CongestionBackoffTest(ClusterTestCase):
    """shaping.ini backoff (on by default): a 421 from the destination
    lowers how many of its deliveries may be out, and successes raise it."""

    @classmethod
    def make_cluster(cls):
        return Cluster()  # temp_fail_intervals=5s*100: retries come quickly

    def test_421s_make_the_retries_go_one_then_two_at_a_time(self):
        sink = self.cluster.sinks["good.test"]
        sink.set_rcpt_reply("421 4.7.0 Too many connections from your IP, slow down")
        self.cluster.send_burst("congested", 4)
        log = os.path.join(self.cluster.logs, "queue.log")

        def backoffs():
            with open(log, "rb") as f:
                lines = [l for l in f.read().decode("utf-8", "replace").splitlines()
                         if "destination_backoff " in l and "domain=good.test" in l]
            return lines if len(lines) >= 4 else None
        lines = self.cluster.wait_until(backoffs, 30, "four 421 replies lowering good.test's concurrency")
        self.assertIn("concurrency=1", lines[-1])
        self.assertIn("Too many connections", lines[-1])
        with sink.lock:
            sink.rcpt_reply = "250 2.1.5 Ok"
            sink.max_active = 0
        sink.dot_delay = 0.3  # so that deliveries allowed at once overlap
        got = self.cluster.wait_for_burst("congested", 4, timeout=60)
        self.assertEqual(len(got), 4)
        # Unshaped, the four retries (due within milliseconds of each other)
        # would all be in transactions at once; backed off they go one, then
        # two (each success lets one more go).
        self.assertLessEqual(sink.max_active, 2)
        self.assertGreaterEqual(self.cluster.metric("queue", "tern_queue_destination_backoffs_total"), 4)


class HourlyRateCluster(Cluster):
    def _write_config(self):
        super()._write_config()
        with open(os.path.join(self.config, "shaping.ini"), "w") as f:
            f.write("[good.test]\nrate_max=1/h\n")


class ShapingReloadTest(ClusterTestCase):
    """The queue reads shaping.ini, outbound.ini and tern.ini again when they
    change, with no signal and no restart: new limits apply to the mail
    already waiting, a file that does not load changes nothing, and a
    setting only a restart applies is named."""

    @classmethod
    def make_cluster(cls):
        return HourlyRateCluster()

    def queue_log_line(self, start, event, timeout=20, service="queue"):
        log = os.path.join(self.cluster.logs, f"{service}.log")

        def found():
            with open(log, "rb") as f:
                f.seek(start)
                lines = [l for l in f.read().decode("utf-8", "replace").splitlines() if f" {event} " in l + " "]
            return lines[0] if lines else None
        return self.cluster.wait_until(found, timeout, f"{event} in the queue's log")

    def test_a_changed_shaping_ini_applies_to_waiting_mail_without_a_restart(self):
        queue_pid = self.cluster.procs["queue"].pid
        log = os.path.join(self.cluster.logs, "queue.log")
        self.cluster.send_burst("hourly", 4)
        # One start an hour: the first goes, three wait.
        self.cluster.wait_for_burst("hourly", 1)
        self.cluster.wait_until(lambda: self.cluster.stats()["deliveries"] == 3, 20, "three deliveries waiting")

        start = os.path.getsize(log)
        shaping = os.path.join(self.cluster.config, "shaping.ini")
        with open(shaping, "w") as f:
            f.write("[good.test]\nrate_max=1/h\nconcurency_max=1\n")  # misspelt key: does not load
        line = self.queue_log_line(start, "reload_failed")
        self.assertIn("concurency_max", line)
        self.assertEqual(self.cluster.stats()["deliveries"], 3)  # the running limits stay
        # What an operator alerts on: the next restart would stop at this file.
        self.assertEqual(self.cluster.metric("queue", "tern_config_last_reload_successful"), 0)
        self.assertGreaterEqual(self.cluster.metric("queue", 'tern_config_reloads_total{result="failed"}'), 1)

        start = os.path.getsize(log)
        with open(shaping, "w") as f:
            f.write("[good.test]\nconcurrency_max=10\n")
        got = self.cluster.wait_for_burst("hourly", 4, timeout=30)
        self.assertEqual(len(got), 4)
        self.assertIn("shaping_sections=1", self.queue_log_line(start, "config_reloaded"))
        self.assertEqual(self.cluster.metric("queue", "tern_config_last_reload_successful"), 1)

        start = os.path.getsize(log)
        tern_ini = os.path.join(self.cluster.config, "tern.ini")
        with open(tern_ini) as f:
            text = f.read()
        with open(tern_ini, "w") as f:
            f.write(text.replace("[queue]\n", "[queue]\nwal_prefill_bytes=1048576\n", 1))
        self.assertIn("tern.ini [queue] wal_prefill_bytes", self.queue_log_line(start, "reload_needs_restart"))
        self.assertIsNone(self.cluster.procs["queue"].poll())
        self.assertEqual(self.cluster.procs["queue"].pid, queue_pid)

    def test_the_deliverer_applies_a_new_route_and_names_what_only_its_restart_applies(self):
        log = os.path.join(self.cluster.logs, "deliverer.log")
        tern_ini = os.path.join(self.cluster.config, "tern.ini")
        routes = os.path.join(self.cluster.config, "outbound_routes.ini")
        with open(tern_ini) as f:
            original = f.read()
        try:
            # A route for defer.test (whose own MX answers 451) to good.test's
            # MX: applied without a restart, to the mail sent after it.
            start = os.path.getsize(log)
            with open(routes, "w") as f:
                f.write(f"[defer.test]\nhost=127.0.0.2:{self.cluster.ports['mx']}\n")
            self.queue_log_line(start, "config_reloaded", service="deliverer")
            self.cluster.send_burst("rerouted", 2, domain="defer.test")
            got = self.cluster.wait_for_burst("rerouted", 2, domain="good.test")
            self.assertEqual(sorted(r for m in got for r in m.rcpts), ["user0@defer.test", "user1@defer.test"])

            start = os.path.getsize(log)
            with open(tern_ini, "w") as f:
                f.write(original.replace("[deliverer]\n", "[deliverer]\nlease_batch=7\n", 1))
            line = self.queue_log_line(start, "reload_needs_restart", service="deliverer")
            self.assertIn("tern.ini [deliverer] lease_batch", line)

            start = os.path.getsize(log)
            with open(routes, "w") as f:
                f.write("[example.com]\nhost=bad host\n")
            line = self.queue_log_line(start, "reload_failed", service="deliverer")
            self.assertIn("outbound_routes.ini", line)
            self.assertIn("a restart with these files would fail", line)
            self.assertEqual(self.cluster.metric("deliverer", "tern_config_last_reload_successful"), 0)
        finally:
            with open(tern_ini, "w") as f:
                f.write(original)
            if os.path.exists(routes):
                os.remove(routes)
        # Still delivering.
        self.cluster.send_burst("after-reloads", 2, domain="sender.test")
        self.assertEqual(len(self.cluster.wait_for_burst("after-reloads", 2, domain="sender.test")), 2)


class SiteShapedCluster(Cluster):
    """hosted-a.test and hosted-b.test have MX hosts under bigmail.test (the
    good.test sink serves both); shaping.ini makes bigmail.test an MX site
    with one delivery out at a time."""

    def dns_extra_args(self):
        return super().dns_extra_args() + [
            "--mx-host=hosted-a.test,mx1.bigmail.test,10", "--host-record=mx1.bigmail.test,127.0.0.2",
            "--mx-host=hosted-b.test,mx2.bigmail.test,10", "--host-record=mx2.bigmail.test,127.0.0.2",
        ]

    def _write_config(self):
        super()._write_config()
        with open(os.path.join(self.config, "shaping.ini"), "w") as f:
            f.write("[site:bigmail]\nmx=*.bigmail.test\nconcurrency_max=1\n")


class MxSiteTest(ClusterTestCase):
    """shaping.ini [site:NAME]: domains whose reports name the same MX site's
    hosts share one concurrency limit."""

    @classmethod
    def make_cluster(cls):
        return SiteShapedCluster()

    def sent(self, subject, count, domain):
        host, port = self.cluster.smtp_address()
        with smtplib.SMTP(host, port, timeout=30) as s:
            s.ehlo("client.test")
            for i in range(count):
                s.sendmail("alice@sender.test", [f"user{i}@{domain}"],
                           f"Subject: {subject} {i}\r\n\r\nbody {i}\r\n".encode())

    def arrived(self, subject, count, timeout=60):
        sink = self.cluster.sinks["good.test"]
        tag = f"Subject: {subject} ".encode()

        def got():
            found = [m for m in sink.received() if tag in m.data]
            return found if len(found) >= count else None
        return self.cluster.wait_until(got, timeout, f"every '{subject}' message at the bigmail.test MX")

    def test_two_domains_served_by_one_site_share_its_limit_once_a_report_names_its_hosts(self):
        # One message each: their reports tie both domains to the site.
        self.sent("learn-a", 1, "hosted-a.test")
        self.sent("learn-b", 1, "hosted-b.test")
        self.arrived("learn-a", 1)
        self.arrived("learn-b", 1)
        log = os.path.join(self.cluster.logs, "queue.log")

        def joined():
            with open(log, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            lines = [l for l in text.splitlines() if "mx_site_joined" in l and "site=bigmail" in l]
            return lines if len(lines) >= 2 else None
        lines = self.cluster.wait_until(joined, 20, "both domains joining the bigmail site")
        self.assertTrue(any("domain=hosted-a.test" in l and "mx=mx1.bigmail.test" in l for l in lines), lines)
        self.assertTrue(any("domain=hosted-b.test" in l and "mx=mx2.bigmail.test" in l for l in lines), lines)
        self.assertEqual(self.cluster.metric("queue", "tern_queue_mx_site_domains"), 2)

        sink = self.cluster.sinks["good.test"]
        with sink.lock:
            sink.max_active = 0
        sink.dot_delay = 0.3  # long enough for every due delivery to be wanted at once
        self.sent("site-a", 4, "hosted-a.test")
        self.sent("site-b", 4, "hosted-b.test")
        self.assertEqual(len(self.arrived("site-a", 4)), 4)
        self.assertEqual(len(self.arrived("site-b", 4)), 4)
        # Shaped per domain (no limit here) all eight would be in
        # transactions at once; as one site, one at a time.
        self.assertEqual(sink.max_active, 1)
        self.assertGreater(self.cluster.metric("queue", "tern_queue_throttled_total"), 0)
        self.assertEqual(self.cluster.stats()["deliveries"], 0)
        # The operator's view: the site, its limit and its two domains.
        out = subprocess.run([binary("ternctl"), "--queue", f"127.0.0.1:{self.cluster.ports['queue']}",
                              "destinations", "--json"], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        site = [d for d in json.loads(out.stdout)["destinations"] if d["destination"] == "site:bigmail"]
        self.assertEqual(len(site), 1, out.stdout)
        self.assertEqual(site[0]["concurrency_max"], 1)
        self.assertEqual(site[0]["site_domains"], 2)
        self.assertEqual(site[0]["leased"], 0)


if __name__ == "__main__":
    unittest.main()
