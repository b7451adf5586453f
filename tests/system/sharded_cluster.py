"""A Cluster with a second queue shard, for the sharded whole-system tests
(tests/system/sharded_queue_test.py) and the sharded chaos test
(tests/chaos/chaos_test.py)."""

import json
import os
import smtplib
import subprocess

from cluster import Cluster, binary, free_port, wait_port


class ShardedCluster(Cluster):
    """A Cluster with a second queue shard, "queue2". Its config directory
    is an overlay (a tern.ini of its own) in front of the shared one, the
    way a deployment overrides a few files per host (lib/config/config_dir.h)."""

    def _write_config(self):
        super()._write_config()
        p = self.ports
        p["queue2"] = free_port()
        p["m_queue2"] = free_port()
        self.data2 = os.path.join(self.tmp, "queue2")
        self.overlay = os.path.join(self.tmp, "config-queue2")
        os.makedirs(self.overlay)
        path = os.path.join(self.config, "tern.ini")
        with open(path) as f:
            text = f.read()
        q1 = f"127.0.0.1:{p['queue']}"
        q2 = f"127.0.0.1:{p['queue2']}"
        # Every client lists both shards; the first queue keeps its section.
        shared = text.replace(f"queue={q1}\n", f"queue={q1}, {q2}\n")
        with open(path, "w") as f:
            f.write(shared)
        own = shared.replace(f"listen={q1}\n", f"listen={q2}\n", 1)
        own = own.replace(f"data_dir={self.data}\n", f"data_dir={self.data2}\n", 1)
        own = own.replace(f"metrics_listen=127.0.0.1:{p['m_queue']}\n",
                          f"metrics_listen=127.0.0.1:{p['m_queue2']}\n", 1)
        with open(os.path.join(self.overlay, "tern.ini"), "w") as f:
            f.write(own)

    def start(self, service):
        if service != "queue2":
            proc = super().start(service)
            if service == "queue" and "queue2" not in self.procs and not getattr(self, "_started", False):
                # Both shards before their clients, as a deployment starts
                # them (a shard that comes up later is used once ingest's
                # channel to it connects, within about 2 s).
                self._started = True
                self.start("queue2")
            return proc
        args = [binary("queue"), "--config", f"{self.overlay}:{self.config}"]
        with open(os.path.join(self.logs, "queue2.log"), "ab") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)
        self.procs["queue2"] = proc
        wait_port("127.0.0.1", self.ports["queue2"], 20, proc)
        return proc

    def queues(self):
        return f"127.0.0.1:{self.ports['queue']},127.0.0.1:{self.ports['queue2']}"

    def shard_stats(self, shard):
        port = self.ports["queue" if shard == 1 else "queue2"]
        out = subprocess.run([binary("ternctl"), "--queue", f"127.0.0.1:{port}", "stats", "--json"],
                             capture_output=True, timeout=20, check=True)
        return json.loads(out.stdout)

    def enqueued(self, shard):
        """Messages the shard has taken, from its own metrics."""
        return self.metric("queue" if shard == 1 else "queue2", "tern_queue_enqueued_total")

    def send_sessions(self, subject, sessions, per_session, domain="good.test"):
        """`sessions` SMTP sessions of `per_session` messages each; returns
        how many got a 250 and the subjects of those that did not."""
        host, port = self.smtp_address()
        accepted = 0
        refused = []
        n = 0
        for _ in range(sessions):
            with smtplib.SMTP(host, port, timeout=30) as s:
                s.ehlo("client.test")
                for _ in range(per_session):
                    try:
                        s.sendmail("alice@sender.test", [f"user{n}@{domain}"],
                                   f"Subject: {subject} {n}\r\n\r\nbody {n}\r\n".encode())
                        accepted += 1
                    except smtplib.SMTPDataError as e:
                        if not 400 <= e.smtp_code < 500:
                            raise
                        refused.append(n)
                    n += 1
        return accepted, refused
