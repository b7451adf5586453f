"""DANE for SMTP (RFC 7672) and REQUIRETLS (RFC 8689) end to end:
tern-ingest and tern-deliverer, a real DNSSEC chain and a real Postfix as the
receiving MTA.

  DNS      tests/fakes/dnssec_dns.py: Knot DNS signs the zones, dnsmasq
           validates them from the root's DS and sets AD, as a validating
           resolver on the deliverer's host would. The deliverer's
           dns_servers point at that dnsmasq; nothing sets AD by hand.
  Postfix  deliverer_postfix_test.PostfixServer on POSTFIX_IP:<mx_port>,
           reached by MX delivery. Its certificate is for mx.postfix.test,
           issued by the test CA, and it sends the CA in its chain.

tls.ini trusts no CA and does not ask for verification: a verified session
can only come from DANE, and an unverified one is opportunistic TLS.

The domains, one per behaviour (all but the last two in the signed zone
"test."):

  dane-ee.test        MX mx.dane-ee.test, TLSA 3 1 1 of Postfix's key (the
                      certificate's name is not the MX's: DANE-EE ignores
                      names)                                 -> verified TLS
  dane-ta.test        MX mx.postfix.test, TLSA 2 0 1 of the test CA
                      (DANE-TA: chain and MX name checked)   -> verified TLS
  dane-cname.test     MX mx.dane-cname.test, a CNAME of mx.postfix.test: no
                      TLSA at the MX name, DANE-TA at the target -> verified TLS
  dane-wrong.test     TLSA 3 1 1 of some other key           -> deferred 4.7.5
  dane-unusable.test  TLSA 0 0 1 (PKIX-TA: unusable in SMTP) -> TLS, unverified
  dane-none.test      no TLSA (a validated NXDOMAIN)         -> opportunistic
  insecure.test       unsigned zone, TLSA that matches nothing: not
                      validated, so it must be ignored       -> opportunistic
  bogus.test          signed, but its DS in test. matches no key: the
                      resolver answers SERVFAIL              -> deferred 4.4.3

REQUIRETLS: ingest has STARTTLS (Postfix's key and certificate), and
Python's smtplib sends MAIL FROM ... REQUIRETLS after it. Debian 12's
Postfix (3.7) does not offer REQUIRETLS, so a REQUIRETLS message to it must
bounce (5.7.30), never reach it; the DSN itself keeps REQUIRETLS, so it waits
for TLS that the sender's scripted MX (no STARTTLS) cannot give. When the
sender's MX is that Postfix, the DSN bounces 5.7.30 too and is sent again
redacted (no header of the message, no REQUIRETLS). A
"TLS-Required: No" message to dane-wrong.test is delivered: the sender
asked that DANE be ignored.

Needs root (Postfix), postfix, sasl2-bin, openssl, knot and dnsmasq.
"""

import hashlib
import os
import re
import smtplib
import ssl
import sys
import unittest

from cluster import ZONES
from deliverer_postfix_test import BODY, PostfixMxCluster, PostfixMxTestCase, field, run
from deliverer_test import deliverer_log_lines, ternctl_json, wait_for_last_result
from mta_sts_postfix_test import deliverer_metric

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fakes"))
from dnssec_dns import DnssecDns  # noqa: E402

POSTFIX_IP = PostfixMxCluster.POSTFIX_IP
PKIX_MX = "mx.postfix.test"  # the name in Postfix's certificate
SIGNED = ("dane-ee.test", "dane-ta.test", "dane-wrong.test", "dane-unusable.test", "dane-none.test",
          "dane-cname.test")
DOMAINS = SIGNED + ("insecure.test", "bogus.test")


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def cert_der(pem_path):
    return run(["openssl", "x509", "-in", pem_path, "-outform", "DER"]).stdout


def spki_der(pem_path):
    """The certificate's SubjectPublicKeyInfo (what selector 1 hashes)."""
    pub = run(["openssl", "x509", "-in", pem_path, "-noout", "-pubkey"]).stdout
    return run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub).stdout


class DaneCluster(PostfixMxCluster):
    """Postfix by MX delivery for DOMAINS, DNS from a validating resolver
    over the signed zones (instead of the cluster's plain dnsmasq)."""

    def __init__(self):
        super().__init__(DOMAINS)
        self.dnssec = None

    def _write_config(self):
        super()._write_config()
        pki = self.postfix.pki
        # DANE-TA with a digest of the CA's certificate needs that certificate
        # on the wire: Postfix sends the file's certificates after the leaf.
        with open(f"{pki}/ca.pem", "rb") as ca, open(f"{pki}/server.pem", "ab") as chain:
            chain.write(ca.read())
        self.spki_hash = sha256_hex(spki_der(f"{pki}/server.pem"))
        self.ca_hash = sha256_hex(cert_der(f"{pki}/ca.pem"))
        self.write_tls_ini()  # no CA, no rejectUnauthorized
        # STARTTLS for ingest (REQUIRETLS is only taken over TLS).
        for src, dst in (("server.key", "tls_key.pem"), ("server.pem", "tls_cert.pem")):
            with open(f"{pki}/{src}", "rb") as f, open(os.path.join(self.config, dst), "wb") as out:
                out.write(f.read())

    def _start_dns(self):
        port = self.ports["mx"]
        tlsa = f"_{port}._tcp"
        wrong = sha256_hex(b"a key nobody has")
        top = [f"{d}. MX 10 mx.{d}.\nmx.{d}. A {ip}" for d, ip in ZONES.items()]
        top += [
            f"{PKIX_MX}. A {POSTFIX_IP}",
            f"{tlsa}.{PKIX_MX}. TLSA 2 0 1 {self.ca_hash}",
            f"dane-ta.test. MX 10 {PKIX_MX}.",
            # An MX host that is an alias of Postfix's name: its TLSA records
            # are those at the end of the chain (RFC 7672 §2.2.2).
            "dane-cname.test. MX 10 mx.dane-cname.test.",
            f"mx.dane-cname.test. CNAME {PKIX_MX}.",
        ]
        records = {"dane-ee.test": f"3 1 1 {self.spki_hash}", "dane-wrong.test": f"3 1 1 {wrong}",
                   "dane-unusable.test": f"0 0 1 {self.ca_hash}", "dane-none.test": None}
        for domain, record in records.items():
            top += [f"{domain}. MX 10 mx.{domain}.", f"mx.{domain}. A {POSTFIX_IP}"]
            if record:
                top.append(f"{tlsa}.mx.{domain}. TLSA {record}")
        child = f"@ MX 10 mx\nmx A {POSTFIX_IP}\n{tlsa}.mx TLSA 3 1 1 {wrong}\n"
        self.dnssec = DnssecDns()
        self.dnssec.add_zone("test.", "\n".join(top), kind="signed")
        self.dnssec.add_zone("insecure.test.", child, kind="unsigned")
        self.dnssec.add_zone("bogus.test.", child, kind="bogus")
        self.dnssec.start()
        # The deliverer asks the validating resolver, not the plain dnsmasq
        # the cluster would start (the services start after this).
        path = os.path.join(self.config, "tern.ini")
        with open(path) as f:
            text, n = re.subn(r"^dns_servers=.*$", f"dns_servers=127.0.0.1:{self.dnssec.port}", f.read(), flags=re.M)
        if n != 1:
            raise RuntimeError("dns_servers not found in tern.ini")
        with open(path, "w") as f:
            f.write(text)
        self.ports["dns"] = self.dnssec.port

    def close(self):
        try:
            super().close()
        finally:
            if self.dnssec is not None:
                self.dnssec.stop()


class DanePostfixTest(PostfixMxTestCase):
    CLUSTER = DaneCluster

    # -- helpers ---------------------------------------------------------------
    def send_requiretls(self, domain, tag, sender="alice@sender.test", local="rcpt"):
        """Sends one message over STARTTLS with MAIL FROM ... REQUIRETLS from
        `sender` to <local>@<domain>; returns its queue id."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP(*self.cluster.smtp_address(), timeout=30) as s:
            s.starttls(context=ctx)
            s.ehlo("client.test")
            self.assertTrue(s.has_extn("requiretls"), s.esmtp_features)
            code, reply = s.mail(sender, ["REQUIRETLS"])
            self.assertEqual(code, 250, reply)
            code, reply = s.rcpt(f"{local}@{domain}")
            self.assertEqual(code, 250, reply)
            code, reply = s.data(BODY.format(tag=tag))
            self.assertEqual(code, 250, reply)
        m = re.search(rb"queued as (\S+)", reply)
        self.assertIsNotNone(m, reply)
        return m.group(1).decode()

    def final_result(self, msg_id):
        """The recipient's result once the message is gone from the queue
        (bounced), from the deliverer's outcome line."""
        (line,) = self.cluster.wait_until(lambda: self.msg_lines(msg_id, "delivery"), 60,
                                          f"the deliverer's outcome line for {msg_id}")
        return line

    def dsn_about(self, tag):
        """`ternctl show` of the DSN the bouncer queued (from <> to
        alice@sender.test) about the message BODY made with `tag`: its
        In-Reply-To names the original's Message-ID."""
        def find():
            listed = ternctl_json(self.cluster, "list", "--recipient", "alice@sender.test").get("messages", [])
            for m in listed:
                shown = ternctl_json(self.cluster, "show", m["message_id"])
                if f"In-Reply-To: <{tag}@sender.test>" in shown.get("headers", ""):
                    return shown
            return None
        return self.cluster.wait_until(find, 60, f"the DSN about <{tag}@sender.test>")

    def dane_metric(self, mode):
        return deliverer_metric(self.cluster, "tern_deliverer_dane_hosts_total", mode=mode)

    # -- validated TLSA records that match -----------------------------------------
    def test_dane_ee_record_delivers_over_verified_tls_whatever_the_certificate_name(self):
        before = self.dane_metric("authenticated")
        _, attempt = self.deliver("dane-ee.test", "dane ee", "mx.dane-ee.test")
        # Verified by the TLSA record alone: tls.ini trusts no CA, and the
        # certificate names mx.postfix.test, not this MX.
        self.assertEqual(field(attempt, "tls_verified"), "yes", attempt)
        self.assertEqual(field(attempt, "dane"), "3 1 1 at depth 0", attempt)
        self.assertRegex(field(attempt, "tls"), r"^TLSv1\.[23] \S+$", attempt)
        self.assertGreaterEqual(self.dane_metric("authenticated"), before + 1)

    def test_dane_ta_record_of_the_issuing_ca_delivers_over_verified_tls(self):
        _, attempt = self.deliver("dane-ta.test", "dane ta", PKIX_MX)
        self.assertEqual(field(attempt, "tls_verified"), "yes", attempt)
        # The CA is the last certificate of the chain Postfix sends.
        self.assertEqual(field(attempt, "dane"), "2 0 1 at depth 1", attempt)

    def test_dane_records_at_the_end_of_the_mx_hosts_cname_chain_are_used(self):
        # Without RFC 7672 §2.2.2 this would be opportunistic TLS: the MX
        # name itself has no TLSA records (a validated NXDOMAIN).
        _, attempt = self.deliver("dane-cname.test", "dane cname", "mx.dane-cname.test")
        self.assertEqual(field(attempt, "tls_verified"), "yes", attempt)
        self.assertEqual(field(attempt, "dane"), "2 0 1 at depth 1", attempt)

    # -- validated TLSA records that do not ------------------------------------------
    def test_dane_record_matching_no_key_defers_without_plain_text_fallback(self):
        handshakes = self.postfix_log_count(r"SSL_accept error from ")
        msg_id = self.send("dane-wrong.test", "dane wrong")
        try:
            result = self.deferred_result(msg_id)
            relay = f"mx.dane-wrong.test[{POSTFIX_IP}]:{self.mx_port}"
            self.assertEqual(result["enhanced_status"], "4.7.5", result)
            self.assertIn("TLS is required by the DANE TLSA records of mx.dane-wrong.test, but the certificate "
                          f"of host {relay} did not verify: ", result["reply_text"])
            self.assertEqual(result["remote_ip"], POSTFIX_IP, result)
            self.assertIsNone(self.postfix.message_with("dane wrong"))
            # Postfix saw the TLS handshake fail (Tern hung up in it), and
            # no MAIL FROM ever came in plain text afterwards.
            self.cluster.wait_until(lambda: self.postfix_log_count(r"SSL_accept error from ") > handshakes, 30,
                                    "Postfix to log the refused handshake")
            self.assertNotIn("<alice@sender.test> -> <rcpt@dane-wrong.test>", self.postfix.log())
            self.assertEqual(ternctl_json(self.cluster, "show", msg_id)["message_id"], msg_id)
        finally:
            ternctl_json(self.cluster, "delete", msg_id, "--yes")

    def test_only_unusable_records_make_tls_mandatory_but_unverified(self):
        before = self.dane_metric("unauthenticated")
        _, attempt = self.deliver("dane-unusable.test", "dane unusable", "mx.dane-unusable.test")
        self.assertEqual(field(attempt, "tls_verified"), "no", attempt)
        self.assertEqual(field(attempt, "dane"), "unusable", attempt)
        self.assertRegex(field(attempt, "tls"), r"^TLSv1\.[23] \S+$", attempt)
        self.assertGreaterEqual(self.dane_metric("unauthenticated"), before + 1)

    # -- where DANE must not apply -----------------------------------------------------
    def test_validated_absence_of_tlsa_records_leaves_opportunistic_tls(self):
        _, attempt = self.deliver("dane-none.test", "dane none", "mx.dane-none.test")
        self.assertEqual(field(attempt, "dane"), "none", attempt)
        self.assertEqual(field(attempt, "tls_verified"), "no", attempt)
        self.assertRegex(field(attempt, "tls"), r"^TLSv1\.[23] \S+$", attempt)

    def test_tlsa_records_in_an_unsigned_zone_are_ignored(self):
        # The TLSA record here matches nothing: were it trusted, the
        # delivery would be deferred.
        _, attempt = self.deliver("insecure.test", "insecure", "mx.insecure.test")
        self.assertEqual(field(attempt, "dane"), "none", attempt)
        self.assertEqual(field(attempt, "tls_verified"), "no", attempt)

    # -- REQUIRETLS ------------------------------------------------------------------
    def test_requiretls_is_refused_in_plain_text(self):
        with smtplib.SMTP(*self.cluster.smtp_address(), timeout=30) as s:
            s.ehlo("client.test")
            self.assertFalse(s.has_extn("requiretls"))
            code, reply = s.mail("alice@sender.test", ["REQUIRETLS"])
        self.assertEqual(code, 530, reply)
        self.assertIn(b"5.7.10", reply)

    def test_requiretls_message_bounces_at_a_postfix_that_does_not_offer_it(self):
        before = deliverer_metric(self.cluster, "tern_deliverer_tls_requests_total", request="requiretls")
        msg_id = self.send_requiretls("dane-ee.test", "requiretls")
        line = self.final_result(msg_id)
        self.assertEqual(field(line, "status"), "bounced", line)
        self.assertEqual(field(line, "dsn"), "5.7.30", line)
        self.assertIn("REQUIRETLS is required by the sender, but was not offered by host "
                      f"mx.dane-ee.test[{POSTFIX_IP}]:{self.mx_port}", field(line, "reply"))
        # It got as far as a DANE-verified TLS session (new or pooled), and
        # no further.
        (attempt,) = self.msg_lines(msg_id, "attempt")
        self.assertEqual(field(attempt, "tls_verified"), "yes", attempt)
        self.assertEqual(field(attempt, "dane"), "3 1 1 at depth 0", attempt)
        self.assertIsNone(self.postfix.message_with("requiretls"))
        self.assertGreaterEqual(
            deliverer_metric(self.cluster, "tern_deliverer_tls_requests_total", request="requiretls"), before + 1)
        self.assertNotIn("<alice@sender.test> -> <rcpt@dane-ee.test>", self.postfix.log())
        # The DSN keeps REQUIRETLS, so the sender's MX (a scripted server
        # without STARTTLS) does not get it in plain text either.
        dsn = self.dsn_about("requiretls")
        self.assertTrue(dsn["envelope"].get("requiretls"), dsn["envelope"])
        result = wait_for_last_result(self.cluster, dsn["message_id"], 60)
        (delivery,) = result["deliveries"]
        (rcpt,) = delivery["recipients"]
        self.assertEqual(rcpt["state"], "deferred", rcpt)
        self.assertIn("TLS is required by the sender (REQUIRETLS)", rcpt["last_result"]["reply_text"])
        self.assertEqual(self.cluster.sinks["sender.test"].received(), [])
        ternctl_json(self.cluster, "delete", dsn["message_id"], "--yes")

    def test_requiretls_dsn_that_cannot_go_with_requiretls_is_sent_redacted(self):
        # The sender's own MX is this Postfix, which lacks REQUIRETLS: the DSN
        # (with REQUIRETLS, like the message) bounces 5.7.30 in its turn, and
        # the bouncer sends the same report again without REQUIRETLS and
        # without anything of the message's header (RFC 8689 §5).
        msg_id = self.send_requiretls("dane-ee.test", "requiretls-redact", sender="alice@dane-ee.test",
                                      local="redact")
        line = self.final_result(msg_id)
        self.assertEqual(field(line, "dsn"), "5.7.30", line)

        def redacted():
            found = [m for m in self.postfix.messages() if b"Final-Recipient: rfc822;redact@dane-ee.test" in m]
            return found[0] if found else None
        dsn = self.cluster.wait_until(redacted, 90, "the redacted DSN at Postfix")
        head = dsn.split(b"\n\n", 1)[0]
        self.assertIn(b"To: <alice@dane-ee.test>", head)
        self.assertIn(b"multipart/report", head)
        self.assertIn(b"Status: 5.7.30", dsn)
        self.assertIn(b"was not offered by host mx.dane-ee.test", dsn)
        self.assertIn(b"not shown: your message required TLS (REQUIRETLS)", dsn)
        # Nothing of the original: not its Subject, Message-ID or text, no
        # third part.
        self.assertNotIn(b"requiretls-redact", dsn)
        self.assertNotIn(b"rfc822-headers", dsn)
        # One redacted DSN, logged by the bouncer with the status behind it.
        with open(os.path.join(self.cluster.logs, "bouncer.log"), "rb") as f:
            bouncer = [l for l in f.read().decode("utf-8", "replace").splitlines() if " dsn_redacted " in l]
        self.assertEqual(len([l for l in bouncer if "to=alice@dane-ee.test" in l]), 1, bouncer)
        self.assertIn("status=5.7.30", bouncer[-1])

    def test_requiretls_message_to_a_domain_without_dnssec_bounces_without_connecting(self):
        connects = self.postfix_log_count(r"\]: connect from ")
        msg_id = self.send_requiretls("insecure.test", "requiretls-insecure")
        line = self.final_result(msg_id)
        self.assertEqual(field(line, "dsn"), "5.7.30", line)
        self.assertIn("the MX hosts of insecure.test were not found securely", field(line, "reply"))
        self.assertEqual(self.msg_lines(msg_id, "attempt"), [])
        self.assertEqual(self.postfix_log_count(r"\]: connect from "), connects)
        ternctl_json(self.cluster, "delete", self.dsn_about("requiretls-insecure")["message_id"], "--yes")

    def test_tls_required_no_delivers_where_dane_would_refuse(self):
        before = deliverer_metric(self.cluster, "tern_deliverer_tls_requests_total", request="tls_optional")
        msg_id = self.send("dane-wrong.test", "tls optional", headers="TLS-Required: No\r\n")
        self.cluster.wait_until(lambda: self.postfix.message_with("tls optional"), 60, "Postfix to store it")
        (attempt,) = self.msg_lines(msg_id, "attempt")
        self.assertEqual(field(attempt, "dane"), "none", attempt)
        self.assertEqual(field(attempt, "tls_verified"), "no", attempt)
        ignored = [l for l in deliverer_log_lines(self.cluster, "tls_policies_ignored") if f"msg={msg_id}" in l]
        self.assertTrue(ignored, "no tls_policies_ignored line")
        self.assertEqual(
            deliverer_metric(self.cluster, "tern_deliverer_tls_requests_total", request="tls_optional"), before + 1)

    def test_bogus_zone_defers_and_never_connects(self):
        connects = self.postfix_log_count(r"\]: connect from ")
        msg_id = self.send("bogus.test", "bogus")
        try:
            result = self.deferred_result(msg_id)
            # The resolver refuses to hand out a bogus answer (SERVFAIL): a
            # DNS failure to retry, not a bounce, and no address to try.
            self.assertEqual(result["enhanced_status"], "4.4.3", result)
            self.assertIn("bogus.test", result["reply_text"])
            self.assertEqual(result["remote_ip"], "", result)
            self.assertEqual(self.msg_lines(msg_id, "attempt"), [])
            self.assertEqual(self.postfix_log_count(r"\]: connect from "), connects, self.postfix.log()[-3000:])
        finally:
            ternctl_json(self.cluster, "delete", msg_id, "--yes")


if __name__ == "__main__":
    unittest.main()
