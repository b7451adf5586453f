"""A deliverer started before the queue's name exists in DNS reaches the queue
once the name appears, without a restart.

This is the compose/Kubernetes start order: a deliverer container can come up
before the network's DNS knows the queue's name, and its first lookup fails
with NXDOMAIN. The test serves the name from a dnsmasq we control (gRPC's
`dns://server/name` target), leaves it out at first, then adds it and makes
dnsmasq reload; the deliverer must log `queue_reachable` within a bound. It
also checks that a queue unreachable for over 10 s gets the deliverer to
replace its gRPC channel (`queue_channel_rebuilt`).
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from cluster import BIN_DIR, SOURCE_DIR, free_dns_port, free_port, terminate, wait_port


def binary(service):
    return os.path.join(BIN_DIR, "services", service, f"tern-{service}")


class LateQueueNameTest(unittest.TestCase):
    def setUp(self):
        if shutil.which("dnsmasq") is None:
            self.skipTest("dnsmasq not installed")
        self.dir = tempfile.mkdtemp(prefix="tern-late-name-")
        self.procs = []

    def tearDown(self):
        for p in reversed(self.procs):
            terminate(p)
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, args, log):
        p = subprocess.Popen(args, stdout=open(os.path.join(self.dir, log), "wb"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def test_deliverer_reaches_a_queue_whose_name_appears_after_it_started(self):
        dns_port = free_dns_port()
        queue_port = free_port()
        hosts = os.path.join(self.dir, "hosts")
        open(hosts, "w").close()
        cfg = os.path.join(self.dir, "config")
        shutil.copytree(os.path.join(SOURCE_DIR, "deploy", "config"), cfg)
        with open(os.path.join(cfg, "tern.ini"), "w") as f:
            f.write(f"[queue]\nlisten=127.0.0.1:{queue_port}\ndata_dir={self.dir}/queue\nmetrics_listen=\n"
                    f"[deliverer]\nqueue=dns://127.0.0.1:{dns_port}/queue.test:{queue_port}\n"
                    f"dns_servers=127.0.0.1:{dns_port}\nhealth_listen=\nmetrics_listen=\n")
        # --local=/test/: every other .test name is NXDOMAIN, like a container
        # name nobody registered yet. TTL 1 s so nothing is held for long.
        dnsmasq = self.start(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                              "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={dns_port}", "--pid-file=",
                              "--user=root", "--local=/test/", f"--addn-hosts={hosts}", "--local-ttl=1"], "dnsmasq.log")
        queue = self.start([binary("queue"), "--config", cfg], "queue.log")
        wait_port("127.0.0.1", queue_port, 30, queue)
        self.start([binary("deliverer"), "--config", cfg], "deliverer.log")
        deliverer_log = os.path.join(self.dir, "deliverer.log")

        deadline = time.time() + 15
        while "queue_unreachable" not in open(deliverer_log).read():
            self.assertLess(time.time(), deadline, "the deliverer never tried the queue's name")
            time.sleep(0.2)
        self.assertIn("DNS resolution failed", open(deliverer_log).read())
        # Past the deliverer's 10 s limit, it replaces its gRPC channel (a new
        # one asks DNS afresh); the name is still missing then.
        deadline = time.time() + 20
        while "queue_channel_rebuilt" not in open(deliverer_log).read():
            self.assertLess(time.time(), deadline, "no new channel after 20 s without the queue")
            time.sleep(0.2)

        with open(hosts, "w") as f:
            f.write("127.0.0.1 queue.test\n")
        dnsmasq.send_signal(signal.SIGHUP)  # dnsmasq re-reads --addn-hosts files
        deadline = time.time() + 45
        while "queue_reachable" not in open(deliverer_log).read():
            self.assertLess(time.time(), deadline,
                            "deliverer did not reach the queue after its name appeared:\n"
                            + open(deliverer_log).read()[-2000:])
            time.sleep(0.2)


if __name__ == "__main__":
    unittest.main()
