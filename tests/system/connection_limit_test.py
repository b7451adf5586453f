"""Whole-system test of the deliverer's per-destination connection limit
(tern.ini [deliverer] destination_connections_max): a burst of messages to
one domain whose MX is slow is carried over at most that many connections,
the deliveries beyond it wait for one of them, and every message arrives
without a deferral. Without the limit each delivery of the burst opened its
own connection (a receiver with a per-client cap, like Postfix's smtp-sink at
256, leaves the extra ones without a banner until they time out)."""

import unittest

from cluster import Cluster, ClusterTestCase

LIMIT = 3
MESSAGES = 24


class DestinationConnectionsTest(ClusterTestCase):

    @classmethod
    def make_cluster(cls):
        return Cluster(deliverer_ini_extra=f"destination_connections_max={LIMIT}")

    def deliverer_metric(self, name):
        return self.cluster.metric("deliverer", name, missing=None)

    def test_a_burst_to_one_mx_uses_at_most_the_limit_of_connections_and_nothing_is_deferred(self):
        sink = self.cluster.sinks["good.test"]
        sink.dot_delay = 0.2  # slow enough that the whole burst is in the deliverer at once
        self.cluster.send_burst("burst", MESSAGES)
        got = self.cluster.wait_for_burst("burst", MESSAGES)
        self.assertEqual(len(got), MESSAGES)
        self.assertLessEqual(sink.max_open_connections, LIMIT)
        self.assertGreaterEqual(sink.max_open_connections, 2)
        # The deliveries beyond the limit waited for a connection and were
        # handed one; none gave up or was deferred.
        self.assertGreater(self.deliverer_metric("tern_deliverer_connection_waits_total"), 0)
        self.assertEqual(self.deliverer_metric("tern_deliverer_connection_wait_timeouts_total"), 0)
        self.assertGreaterEqual(self.deliverer_metric("tern_deliverer_pool_reused_total"), MESSAGES - LIMIT)
        self.assertEqual(self.cluster.stats()["deliveries"], 0)


if __name__ == "__main__":
    unittest.main()
