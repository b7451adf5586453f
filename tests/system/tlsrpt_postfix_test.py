"""SMTP TLS Reporting (RFC 8460) end to end: the deliverer counts TLS
sessions to domains whose `_smtp._tls` record asks for reports, the queue
keeps the counts, `ternctl tlsrpt send` has the queue write the reports,
and they travel like any mail to the report address, where a real Postfix
stores them.

Built on mta_sts_postfix_test's cluster (real DNS, real HTTPS policy host,
Postfix with STARTTLS as the MX of every test domain), plus:

  sts-enforce.test  `_smtp._tls` rua=mailto:tlsrpt@reports.test and an
                    https: rua on the policy host (RFC 8460 §5.3: the
                    report is POSTed there too); its enforced MTA-STS
                    policy lists Postfix's name: one successful session
                    under "sts"
  sts-badname.test  the same rua; its MX name is not in Postfix's
                    certificate: failed sessions "certificate-host-mismatch"
  sts-testing.test  no `_smtp._tls` record: nothing counted
  reports.test      where the reports go (Postfix takes its mail)

Needs root (Postfix), postfix, sasl2-bin, openssl and dnsmasq.
"""

import email
import email.policy
import gzip
import json
import os
import subprocess
import unittest

from cluster import binary
from deliverer_postfix_test import MX, PostfixMxTestCase
from deliverer_test import ternctl_json
from mta_sts_postfix_test import BADNAME_MX, MtaStsCluster

RUA = "tlsrpt@reports.test"
REPORTED = ("sts-enforce.test", "sts-badname.test")
POST_PATH = "/v1/tlsrpt?from=tern"


class TlsRptCluster(MtaStsCluster):
    def __init__(self):
        super().__init__()
        self.mx_domains = self.mx_domains + ("reports.test",)
        self.tern_ini_extra += ("\n[tlsrpt]\nenabled=true\nfrom=tlsrpt-noreply@sender.test\n"
                                "organization=Tern system test\nflush_seconds=1\n")

    def dns_extra_args(self):
        args = super().dns_extra_args()
        args.append(f"--mx-host=reports.test,{MX},10")
        args.append(f"--txt-record=_smtp._tls.sts-badname.test,v=TLSRPTv1; rua=mailto:{RUA}")
        # Two rua URIs need a comma inside the record, which dnsmasq keeps
        # only in a quoted value of a configuration file (on its command
        # line a comma starts the next character-string).
        conf = os.path.join(self.tmp, "tlsrpt-dnsmasq.conf")
        with open(conf, "w") as f:
            f.write(f'txt-record=_smtp._tls.sts-enforce.test,"v=TLSRPTv1; rua=mailto:{RUA},{self.post_url()}"\n')
        args.append(f"--conf-file={conf}")
        return args

    def post_url(self):
        # The policy host's certificate names mta-sts.<domain>, so the POST
        # is verified against the test CA like a policy fetch.
        return f"https://mta-sts.sts-enforce.test:{self.https_port}{POST_PATH}"


def report_of(message, domain):
    """The JSON report in a stored TLS report e-mail (bytes) about `domain`,
    or None when the message is not one."""
    msg = email.message_from_bytes(message, policy=email.policy.default)
    if msg.get("TLS-Report-Domain") != domain:
        return None
    for part in msg.walk():
        if part.get_content_type() == "application/tlsrpt+gzip":
            return msg, part, json.loads(gzip.decompress(part.get_payload(decode=True)))
    raise AssertionError(f"no application/tlsrpt+gzip part in the report about {domain}")


class TlsRptPostfixTest(PostfixMxTestCase):
    CLUSTER = TlsRptCluster

    def pending(self):
        return {p["policy_domain"]: p for p in ternctl_json(self.cluster, "tlsrpt", "list").get("pending", [])}

    def stored_report(self, domain):
        for m in self.postfix.messages():
            found = report_of(m, domain)
            if found:
                return found
        return None

    def test_sessions_are_counted_and_reported_to_the_domains_rua(self):
        self.deliver("sts-enforce.test", "tlsrpt enforce")
        self.send("sts-badname.test", "tlsrpt badname")  # deferred: the name is not in the certificate
        self.deliver("sts-testing.test", "tlsrpt testing")

        def counted():
            p = self.pending()
            ok = int(p.get("sts-enforce.test", {}).get("successful", 0)) >= 1
            bad = int(p.get("sts-badname.test", {}).get("failed", 0)) >= 1
            return p if ok and bad else None
        pending = self.cluster.wait_until(counted, 60, "the deliverer's counts in the queue")
        self.assertNotIn("sts-testing.test", pending, "a domain without a TLSRPT record is not counted")
        self.assertNotIn("reports.test", pending)
        self.assertEqual(pending["sts-enforce.test"]["rua"], [f"mailto:{RUA}", self.cluster.post_url()])

        out = subprocess.run([binary("ternctl"), "--queue", f"127.0.0.1:{self.cluster.ports['queue']}",
                              "tlsrpt", "send", "--include-today", "--json"], capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr.decode(errors="replace"))
        sent = {s["policy_domain"]: s for s in json.loads(out.stdout).get("sent", [])}
        for domain in REPORTED:
            self.assertIn(domain, sent, out.stdout)
            self.assertEqual(len(sent[domain]["message_ids"]), 2 if domain == "sts-enforce.test" else 1,
                             sent[domain])
            self.assertFalse(sent[domain].get("skipped_rua"), sent[domain])

        msg, part, report = self.cluster.wait_until(lambda: self.stored_report("sts-enforce.test"), 60,
                                                    "the sts-enforce.test report at reports.test's MX")
        # RFC 8460 §5.3: the mail around the report.
        self.assertEqual(msg["To"], RUA)
        self.assertIn("tlsrpt-noreply@sender.test", msg["From"])
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "tlsrpt")
        self.assertEqual(msg["TLS-Report-Submitter"], "sender.test")
        self.assertRegex(part.get_filename(), r"^sender\.test!sts-enforce\.test!\d+!\d+(![0-9A-Za-z]+)?\.json\.gz$")
        # RFC 8460 §4: the report itself.
        self.assertEqual(report["organization-name"], "Tern system test")
        self.assertIn("start-datetime", report["date-range"])
        (policy,) = report["policies"]
        self.assertEqual(policy["policy"]["policy-type"], "sts")
        self.assertEqual(policy["policy"]["policy-domain"], "sts-enforce.test")
        self.assertIn("mode: enforce", policy["policy"]["policy-string"])
        self.assertIn("*.postfix.test", policy["policy"]["mx-host"])
        self.assertGreaterEqual(policy["summary"]["total-successful-session-count"], 1)
        self.assertEqual(policy["summary"]["total-failure-session-count"], 0)

        _, _, bad = self.cluster.wait_until(lambda: self.stored_report("sts-badname.test"), 60,
                                            "the sts-badname.test report")
        (policy,) = bad["policies"]
        self.assertEqual(policy["policy"]["policy-type"], "sts")
        self.assertGreaterEqual(policy["summary"]["total-failure-session-count"], 1)
        details = policy["failure-details"]
        self.assertEqual({d["result-type"] for d in details}, {"certificate-host-mismatch"}, details)
        self.assertEqual({d["receiving-mx-hostname"] for d in details}, {BADNAME_MX}, details)
        self.assertEqual({d["receiving-ip"] for d in details}, {self.cluster.POSTFIX_IP}, details)

        # RFC 8460 §5.3: the same report POSTed to the https: rua, gzipped
        # JSON as application/tlsrpt+gzip, over TLS verified for its host.
        def posted():
            return [r for r in self.cluster.https.requests() if r.get("method") == "POST"] or None
        (post,) = self.cluster.wait_until(posted, 60, "the report's POST to the https: rua")
        self.assertEqual(post["path"], POST_PATH, post)
        self.assertEqual(post["sni"], "mta-sts.sts-enforce.test", post)
        self.assertIn(post["host"], ("mta-sts.sts-enforce.test", f"mta-sts.sts-enforce.test:{self.cluster.https_port}"))
        self.assertEqual(post["content_type"], "application/tlsrpt+gzip", post)
        posted_report = json.loads(gzip.decompress(post["body"]))
        self.assertEqual(posted_report, report, "the POST and the e-mail carry one report")
        # The deliverer told the queue: the POST's message is delivered and gone.
        report_msg_ids = set(sent["sts-enforce.test"]["message_ids"])

        def retired():
            queued = {m.get("message_id") for m in ternctl_json(self.cluster, "list").get("messages", [])}
            return not report_msg_ids & queued
        self.cluster.wait_until(retired, 60, "the sts-enforce.test report's e-mail and POST retired from the queue")

        # What was reported is gone: sts-enforce.test's counts were deleted
        # with its report. (sts-badname.test's deferred message keeps
        # failing, so it has new counts for the next report.)
        self.assertNotIn("sts-enforce.test", self.pending())


if __name__ == "__main__":
    unittest.main()
