#!/usr/bin/env python3
"""The DNSSEC fixture (dnssec_dns.py) gives a real chain: knotd signs, dnsmasq
validates from the root trust anchor down, and a client sees what a DANE
client must rely on (RFC 7672 §2.1): AD on secure answers, none on insecure
ones, SERVFAIL on bogus ones, and authenticated denial.

The queries are built by hand (dnssec_dns.dns_query, stdlib): RD, plus AD
unless a test says otherwise; the reply's header flags, rcode and answer
types are what is checked.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from dnssec_dns import QTYPES, DnssecDns, dns_query  # noqa: E402

TLSA_HASH = "0123456789abcdef" * 4
TEST_ZONE = f"""
mx          A     127.0.0.2
@           MX    10 mx
_25._tcp.mx TLSA  3 1 1 {TLSA_HASH}
"""


class DnssecChainTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = DnssecDns()
        cls.dns.add_zone("test.", TEST_ZONE, kind="signed")
        cls.dns.add_zone("secure.test.", "host A 127.0.0.5", kind="signed")
        cls.dns.add_zone("plain.test.", "host A 127.0.0.3", kind="unsigned")
        cls.dns.add_zone("bogus.test.", "host A 127.0.0.4", kind="bogus")
        cls.dns.start()

    @classmethod
    def tearDownClass(cls):
        cls.dns.stop()

    def ask(self, name, qtype, **kw):
        return dns_query(self.dns.port, name, qtype, **kw)

    def assert_secure(self, reply, qtype):
        self.assertEqual(reply.rcode, "NOERROR")
        self.assertTrue(reply.ad, "no AD bit on an answer from the signed zone")
        self.assertIn(QTYPES[qtype], [t for t, _ in reply.answers])

    def test_signed_zone_soa_is_authenticated(self):
        self.assert_secure(self.ask("test.", "SOA"), "SOA")

    def test_signed_zone_address_is_authenticated(self):
        reply = self.ask("mx.test.", "A")
        self.assert_secure(reply, "A")
        self.assertIn((QTYPES["A"], bytes([127, 0, 0, 2])), reply.answers)

    def test_signed_zone_mx_is_authenticated(self):
        self.assert_secure(self.ask("test.", "MX"), "MX")

    def test_signed_zone_tlsa_is_authenticated(self):
        reply = self.ask("_25._tcp.mx.test.", "TLSA")
        self.assert_secure(reply, "TLSA")
        self.assertIn((QTYPES["TLSA"], bytes([3, 1, 1]) + bytes.fromhex(TLSA_HASH)), reply.answers)

    def test_tlsa_over_tcp_is_authenticated(self):
        self.assert_secure(self.ask("_25._tcp.mx.test.", "TLSA", tcp=True), "TLSA")

    def test_signed_child_zone_is_authenticated_through_its_ds(self):
        self.assert_secure(self.ask("host.secure.test.", "A"), "A")

    def test_unsigned_delegated_zone_is_insecure_without_ad(self):
        reply = self.ask("host.plain.test.", "A")
        self.assertEqual(reply.rcode, "NOERROR")
        self.assertFalse(reply.ad, "AD on an answer from a zone with no DS")
        self.assertEqual([t for t, _ in reply.answers], [QTYPES["A"]])

    def test_bogus_zone_answers_servfail(self):
        reply = self.ask("host.bogus.test.", "A")
        self.assertEqual(reply.rcode, "SERVFAIL")
        self.assertFalse(reply.ad)
        self.assertEqual(reply.answers, [])

    def test_missing_name_in_signed_zone_is_authenticated_nxdomain(self):
        reply = self.ask("nope.test.", "A")
        self.assertEqual(reply.rcode, "NXDOMAIN")
        self.assertTrue(reply.ad, "no AD on a denial the NSEC records prove")

    def test_missing_type_in_signed_zone_is_authenticated_nodata(self):
        reply = self.ask("mx.test.", "AAAA")
        self.assertEqual(reply.rcode, "NOERROR")
        self.assertTrue(reply.ad, "no AD on a NODATA the NSEC record proves")
        self.assertEqual(reply.answers, [])

    def test_query_without_ad_or_do_gets_no_ad(self):
        # dnsmasq 2.90 does what RFC 6840 §5.7 asks: AD only for a query that set
        # AD or DO. The same secure name gets AD again as soon as the query asks.
        self.assertFalse(self.ask("mx.test.", "A", ad=False).ad)
        self.assertTrue(self.ask("mx.test.", "A", ad=True).ad)

    def test_query_with_do_gets_ad_and_signatures(self):
        reply = self.ask("mx.test.", "A", ad=False, do=True)
        self.assert_secure(reply, "A")
        self.assertIn(QTYPES["RRSIG"], [t for t, _ in reply.answers])

    def test_authoritative_server_is_reachable_directly(self):
        reply = dns_query(self.dns.auth_port, "mx.test.", "A", ad=False, do=True)
        self.assertEqual(reply.rcode, "NOERROR")
        self.assertTrue(reply.aa)
        self.assertIn(QTYPES["RRSIG"], [t for t, _ in reply.answers])


class FixtureApiTest(unittest.TestCase):
    def test_top_zone_must_be_signed(self):
        dns = DnssecDns()
        try:
            dns.add_zone("test.", "", kind="unsigned")
            with self.assertRaisesRegex(RuntimeError, "must be signed"):
                dns.start()
            self.assertFalse(os.path.exists(dns.dir), "a failed start() left its temp dir")
        finally:
            dns.stop()

    def test_two_top_zones_are_refused(self):
        dns = DnssecDns()
        try:
            dns.add_zone("test.", "")
            dns.add_zone("example.", "")
            with self.assertRaisesRegex(RuntimeError, "exactly one zone must be the top"):
                dns.start()
        finally:
            dns.stop()

    def test_unknown_kind_is_refused(self):
        dns = DnssecDns()
        try:
            with self.assertRaises(ValueError):
                dns.add_zone("test.", "", kind="half-signed")
        finally:
            dns.stop()


class CliTest(unittest.TestCase):
    def test_cli_prints_ports_and_serves_until_stdin_closes(self):
        with tempfile.TemporaryDirectory() as tmp:
            zone = os.path.join(tmp, "test.zone")
            with open(zone, "w") as f:
                f.write("mx A 127.0.0.2\n")
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "dnssec_dns.py"),
                                     "--zone", f"test.:signed:{zone}"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                line = proc.stdout.readline()
                if not line:  # read stderr only now: it reaches EOF only when the CLI exits
                    self.fail("no JSON line; stderr: " + proc.stderr.read().decode(errors="replace"))
                ports = json.loads(line)
                self.assertEqual(set(ports), {"port", "auth_port"})
                reply = dns_query(ports["port"], "mx.test.", "A")
                self.assertEqual(reply.rcode, "NOERROR")
                self.assertTrue(reply.ad)
                proc.stdin.close()  # EOF: the fixture stops everything and exits
                self.assertEqual(proc.wait(15), 0)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:  # the resolver is gone too
                    try:
                        dns_query(ports["port"], "mx.test.", "A", timeout=0.3)
                    except OSError:
                        break
                    time.sleep(0.1)
                else:
                    self.fail("the resolver still answers after the CLI exited")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
                proc.stdout.close()
                proc.stderr.close()


if __name__ == "__main__":
    unittest.main()
