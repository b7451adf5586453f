"""A message whose record is corrupt on disk is salvaged with ternctl.

A whole Tern (cluster.py) accepts a message while no deliverer runs; the
queue is stopped and the message's record in the `messages` column family is
overwritten with garbage by RocksDB's own `ldb` tool (Debian's rocksdb-tools),
as a disk or a bug might. After a restart the queue moves the record aside
instead of failing; `ternctl corrupt` lists it, `corrupt show --body` gives
back the message exactly as it was queued, and `corrupt purge` removes the
record and that body.
"""

import json
import os
import smtplib
import subprocess
import tempfile
import unittest

from cluster import Cluster, ClusterTestCase, binary

BODY = (b"From: <salvage@sender.test>\r\nTo: <x@good.test>\r\nSubject: salvage me\r\n"
        b"Message-Id: <salvage@client.test>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n"
        b"First line.\r\n. a line that starts with a dot\r\n")


class QueueSalvageTest(ClusterTestCase):

    def ctl(self, *args):
        return subprocess.run([binary("ternctl"), "--queue", f"127.0.0.1:{self.cluster.ports['queue']}", *args],
                              capture_output=True, timeout=30)

    def test_a_corrupt_message_record_is_listed_its_body_salvaged_and_both_purged(self):
        self.cluster.stop("deliverer")  # the message must stay queued
        host, port = self.cluster.smtp_address()
        with smtplib.SMTP(host, port, timeout=30) as s:
            s.sendmail("salvage@sender.test", ["x@good.test"], BODY)
        listed = json.loads(self.ctl("list", "--sender", "salvage@sender.test", "--json").stdout)
        (msg,) = listed["messages"]
        msg_id = msg.get("message_id") or msg.get("messageId")

        self.cluster.stop("queue")
        subprocess.run(["ldb", f"--db={self.cluster.data}", "--column_family=messages", "put", msg_id,
                        "not a record"], check=True, capture_output=True, timeout=60)
        self.cluster.start("queue")

        out = self.ctl("corrupt")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(f"messages  {msg_id}", out.stdout.decode())
        self.assertIn("1 corrupt records kept", out.stdout.decode())

        raw = self.ctl("corrupt", "show", "messages", msg_id)
        self.assertEqual(raw.returncode, 0, raw.stderr)
        self.assertEqual(raw.stdout, b"not a record")

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "salvaged.eml")
            out = self.ctl("corrupt", "show", "messages", msg_id, "--body", "--out", path)
            self.assertEqual(out.returncode, 0, out.stderr)
            with open(path, "rb") as f:
                salvaged = f.read()
        # As queued: ingest's Received: header first, then the client's
        # message with the dot-stuffing smtplib added taken off again.
        self.assertTrue(salvaged.startswith(b"Received: from "), salvaged[:80])
        self.assertTrue(salvaged.endswith(BODY), salvaged)

        out = self.ctl("corrupt", "purge", "messages", msg_id, "--json")
        self.assertEqual(out.returncode, 0, out.stderr)
        purged = json.loads(out.stdout)
        self.assertEqual(int(purged.get("purged", 0)), 1)
        self.assertEqual(int(purged.get("bodies_purged", purged.get("bodiesPurged", 0))), 1)
        gone = self.ctl("corrupt", "show", "messages", msg_id, "--body")
        self.assertEqual(gone.returncode, 1)
        self.assertIn(b"no corrupt record", gone.stderr)
        stats = json.loads(self.ctl("stats", "--json").stdout)
        self.assertEqual(int(stats.get("corrupt_records", stats.get("corruptRecords", 0))), 0)
        self.assertEqual(int(stats.get("messages", 0)), 0)


if __name__ == "__main__":
    unittest.main()
