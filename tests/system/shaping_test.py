"""Whole-system test of the queue's per-destination concurrency limit
(tern.ini [queue] destination_concurrency_max): however many deliveries of
one domain are due, no more than the limit are in transactions with its MX at
once, and all of them still arrive."""

import unittest

from cluster import Cluster, ClusterTestCase

LIMIT = 2
MESSAGES = 12


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


if __name__ == "__main__":
    unittest.main()
