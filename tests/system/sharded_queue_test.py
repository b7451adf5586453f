"""Whole-system tests of a sharded queue (ARCHITECTURE.md §8): two queue
services, each with its own RocksDB, and one ingest, deliverer and bouncer
that list both in their `queue` keys. Ingest spreads the mail over the
shards, the deliverer and the bouncer serve both, ternctl sees both, and a
shard killed with SIGKILL loses nothing: ingest sends new mail to the other
shard, and what the dead shard had accepted leaves once it is back."""

import time
import unittest

from cluster import ClusterTestCase
from sharded_cluster import ShardedCluster


class ShardedQueueTest(ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        return ShardedCluster()

    def test_mail_is_spread_over_both_shards_and_all_of_it_is_delivered(self):
        c = self.cluster
        before = (c.enqueued(1), c.enqueued(2))
        accepted, refused = c.send_sessions("spread", sessions=8, per_session=5)
        self.assertEqual((accepted, refused), (40, []))
        got = c.wait_for_burst("spread", 40)
        subjects = sorted({m.data.split(b"Subject: spread ", 1)[1].split(b"\r\n", 1)[0] for m in got})
        self.assertEqual(len(subjects), 40)
        one, two = c.enqueued(1) - before[0], c.enqueued(2) - before[1]
        self.assertEqual(one + two, 40)
        # One client at a time leaves both shards idle each time, so they
        # take turns; neither may be left out.
        self.assertGreaterEqual(one, 10)
        self.assertGreaterEqual(two, 10)
        # Each shard's copies leave it: both drain.
        c.wait_until(lambda: c.shard_stats(1).get("messages", 0) == 0 and c.shard_stats(2).get("messages", 0) == 0,
                     60, "both shards to drain")

    def test_each_shard_bounces_its_own_failures(self):
        c = self.cluster
        sender_sink = c.sinks["sender.test"]
        start = len(sender_sink.received())
        before = (c.metric("queue", "tern_queue_bounces_created_total"), c.metric("queue2", "tern_queue_bounces_created_total"))
        accepted, refused = c.send_sessions("bounce-me", sessions=6, per_session=1, domain="reject.test")
        self.assertEqual((accepted, refused), (6, []))

        def dsns():
            got = [m for m in sender_sink.received_since(start) if b"bounce-me" in m.data]
            return got if len(got) >= 6 else None
        got = c.wait_until(dsns, 60, "a DSN for every rejected message")
        self.assertEqual(len(got), 6)
        for m in got:
            self.assertIn(b"multipart/report", m.data)
            self.assertIn(b"550 5.1.1", m.data)
        after = (c.metric("queue", "tern_queue_bounces_created_total"), c.metric("queue2", "tern_queue_bounces_created_total"))
        self.assertGreater(after[0], before[0])
        self.assertGreater(after[1], before[1])

    def test_a_killed_shard_loses_nothing_and_new_mail_goes_to_the_other(self):
        c = self.cluster
        # Mail waits in both shards while the deliverer is stopped.
        c.stop("deliverer")
        try:
            accepted, refused = c.send_sessions("kill-a", sessions=10, per_session=1)
            self.assertEqual((accepted, refused), (10, []))
            self.assertEqual(c.kill("queue2"), -9)
            # New mail goes to the live shard. The first message sent to the
            # dead one may get 451 (the client keeps it); then it is avoided.
            accepted_b, refused_b = c.send_sessions("kill-b", sessions=10, per_session=1)
            self.assertLessEqual(len(refused_b), 1)
            self.assertEqual(accepted_b + len(refused_b), 10)
        finally:
            if "deliverer" not in c.procs:
                c.start("deliverer")
        # The live shard's mail leaves at once; the dead shard's when it is back.
        c.start("queue2")
        c.wait_for_burst("kill-a", 10)
        got_b = c.wait_for_burst("kill-b", accepted_b)
        numbers = {int(m.data.split(b"Subject: kill-b ", 1)[1].split(b"\r\n", 1)[0]) for m in got_b}
        self.assertEqual(numbers, set(range(10)) - set(refused_b))
        # Once the shard is back, ingest sends it new mail again by itself
        # (after its avoid time and gRPC's reconnect backoff, seconds at
        # most); the tests after this one need both shards in use.
        before2 = c.enqueued(2)

        def back_in_use():
            c.send_sessions("kill-c", sessions=2, per_session=1)
            if c.enqueued(2) > before2:
                return True
            time.sleep(0.5)
            return None
        c.wait_until(back_in_use, 60, "ingest to send mail to the restarted shard")


if __name__ == "__main__":
    unittest.main()
