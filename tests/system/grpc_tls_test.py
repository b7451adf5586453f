"""Whole-system test: the services talk gRPC over mutual TLS (tern.ini [grpc]).

An operator who runs the queue on a shared network turns TLS on with client
certificates: mail must flow exactly as before, ternctl must reach the queue
with the same settings, and nobody without a certificate from the CA may talk
to the queue (which would let them enqueue or lease mail).
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

from cluster import Cluster, binary

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def make_ca(d, name):
    subprocess.run(["openssl", "req", "-x509", *EC, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign"], cwd=d, check=True, capture_output=True)


def make_leaf(d, name, ca):
    subprocess.run(["openssl", "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"],
                   cwd=d, check=True, capture_output=True)
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(["openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                    "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext"],
                   cwd=d, check=True, capture_output=True)


def grpc_section(d, ca, leaf):
    return (f"[grpc]\ntls=true\ntls_client_auth=true\ntls_ca={d}/{ca}.pem\n"
            f"tls_cert={d}/{leaf}.pem\ntls_key={d}/{leaf}.key\n")


class GrpcTlsTest(unittest.TestCase):

    def setUp(self):
        self.certs = tempfile.mkdtemp(prefix="tern-grpc-tls-")
        self.addCleanup(shutil.rmtree, self.certs, True)
        make_ca(self.certs, "ca")
        make_leaf(self.certs, "service", "ca")
        make_ca(self.certs, "rogue-ca")
        make_leaf(self.certs, "rogue", "rogue-ca")

    def ternctl(self, cluster, *extra):
        return subprocess.run([binary("ternctl"), "--queue", f"127.0.0.1:{cluster.ports['queue']}", "--timeout", "3",
                               *extra, "stats", "--json"], capture_output=True, timeout=30)

    def test_mail_flows_over_mutual_tls_and_clients_without_a_certificate_from_the_ca_are_refused(self):
        with Cluster(tern_ini_extra=grpc_section(self.certs, "ca", "service")) as cluster:
            cluster.send_burst("grpc tls", 3)
            got = cluster.wait_for_burst("grpc tls", 3)
            self.assertEqual(len(got), 3)

            ok = self.ternctl(cluster, "--config", cluster.config)
            self.assertEqual(ok.returncode, 0, ok.stderr)
            self.assertEqual(ok.stderr, b"")
            self.assertEqual(json.loads(ok.stdout)["enqueued_total"], 3)

            plain = self.ternctl(cluster)
            self.assertEqual(plain.returncode, 1, "a plaintext client must not get an answer")

            rogue_dir = os.path.join(self.certs, "rogue-config")
            os.makedirs(rogue_dir)
            with open(os.path.join(rogue_dir, "tern.ini"), "w") as f:
                f.write(grpc_section(self.certs, "ca", "rogue"))
            rogue = self.ternctl(cluster, "--config", rogue_dir)
            self.assertEqual(rogue.returncode, 1, "a certificate from another CA must be refused")

            with open(os.path.join(cluster.logs, "queue.log"), "rb") as f:
                self.assertIn(b"grpc_tls", f.read())

    def test_a_broken_tls_setting_stops_the_service_with_a_clear_error(self):
        # The key of another certificate: the queue must refuse to start
        # (never fall back to plaintext) and say which setting is wrong.
        section = grpc_section(self.certs, "ca", "service").replace("service.key", "rogue.key")
        cluster = Cluster(tern_ini_extra=section)
        try:
            cluster._write_config()
            out = subprocess.run([binary("queue"), "--config", cluster.config], capture_output=True, timeout=30,
                                 cwd=cluster.tmp)
            self.assertNotEqual(out.returncode, 0)
            self.assertIn(b"tls_key: does not belong to the certificate", out.stdout + out.stderr)
        finally:
            cluster.close()


if __name__ == "__main__":
    unittest.main()
