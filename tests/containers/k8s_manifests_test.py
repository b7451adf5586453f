"""deploy/k8s is consistent with Tern: the checks in k8s_manifests.py find
nothing wrong with the shipped manifests, and each kind of mistake they are
meant to catch is caught when it is made on purpose (so the checks can fail).
No container engine or cluster needed."""

import copy
import sys
import unittest

import k8s_manifests as km


class ShippedManifests(unittest.TestCase):
    def setUp(self):
        self.kust, self.docs = km.load()

    def workload(self, docs, name):
        return km.workloads(docs)[name]

    def container(self, docs, name):
        return self.workload(docs, name)["spec"]["template"]["spec"]["containers"][0]

    def assert_caught(self, mutate, fragment):
        docs = copy.deepcopy(self.docs)
        mutate(docs)
        problems = km.check(self.kust, docs)
        self.assertTrue(any(fragment in p for p in problems), f"expected a problem with {fragment!r}, got {problems}")

    def test_shipped_manifests_have_no_problems(self):
        self.assertEqual(km.check(self.kust, self.docs), [])

    def test_every_service_is_deployed_once_from_one_image(self):
        self.assertEqual(sorted(km.workloads(self.docs)), sorted(km.SERVICES))
        self.assertEqual({self.container(self.docs, n)["image"] for n in km.SERVICES}, {"localhost/tern:latest"})

    def test_an_unmounted_config_directory_is_caught(self):
        def drop(docs):
            c = self.container(docs, "deliverer")
            c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/etc/tern-site"]
        self.assert_caught(drop, "config directory /etc/tern-site is not mounted")

    def test_a_probe_on_the_wrong_port_is_caught(self):
        def move(docs):
            for e in self.container(docs, "bouncer")["env"]:
                if e["name"] == "TERN_HEALTH":
                    e["value"] = "127.0.0.1:7072"
        self.assert_caught(move, "bouncer: TERN_HEALTH")

    def test_a_service_aimed_at_a_missing_port_is_caught(self):
        def aim(docs):
            svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "ingest")
            svc["spec"]["ports"][0]["targetPort"] = "submission"
        self.assert_caught(aim, "targetPort submission")

    def test_an_unknown_tern_ini_key_is_caught(self):
        def typo(docs):
            cm = next(d for d in docs if d["kind"] == "ConfigMap")
            cm["data"]["tern.ini"] = cm["data"]["tern.ini"].replace("metrics_listen=0.0.0.0:9472",
                                                                    "metric_listen=0.0.0.0:9472")
        self.assert_caught(typo, "[deliverer] metric_listen")

    def test_a_queue_that_could_run_twice_is_caught(self):
        def scale(docs):
            self.workload(docs, "queue")["spec"]["replicas"] = 2
        self.assert_caught(scale, "exactly one replica")

    def test_a_queue_without_its_volume_is_caught(self):
        def drop(docs):
            c = self.container(docs, "queue")
            c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "data"]
        self.assert_caught(drop, "persistent volume")

    def test_a_grace_period_shorter_than_the_services_shutdown_is_caught(self):
        def cut(docs):
            self.workload(docs, "ingest")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 10
        self.assert_caught(cut, "ingest: terminationGracePeriodSeconds 10")


class ShardedManifests(unittest.TestCase):
    """deploy/k8s/shards: the queue in two shards."""

    def setUp(self):
        self.kust, self.docs = km.load_overlay(km.SHARDS)

    def assert_caught(self, mutate, fragment):
        docs = copy.deepcopy(self.docs)
        mutate(docs)
        problems = km.check(self.kust, docs, sharded=True)
        self.assertTrue(any(fragment in p for p in problems), f"expected a problem with {fragment!r}, got {problems}")

    def tern_ini(self, docs):
        return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tern-k8s")["data"]

    def test_shipped_overlay_has_no_problems(self):
        self.assertEqual(km.check(self.kust, self.docs, sharded=True), [])

    def test_every_client_lists_both_shards_by_their_pod_names(self):
        queue = km.workloads(self.docs)["queue"]
        self.assertEqual(queue["spec"]["replicas"], 2)
        text = self.tern_ini(self.docs)["tern.ini"]
        self.assertEqual(text.count("queue=queue-0.queue-shards:7070,queue-1.queue-shards:7070"), 3)
        # The single queue's load-balanced Service is gone; the rest of the
        # base is still there.
        services = {d["metadata"]["name"] for d in self.docs if d["kind"] == "Service"}
        self.assertNotIn("queue", services)
        self.assertIn("queue-shards", services)
        self.assertEqual(sorted(km.workloads(self.docs)), sorted(km.SERVICES))

    def test_a_shard_missing_from_a_client_is_caught(self):
        def drop(docs):
            data = self.tern_ini(docs)
            data["tern.ini"] = data["tern.ini"].replace(
                "[deliverer]\nqueue=queue-0.queue-shards:7070,queue-1.queue-shards:7070",
                "[deliverer]\nqueue=queue-0.queue-shards:7070")
        self.assert_caught(drop, "deliverer: tern.ini queue=queue-0.queue-shards:7070 is not")

    def test_a_third_replica_no_client_lists_is_caught(self):
        def grow(docs):
            km.workloads(docs)["queue"]["spec"]["replicas"] = 3
        self.assert_caught(grow, "queue-2.queue-shards:7070")

    def test_a_load_balanced_service_over_the_shards_is_caught(self):
        def balance(docs):
            svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "queue-shards")
            del svc["spec"]["clusterIP"]
        self.assert_caught(balance, "is not a headless Service")

    def test_the_single_queue_service_left_in_place_is_caught(self):
        def keep(docs):
            svc = copy.deepcopy(next(d for d in docs if d["metadata"]["name"] == "queue-shards"))
            svc["metadata"]["name"] = "queue"
            del svc["spec"]["clusterIP"]
            docs.append(svc)
        self.assert_caught(keep, "Service queue: load-balances over the queue shards")


if __name__ == "__main__":
    sys.exit(0 if unittest.main(exit=False, verbosity=2).result.wasSuccessful() else 1)
