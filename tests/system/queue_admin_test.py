"""Every ternctl command against a running tern-queue.

Only the queue and ingest run (no deliverer), so what the admin commands
see and change is not disturbed by deliveries. Messages go in through real
SMTP (smtplib -> tern-ingest -> tern-queue).
"""

import json
import os
import smtplib
import socket
import subprocess
import time
import unittest

from cluster import Cluster, ClusterTestCase, binary

BODY = (b"From: Alice <alice@sender.test>\r\n"
        b"To: someone\r\n"
        b"Subject: admin test %s\r\n"
        b"\r\n"
        b"Hello.\r\n")


class QueueAdminTest(ClusterTestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster()
        try:
            cls.cluster._write_config()
            cls.cluster.start("queue")
            cls.cluster.start("ingest")
        except Exception:
            cls.cluster.dump_logs()
            cls.cluster.close()
            raise
        cls.queue = f"127.0.0.1:{cls.cluster.ports['queue']}"
        cls.ids = {}
        for tag, rcpts in (("one", ["a@good.test"]),
                           ("two", ["b@defer.test", "c@good.test"]),
                           ("three", ["d@reject.test"])):
            cls.send(rcpts, tag)
        listed = cls.ctl_json("list")
        for m in listed["messages"]:
            shown = cls.ctl_json("show", m["message_id"])
            tag = shown["headers"].split("admin test ")[1].split("\r\n")[0]
            cls.ids[tag] = m["message_id"]

    @classmethod
    def tearDownClass(cls):
        cls.cluster.close()

    # -- helpers ---------------------------------------------------------
    @classmethod
    def send(cls, rcpts, tag):
        host, port = cls.cluster.smtp_address()
        with smtplib.SMTP(host, port, timeout=30) as s:
            s.ehlo("client.test")
            return s.sendmail("alice@sender.test", rcpts, BODY % tag.encode())

    @classmethod
    def ctl(cls, *args, queue=None):
        return subprocess.run([binary("ternctl"), "--queue", queue or cls.queue, *args],
                              capture_output=True, timeout=30, text=True)

    @classmethod
    def ctl_json(cls, *args):
        out = cls.ctl(*args, "--json")
        if out.returncode != 0:
            raise AssertionError(f"ternctl {args} failed: {out.stderr}")
        return json.loads(out.stdout)

    def events(self, *extra):
        out = self.ctl("watch", "--no-follow", "--json", *extra)
        self.assertEqual(out.returncode, 0, out.stderr)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    # -- the commands, in an order that keeps each one's effect visible ---
    def test_01_stats_counts_what_was_accepted(self):
        stats = self.ctl_json("stats")
        self.assertEqual(stats["messages"], 3)
        self.assertEqual(stats["deliveries"], 4)  # two for the second message
        self.assertEqual(stats["recipients_pending"], 4)
        table = self.ctl("stats")
        self.assertEqual(table.returncode, 0)
        self.assertIn("messages stored", table.stdout)

    def test_02_list_filters_and_table(self):
        self.assertEqual(len(self.ctl_json("list")["messages"]), 3)
        only = self.ctl_json("list", "--domain", "defer.test")["messages"]
        self.assertEqual([m["message_id"] for m in only], [self.ids["two"]])
        self.assertEqual(len(self.ctl_json("list", "--recipient", "@good.test")["messages"]), 2)
        self.assertEqual(len(self.ctl_json("list", "--sender", "ALICE@sender.test")["messages"]), 3)
        self.assertEqual(len(self.ctl_json("list", "--older-than", "1h")["messages"]), 0)
        page = self.ctl_json("list", "--limit", "2")
        self.assertEqual(len(page["messages"]), 2)
        rest = self.ctl_json("list", "--limit", "2", "--cursor", page["next_cursor"])
        self.assertEqual(len(rest["messages"]), 1)
        table = self.ctl("list")
        self.assertEqual(table.returncode, 0, table.stderr)
        self.assertIn("ID", table.stdout.splitlines()[0])
        self.assertIn(self.ids["one"], table.stdout)
        self.assertIn("3 messages", table.stdout)
        bad = self.ctl("list", "--state", "sleeping")
        self.assertNotEqual(bad.returncode, 0)

    def test_03_show_has_envelope_recipients_and_headers(self):
        out = self.ctl("show", self.ids["two"])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("<alice@sender.test>", out.stdout)
        self.assertIn("b@defer.test", out.stdout)
        self.assertIn("c@good.test", out.stdout)
        self.assertIn("Subject: admin test two", out.stdout)
        shown = self.ctl_json("show", self.ids["two"])
        self.assertEqual(sorted(d["domain"] for d in shown["deliveries"]), ["defer.test", "good.test"])
        missing = self.ctl("show", "00000000000000000000")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("no message", missing.stderr)

    def test_04_explain_says_why(self):
        out = self.ctl("explain", self.ids["one"])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("waiting for a deliverer", out.stdout)
        self.assertIn("a@good.test: pending, 0 attempts", out.stdout)

    def test_05_qshape_counts_domains(self):
        q = self.ctl_json("qshape")
        total = q["rows"][0]
        self.assertEqual(total["domain"], "TOTAL")
        self.assertEqual(int(total["total"]), 4)
        by_domain = {r["domain"]: int(r["total"]) for r in q["rows"][1:]}
        self.assertEqual(by_domain, {"good.test": 2, "defer.test": 1, "reject.test": 1})
        table = self.ctl("qshape")
        self.assertEqual(table.returncode, 0)
        self.assertIn("1280+", table.stdout.splitlines()[0])
        self.assertEqual(int(self.ctl_json("qshape", "--deferred")["rows"][0]["total"]), 0)

    def test_06_pause_and_resume(self):
        out = self.ctl("pause")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("paused", out.stdout)
        self.assertTrue(self.ctl_json("stats")["paused"])
        self.assertIn("PAUSED", self.ctl("explain", self.ids["one"]).stdout)
        self.assertEqual(self.ctl("resume").returncode, 0)
        self.assertFalse(self.ctl_json("stats")["paused"])

    def wait_paused(self, want):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ctl_json("stats")["paused"] == want:
                return
            time.sleep(0.1)
        self.fail(f"paused never became {want}")

    def test_06b_outbound_ini_disabled_follows_the_file(self):
        path = os.path.join(self.cluster.config, "outbound.ini")
        with open(path) as f:
            original = f.read()
        wait_paused = self.wait_paused

        try:
            with open(path, "w") as f:
                f.write(original.replace("[main]\n", "[main]\ndisabled=true\n", 1))
            wait_paused(True)  # no signal sent
        finally:
            with open(path, "w") as f:
                f.write(original)
        wait_paused(False)

    def test_06c_harakas_legacy_outbound_disabled_file_pauses_and_resumes(self):
        # An older Haraka install keeps the switch in config/outbound.disabled.
        path = os.path.join(self.cluster.config, "outbound.disabled")
        try:
            with open(path, "w") as f:
                f.write("1\n")
            self.wait_paused(True)  # no signal sent: the queue watches the file
        finally:
            os.remove(path)
        self.wait_paused(False)

    def test_07_hold_release_flush(self):
        out = self.ctl("hold", "--domain", "defer.test")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("1 message matches", out.stdout)
        held = self.ctl_json("list", "--state", "held")["messages"]
        self.assertEqual([m["message_id"] for m in held], [self.ids["two"]])
        self.assertEqual(self.ctl_json("stats")["deliveries_held"], 1)
        self.assertIn("held (admin)", self.ctl("explain", self.ids["two"]).stdout)
        out = self.ctl("release", self.ids["two"])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("1 delivery changed", out.stdout)
        self.assertEqual(self.ctl_json("stats")["deliveries_held"], 0)
        self.assertEqual(self.ctl("flush", "--all").returncode, 0)
        self.assertNotEqual(self.ctl("flush").returncode, 0)  # no selector: refused

    def test_08_delete_needs_yes_for_several(self):
        out = self.ctl("delete", "--domain", "good.test")
        self.assertEqual(out.returncode, 1)
        self.assertIn("2 messages match", out.stdout)
        self.assertIn("--yes", out.stderr)
        self.assertEqual(self.ctl_json("stats")["deliveries"], 4)
        out = self.ctl("delete", "--domain", "good.test", "--yes", "--reason", "test")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("2 deliveries changed", out.stdout)
        stats = self.ctl_json("stats")
        self.assertEqual(stats["messages"], 2)  # "one" is gone; "two" keeps defer.test
        self.assertEqual(stats["deliveries"], 2)

        # The delete is kept for the undo window: listed, and put back by its token.
        token = out.stdout.split("ternctl undelete --token ")[1].split()[0]
        kept = self.ctl_json("deleted")
        self.assertEqual(int(kept["total"]), 2)
        self.assertEqual({e["message_id"] for e in kept["entries"]}, {self.ids["one"], self.ids["two"]})
        self.assertTrue(all(e["token"] == token and e["reason"] == "test" for e in kept["entries"]))
        table = self.ctl("deleted")
        self.assertIn(self.ids["one"], table.stdout)
        self.assertIn("(part)", table.stdout)  # "two" lost only good.test
        out = self.ctl("undelete", "--token", token)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("2 messages back, 2 deliveries", out.stdout)
        stats = self.ctl_json("stats")
        self.assertEqual(stats["messages"], 3)
        self.assertEqual(stats["deliveries"], 4)
        self.assertIn("c@good.test", self.ctl("show", self.ids["two"]).stdout)
        again = self.ctl("undelete", "--token", token)
        self.assertEqual(again.returncode, 1)
        self.assertIn("nothing deleted matches", again.stderr)
        self.assertEqual(self.ctl("undelete").returncode, 2)  # neither token nor ids

        # --purge: final at once, nothing kept.
        out = self.ctl("delete", "--domain", "good.test", "--yes", "--purge")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn("undelete", out.stdout)
        self.assertEqual(int(self.ctl_json("deleted").get("total", 0)), 0)
        stats = self.ctl_json("stats")
        self.assertEqual(stats["messages"], 2)
        self.assertEqual(stats["deliveries"], 2)

    def test_09_bounce_makes_a_dsn_job(self):
        out = self.ctl("bounce", self.ids["three"], "--reason", "domain closed")
        self.assertEqual(out.returncode, 0, out.stderr)
        stats = self.ctl_json("stats")
        self.assertEqual(stats["bounces"], 1)
        self.assertEqual(stats["deliveries"], 1)
        self.assertIn("DSN job", self.ctl("explain", self.ids["three"]).stdout)

    def test_10_watch_replays_and_resumes(self):
        events = self.events("--oldest")
        types = [e["type"] for e in events]
        self.assertEqual(types.count("received"), 3)
        self.assertIn("admin", types)
        self.assertIn("bounce_created", types)
        seqs = [int(e["seq"]) for e in events]
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))))
        middle = seqs[len(seqs) // 2]
        self.assertEqual([int(e["seq"]) for e in self.events("--from", str(middle))], seqs[seqs.index(middle) + 1:])

        # A live watch sees an action taken after it started.
        proc = subprocess.Popen([binary("ternctl"), "--queue", self.queue, "watch", "--from", str(seqs[-1])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(self.ctl("hold", self.ids["two"]).returncode, 0)
            line = proc.stdout.readline()
            self.assertTrue(line.startswith(str(seqs[-1] + 1) + "  "), line)
            self.assertIn("admin", line)
            self.assertIn("hold", line)
        finally:
            proc.kill()
            proc.wait(10)
            proc.stdout.close()
            proc.stderr.close()
        table = self.ctl("watch", "--oldest", "--no-follow")
        self.assertIn("received", table.stdout)

    def test_11_health(self):
        out = self.ctl("health")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "SERVING")
        unknown = self.ctl("health", "--service", "no.such.Service")
        self.assertNotEqual(unknown.returncode, 0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = f"127.0.0.1:{s.getsockname()[1]}"
        down = self.ctl("--timeout", "2", "health", queue=closed)
        self.assertEqual(down.returncode, 1)

    def test_12_corrupt_lists_nothing_on_a_healthy_queue(self):
        out = self.ctl("corrupt")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("0 corrupt records", out.stdout)

    def test_13_corrupt_show_and_purge_say_what_is_not_there(self):
        # The records themselves are covered with planted garbage in
        # services/queue/queue_admin_test.cc; here: the CLI and RPCs end to end.
        missing = self.ctl("corrupt", "show", "messages", "no-such-id")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("no corrupt record messages no-such-id", missing.stderr)
        unnamed = self.ctl("corrupt", "purge")
        self.assertEqual(unnamed.returncode, 1)
        self.assertIn("purge one corrupt record", unnamed.stderr)
        everything = self.ctl("corrupt", "purge", "--all", "--json")
        self.assertEqual(everything.returncode, 0, everything.stderr)
        self.assertEqual(int(json.loads(everything.stdout).get("purged", 0)), 0)
        self.assertIn("0 corrupt records", self.ctl("corrupt").stdout)


if __name__ == "__main__":
    unittest.main()
