"""Whole-system test of DKIM signing (RFC 6376) in tern-deliverer.

The real binaries (cluster.py) with a config dir holding dkim.ini and the
key directories config/dkim/<domain>/{private,selector}: an RSA-2048 key for
sender.test and an Ed25519 key for ed.test, both made here with the openssl
CLI; no single-domain fallback. Mail goes in through ingest with smtplib and
is verified as the sink received it with dkimpy (Debian's python3-dkim),
whose DNS lookups are answered from this test's own table of the keys' TXT
records (dkimpy's `dnsfunc`), not from dnsmasq: dkimpy's own resolver cannot
be pointed at the cluster's dnsmasq port.
"""

import base64
import os
import re
import smtplib
import subprocess
import sys
import unittest

from cluster import Cluster, ClusterTestCase

sys.path.append("/usr/lib/python3/dist-packages")  # Debian's python3-dkim
import dkim  # noqa: E402

RSA_SELECTOR = "rsa2026"
ED_SELECTOR = "ed2026"


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def public_key_der(private_path):
    return subprocess.run(["openssl", "pkey", "-in", private_path, "-pubout", "-outform", "DER"],
                          check=True, capture_output=True, timeout=60).stdout


class DkimCluster(Cluster):
    """`canon` is dkim.ini's [canon] body; None leaves it out (default: simple)."""

    def __init__(self, canon="relaxed", deliverer_ini_extra="", sign_extra=""):
        super().__init__(deliverer_ini_extra=deliverer_ini_extra)
        self.canon = canon
        self.sign_extra = sign_extra  # more dkim.ini [sign] lines

    def _write_config(self):
        super()._write_config()
        with open(os.path.join(self.config, "dkim.ini"), "w") as f:
            f.write("[sign]\nenabled=true\n" + self.sign_extra +
                    (f"[canon]\nbody={self.canon}\n" if self.canon else ""))
        self.txt = {}
        rsa_dir = os.path.join(self.config, "dkim", "sender.test")
        os.makedirs(rsa_dir)
        rsa_key = os.path.join(rsa_dir, "private")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa_key)
        with open(os.path.join(rsa_dir, "selector"), "w") as f:
            f.write(RSA_SELECTOR + "\n")
        p = base64.b64encode(public_key_der(rsa_key)).decode()
        self.txt[f"{RSA_SELECTOR}._domainkey.sender.test."] = f"v=DKIM1; k=rsa; p={p}"

        ed_dir = os.path.join(self.config, "dkim", "ed.test")
        os.makedirs(ed_dir)
        ed_key = os.path.join(ed_dir, "private")
        openssl("genpkey", "-algorithm", "ED25519", "-out", ed_key)
        with open(os.path.join(ed_dir, "selector"), "w") as f:
            f.write(ED_SELECTOR + "\n")
        # RFC 8463 §4: p= is the raw 32-byte public key, the end of the DER SPKI.
        p = base64.b64encode(public_key_der(ed_key)[-32:]).decode()
        self.txt[f"{ED_SELECTOR}._domainkey.ed.test."] = f"v=DKIM1; k=ed25519; p={p}"


class DkimTest(ClusterTestCase):
    # dkim.ini oversign_headers of the cluster (the default is From alone).
    OVERSIGNED = (b"from", b"subject")

    @classmethod
    def make_cluster(cls):
        return DkimCluster(sign_extra="oversign_headers=From, Subject\n")

    def dnsfunc(self, name, timeout=5):
        record = self.cluster.txt.get(name.decode() if isinstance(name, bytes) else name)
        return record.encode() if record is not None else None

    def send_and_receive(self, from_header, tag, extra_headers=b"", body=b"Hello,  DKIM. \r\n\r\n"):
        """Relays one message to good.test through ingest; returns the bytes
        the good.test sink received for it."""
        message = (b"From: " + from_header.encode() + b"\r\n"
                   b"To: Bob <bob@good.test>\r\n"
                   b"Subject: dkim " + tag.encode() + b"\r\n"
                   b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
                   b"Message-ID: <" + tag.encode() + b"@sender.test>\r\n" + extra_headers +
                   b"\r\n" + body)
        host, port = self.cluster.smtp_address()
        with smtplib.SMTP(host, port, timeout=30) as s:
            s.ehlo("client.test")
            s.sendmail("alice@sender.test", ["bob@good.test"], message)
        sink = self.cluster.sinks["good.test"]
        needle = b"Subject: dkim " + tag.encode() + b"\r\n"

        def arrived():
            got = [m for m in sink.received() if needle in m.data]
            return got[0] if got else None
        return self.cluster.wait_until(arrived, 60, f"the '{tag}' message at good.test").data

    @staticmethod
    def tags(data):
        m = re.match(rb"DKIM-Signature:(.*?)\r\n(?! )", data, re.S)
        assert m, data[:300]
        value = re.sub(rb"\s+", b"", m.group(1))
        return dict(t.split(b"=", 1) for t in value.split(b";") if t)

    def assert_lines_folded(self, data):
        header = re.match(rb"DKIM-Signature:.*?\r\n(?! )", data, re.S).group(0)
        for line in header.split(b"\r\n"):
            self.assertLessEqual(len(line), 78, line)

    def test_rsa_signature_of_the_from_domain_verifies(self):
        # Repeated fields are all signed (RFC 6376 §5.4.2): two Cc fields.
        data = self.send_and_receive("Alice <alice@sender.test>", "rsa",
                                     extra_headers=b"Cc: carol@good.test\r\nCc: dave@good.test\r\n")
        self.assertTrue(data.startswith(b"DKIM-Signature: "), data[:200])
        self.assert_lines_folded(data)
        tags = self.tags(data)
        self.assertEqual(tags[b"d"], b"sender.test")
        self.assertEqual(tags[b"s"], RSA_SELECTOR.encode())
        self.assertEqual(tags[b"a"], b"rsa-sha256")
        self.assertEqual(tags[b"c"], b"relaxed/relaxed")
        self.assertEqual(tags[b"h"].lower().split(b":").count(b"cc"), 2)
        self.assertTrue(dkim.verify(data, dnsfunc=self.dnsfunc), data[:800])

    def test_ed25519_signature_verifies(self):
        data = self.send_and_receive("bob@ed.test", "ed25519")
        tags = self.tags(data)
        self.assertEqual(tags[b"d"], b"ed.test")
        self.assertEqual(tags[b"a"], b"ed25519-sha256")
        self.assertTrue(dkim.verify(data, dnsfunc=self.dnsfunc), data[:800])

    def test_subdomain_uses_the_parent_key_directory(self):
        data = self.send_and_receive("News <news@mail.sender.test>", "subdomain")
        tags = self.tags(data)
        self.assertEqual(tags[b"d"], b"sender.test")
        self.assertEqual(tags[b"s"], RSA_SELECTOR.encode())
        self.assertTrue(dkim.verify(data, dnsfunc=self.dnsfunc), data[:800])

    def test_no_key_and_no_fallback_arrives_unsigned(self):
        before = self.cluster.metric("deliverer", "tern_deliverer_dkim_unsigned_total")
        data = self.send_and_receive("someone@nokey.test", "unsigned")
        self.assertNotIn(b"DKIM-Signature:", data)
        self.cluster.wait_until(
            lambda: self.cluster.metric("deliverer", "tern_deliverer_dkim_unsigned_total") >= before + 1, 10,
            "the unsigned metric")

    def test_an_oversigned_field_added_in_transit_fails_verification(self):
        # An oversigned field is named in h= once more than the message has
        # it: a second one put above the signed one (which many readers
        # show) breaks the signature. A field signed but not oversigned does
        # not: the verifier takes the bottom one, as signed.
        data = self.send_and_receive("Alice <alice@sender.test>", "oversign")
        names = self.tags(data)[b"h"].lower().split(b":")
        for name in (b"from", b"subject"):
            self.assertEqual(names.count(name), 2 if name in self.OVERSIGNED else 1, names)
        self.assertTrue(dkim.verify(data, dnsfunc=self.dnsfunc), data[:800])
        end = re.match(rb"DKIM-Signature:.*?\r\n(?! )", data, re.S).end()
        forged = data[:end] + b"Subject: Urgent: wire the money today\r\n" + data[end:]
        self.assertEqual(dkim.verify(forged, dnsfunc=self.dnsfunc), b"subject" not in self.OVERSIGNED)

    def test_tampered_body_fails_verification(self):
        data = self.send_and_receive("alice@sender.test", "tamper", body=b"Pay 10 EUR.\r\n")
        self.assertTrue(dkim.verify(data, dnsfunc=self.dnsfunc))
        self.assertFalse(dkim.verify(data.replace(b"Pay 10 EUR.", b"Pay 99 EUR."), dnsfunc=self.dnsfunc))
        self.assertGreaterEqual(self.cluster.metric("deliverer", "tern_deliverer_dkim_signed_total"), 1)


class DkimDefaultCanonTest(DkimTest):
    """The defaults (c=relaxed/simple, From oversigned) with the same keys;
    the cases that do not depend on canonicalization are not run twice."""

    OVERSIGNED = (b"from",)

    @classmethod
    def make_cluster(cls):
        return DkimCluster(canon=None)

    def test_rsa_signature_of_the_from_domain_verifies(self):
        data = self.send_and_receive("Alice <alice@sender.test>", "rsa-simple", body=b"Hello,  simple. \r\n\r\n")
        tags = self.tags(data)
        self.assertEqual(tags[b"c"], b"relaxed/simple")
        self.assertTrue(dkim.verify(data, dnsfunc=self.dnsfunc), data[:800])
        # Under simple, whitespace in the body is signed as it is.
        self.assertFalse(dkim.verify(data.replace(b"Hello,  simple.", b"Hello, simple."), dnsfunc=self.dnsfunc))

    test_no_key_and_no_fallback_arrives_unsigned = None
    test_subdomain_uses_the_parent_key_directory = None


class DkimKeyRotationTest(unittest.TestCase):
    """A key rotated in config/dkim/ signs the next messages without a
    restart (the deliverer's config watch, which reloads through SIGHUP), and
    a broken key file leaves the last good key signing."""

    def wait_log(self, cluster, event, start):
        path = os.path.join(cluster.logs, "deliverer.log")

        def found():
            with open(path, "rb") as f:
                f.seek(start)
                lines = f.read().decode(errors="replace").splitlines()
            return next((line for line in lines if f" {event} " in line), None)
        return cluster.wait_until(found, 30, f"{event} in the deliverer's log")

    def test_a_rotated_key_signs_without_a_restart_and_a_broken_one_changes_nothing(self):
        with DkimCluster(deliverer_ini_extra="config_watch_ms=200") as cluster:
            case = DkimTest()
            case.cluster = cluster
            data = case.send_and_receive("alice@sender.test", "before-rotation")
            self.assertEqual(case.tags(data)[b"s"], RSA_SELECTOR.encode())
            self.assertTrue(dkim.verify(data, dnsfunc=case.dnsfunc))

            # The new key is published first (both stay in DNS), then the
            # key directory is switched: key and selector written, then
            # renamed into place.
            key_dir = os.path.join(cluster.config, "dkim", "sender.test")
            openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", os.path.join(key_dir, "private.new"))
            cluster.txt["rsa2027._domainkey.sender.test."] = (
                "v=DKIM1; k=rsa; p=" + base64.b64encode(public_key_der(os.path.join(key_dir, "private.new"))).decode())
            start = os.path.getsize(os.path.join(cluster.logs, "deliverer.log"))
            with open(os.path.join(key_dir, "selector.new"), "w") as f:
                f.write("rsa2027\n")
            os.rename(os.path.join(key_dir, "private.new"), os.path.join(key_dir, "private"))
            os.rename(os.path.join(key_dir, "selector.new"), os.path.join(key_dir, "selector"))
            self.assertIn("dkim_keys=2", self.wait_log(cluster, "config_reloaded", start))
            data = case.send_and_receive("alice@sender.test", "after-rotation")
            self.assertEqual(case.tags(data)[b"s"], b"rsa2027")
            self.assertTrue(dkim.verify(data, dnsfunc=case.dnsfunc))

            # A key file cut short: the reload fails and names the file; the
            # rotated key goes on signing.
            start = os.path.getsize(os.path.join(cluster.logs, "deliverer.log"))
            with open(os.path.join(key_dir, "private"), "w") as f:
                f.write("-----BEGIN PRIVATE KEY-----\nMIIE\n")
            line = self.wait_log(cluster, "reload_failed", start)
            self.assertIn("dkim/sender.test/private", line)
            self.assertNotIn("MIIE", line)  # never key material
            data = case.send_and_receive("alice@sender.test", "after-broken-key")
            self.assertEqual(case.tags(data)[b"s"], b"rsa2027")
            self.assertTrue(dkim.verify(data, dnsfunc=case.dnsfunc))


if __name__ == "__main__":
    unittest.main()