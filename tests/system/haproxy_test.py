"""Tern behind a real HAProxy (Debian's haproxy 2.6), in TCP mode, sending the
PROXY protocol to ingest: version 1 (`send-proxy`) and version 2
(`send-proxy-v2`, with its CRC32c, unique-id and authority TLVs).

Ingest lists HAProxy's address (127.0.0.1) in connection.ini [haproxy]
hosts[], and only 127.0.0.5 may relay (relay_acl_allow). So a message relays
only if ingest took the client's address from the PROXY header: the proxy's
own address may not relay, and a client at 127.0.0.6 through the same proxy
is refused. Linux routes all of 127/8 to loopback, so the clients bind those
source addresses.
"""

import os
import shutil
import smtplib
import subprocess
import unittest

from cluster import Cluster, ClusterTestCase, free_port, terminate, wait_port

CLIENT = "127.0.0.5"
STRANGER = "127.0.0.6"


class HaproxyCluster(Cluster):
    """The whole system, plus HAProxy with one v1 and one v2 frontend."""

    def __init__(self):
        super().__init__(relay_acl=(f"{CLIENT}/32",))
        self.haproxy = None

    def _set_up(self):
        super()._set_up()
        self._start_haproxy()

    def _write_config(self):
        super()._write_config()
        with open(os.path.join(self.config, "connection.ini"), "w") as f:
            f.write("[haproxy]\nhosts[]=127.0.0.1\n")

    def _start_haproxy(self):
        p = self.ports
        p["v1"] = free_port()
        p["v2"] = free_port()
        smtp = f"127.0.0.1:{p['smtp']}"
        cfg = os.path.join(self.tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{p['v1']}
    default_backend ingest_v1
frontend v2
    bind 127.0.0.1:{p['v2']}
    default_backend ingest_v2
backend ingest_v1
    server ingest {smtp} send-proxy source 127.0.0.1
backend ingest_v2
    server ingest {smtp} send-proxy-v2 proxy-v2-options crc32c,unique-id,authority source 127.0.0.1
""")
        # -db: foreground, no daemon, so the Popen is HAProxy itself. The
        # child keeps its own copy of the log's descriptor.
        with open(os.path.join(self.logs, "haproxy.log"), "wb") as log:
            self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=log, stderr=subprocess.STDOUT)
        for port in (p["v1"], p["v2"]):
            wait_port("127.0.0.1", port, 20, self.haproxy)

    def close(self):
        if self.haproxy is not None:
            terminate(self.haproxy)
        super().close()


@unittest.skipIf(shutil.which("haproxy") is None, "haproxy not installed")
class HaproxyTest(ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        return HaproxyCluster()

    def relay(self, version, source, subject):
        """Relays one message through HAProxy's v1 or v2 frontend from `source`;
        returns (EHLO reply text, RCPT reply code)."""
        with smtplib.SMTP("127.0.0.1", self.cluster.ports[version], timeout=30,
                          source_address=(source, 0)) as s:
            code, ehlo = s.ehlo("client.test")
            self.assertEqual(code, 250)
            s.mail("alice@sender.test")
            code, _ = s.rcpt("bob@good.test")
            if code == 250:
                s.data(f"Subject: {subject}\r\n\r\nthrough haproxy\r\n".encode())
            return ehlo.decode(), code

    def assert_relayed_as_the_client(self, version):
        subject = f"proxied {version}"
        ehlo, code = self.relay(version, CLIENT, subject)
        self.assertIn(f"[{CLIENT}]", ehlo.splitlines()[0])
        self.assertEqual(code, 250)
        tag = f"Subject: {subject}\r\n".encode()
        sink = self.cluster.sinks["good.test"]
        (message,) = self.cluster.wait_until(lambda: [m for m in sink.received() if tag in m.data], 60,
                                             f"'{subject}' at the sink")
        # Ingest's Received: header names the real client, not the proxy.
        received = message.data.split(b"\r\n\r\n", 1)[0]
        self.assertIn(f"[{CLIENT}]".encode(), received)

    def test_v2_header_gives_the_real_clients_address(self):
        self.assert_relayed_as_the_client("v2")

    def test_v1_line_gives_the_real_clients_address(self):
        self.assert_relayed_as_the_client("v1")

    def test_a_stranger_behind_the_proxy_may_not_relay(self):
        for version in ("v1", "v2"):
            with self.subTest(version=version):
                ehlo, code = self.relay(version, STRANGER, "stranger")
                self.assertIn(f"[{STRANGER}]", ehlo.splitlines()[0])
                self.assertEqual(code, 550)


if __name__ == "__main__":
    unittest.main()
