"""Bounces, end to end and on paper.

DsnGoldenFilesTest checks every golden DSN in tests/testdata/dsn/*.eml with a
parser Tern did not write (Python's `email` package) plus a few raw-byte
rules, so a golden file cannot quietly encode a renderer bug.

BounceSystemTest and DoubleBounceCopyTest run the real binaries (cluster.py):
a refused message ends as exactly one DSN at the sender's MX; a partial
failure lists only the failed recipient; a DSN that cannot be delivered ends
as one double-bounce record and no loop; with double_bounce_recipient set the
postmaster gets one copy, and a copy that fails in turn is not copied again.
"""

import email
import email.policy
import email.utils
import glob
import os
import re
import smtplib
import time
import unittest
from cluster import ClusterTestCase  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_DIR = os.path.join(HERE, "..", "testdata", "dsn")

STATUS_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
ACTIONS = {"failed", "delayed", "delivered", "relayed", "expanded"}


def walk_boundaries(msg):
    """Every multipart boundary in the message tree."""
    out = []
    for part in msg.walk():
        if part.is_multipart():
            b = part.get_boundary()
            if b is not None:
                out.append(b)
    return out


def status_blocks(part):
    """message/delivery-status as a list of {lower-case name: value} dicts."""
    blocks = []
    for block in part.get_payload():
        blocks.append({k.lower(): str(v).strip() for k, v in block.items()})
    return blocks


class DsnChecks:
    """Assertions shared by the golden-file test and the system tests."""

    def check_dsn(self, raw, where):
        # Raw rules first: CRLF only, no line over 998, 8-bit only if declared.
        self.assertNotIn(b"\r\r", raw, where)
        self.assertEqual(raw.count(b"\n"), raw.count(b"\r\n"), f"{where}: bare LF")
        for line in raw.split(b"\r\n"):
            self.assertLessEqual(len(line), 998, f"{where}: long line")
        # Haraka writes "Diagnostic-Code: smtp;550 ... " with a trailing space.
        self.assertIsNone(re.search(rb"\r\n(Diagnostic-Code|Status|Action|Final-Recipient):[^\r]*[ \t]\r\n", raw),
                          f"{where}: trailing whitespace in a delivery-status field")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        for part in msg.walk():
            self.assertEqual(list(part.defects), [], f"{where}: defects in {part.get_content_type()}")

        self.assertEqual(msg.get_content_type(), "multipart/report", where)
        self.assertEqual(msg.get_param("report-type"), "delivery-status", where)
        self.assertEqual(str(msg["MIME-Version"]).strip(), "1.0", where)
        self.assertEqual(str(msg["Auto-Submitted"]).strip(), "auto-replied", where)
        for name in ("Date", "From", "To", "Subject", "Message-Id"):
            self.assertIsNotNone(msg[name], f"{where}: no {name}")
        self.assertIsNotNone(email.utils.parsedate_to_datetime(str(msg["Date"])), where)
        if msg["References"] is not None:
            self.assertEqual(str(msg["References"]).strip(), str(msg["In-Reply-To"]).strip(), where)
            self.assertRegex(str(msg["References"]).strip(), r"^<[^<>\s]+>$", where)
        if any(b >= 0x80 for b in raw):
            self.assertEqual(str(msg["Content-Transfer-Encoding"]).strip().lower(), "8bit",
                             f"{where}: 8-bit bytes but no 8bit declaration")
        # Every multipart is closed: its close delimiter line occurs once.
        boundaries = walk_boundaries(msg)
        self.assertEqual(len(boundaries), len(set(boundaries)), f"{where}: boundary reused")
        for b in boundaries:
            close = b"\r\n--" + b.encode() + b"--\r\n"
            self.assertEqual(raw.count(close), 1, f"{where}: boundary {b} not closed exactly once")

        parts = msg.get_payload()
        self.assertEqual(len(parts), 3, where)
        texts = self.check_human_part(parts[0], where)
        self.assertEqual(parts[1].get_content_type(), "message/delivery-status", where)
        self.assertIn(parts[2].get_content_type(), ("text/rfc822-headers", "message/rfc822"), where)

        blocks = status_blocks(parts[1])
        self.assertGreaterEqual(len(blocks), 2, f"{where}: no per-recipient block")
        self.assertTrue(blocks[0]["reporting-mta"].startswith("dns;"), where)
        for block in blocks[0:1]:
            self.assertNotIn("final-recipient", block, where)
        recipients = []
        for block in blocks[1:]:
            self.assertIn("final-recipient", block, where)
            self.assertRegex(block["final-recipient"], r"^(rfc822|utf-8);\S+$", where)
            self.assertIn(block.get("action"), ACTIONS, where)
            self.assertRegex(block.get("status", ""), STATUS_RE, where)
            if "remote-mta" in block:
                self.assertTrue(block["remote-mta"].startswith("dns;"), where)
            if "diagnostic-code" in block:
                # An SMTP reply, or Tern's own words when no server replied
                # (a private "X-" type, RFC 3464 §2.3.6).
                self.assertRegex(block["diagnostic-code"], r"^(smtp;\d{3}( \S.*)?|X-Tern;\S.*)$", where)
                self.assertFalse(block["diagnostic-code"].endswith(" "), where)
            if "will-retry-until" in block:
                self.assertEqual(block["action"], "delayed", where)
                self.assertIsNotNone(email.utils.parsedate_to_datetime(block["will-retry-until"]), where)
            recipients.append(block)
        return msg, recipients, texts

    def check_human_part(self, part, where):
        """Returns the decoded human-readable texts (plain, and html if any)."""
        ctype = part.get_content_type()
        if ctype == "text/plain":
            return [part.get_content()]
        if ctype == "multipart/related":
            self.assertEqual(part.get_param("type"), "multipart/alternative", where)
            inner = part.get_payload()
            self.assertEqual(len(inner), 2, where)
            texts = self.check_human_part(inner[0], where)
            self.assertEqual(inner[0].get_content_type(), "multipart/alternative", where)
            image = inner[1]
            self.assertTrue(image.get_content_maintype() == "image", where)
            cid = str(image["Content-ID"]).strip()
            self.assertRegex(cid, r"^<[^<>\s]+>$", where)
            self.assertGreater(len(image.get_content()), 0, where)  # base64 decodes
            self.assertIn("cid:" + cid[1:-1], texts[1], f"{where}: HTML does not use the image")
            return texts
        self.assertEqual(ctype, "multipart/alternative", where)
        inner = part.get_payload()
        self.assertEqual([p.get_content_type() for p in inner], ["text/plain", "text/html"], where)
        return [inner[0].get_content(), inner[1].get_content()]


class DsnGoldenFilesTest(unittest.TestCase, DsnChecks):
    def test_every_golden_dsn_parses_with_an_independent_parser(self):
        files = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.eml")))
        self.assertGreaterEqual(len(files), 10, "golden files missing")
        kinds = set()
        for path in files:
            name = os.path.basename(path)
            with self.subTest(file=name):
                with open(path, "rb") as f:
                    raw = f.read()
                msg, recipients, texts = self.check_dsn(raw, name)
                kinds.update(r["action"] for r in recipients)
                for text in texts:
                    self.assertNotIn("\ufffd", text, name)  # every text decodes cleanly
        # The set covers every kind of report Tern sends.
        self.assertEqual(kinds, {"failed", "delayed", "delivered"})

    def test_golden_html_escapes_values_and_image_sits_in_related(self):
        with open(os.path.join(GOLDEN_DIR, "html_image.eml"), "rb") as f:
            raw = f.read()
        msg, recipients, texts = self.check_dsn(raw, "html_image.eml")
        self.assertEqual(msg.get_payload()[0].get_content_type(), "multipart/related")
        html = texts[1]
        self.assertIn("&lt;bob@example.net&gt;", html)
        self.assertNotIn("<bob@example.net>", html)
        self.assertEqual([r["final-recipient"] for r in recipients],
                         ["rfc822;bob@example.net", "rfc822;carol@example.org"])

    def test_golden_utf8_and_8bit_subjects_decode(self):
        for name, expect_8bit in (("utf8_subject.eml", False), ("eightbit_subject.eml", True)):
            with open(os.path.join(GOLDEN_DIR, name), "rb") as f:
                raw = f.read()
            msg, _, texts = self.check_dsn(raw, name)
            self.assertEqual(any(b >= 0x80 for b in raw), expect_8bit, name)
            subject = str(msg["Subject"])  # decoded by the policy
            self.assertIn("failure notice: ", subject)
            self.assertIn(subject[len("failure notice: "):], texts[0], name)

    def test_golden_ret_full_attaches_message_and_hdrs_only_headers(self):
        with open(os.path.join(GOLDEN_DIR, "ret_full.eml"), "rb") as f:
            full = email.message_from_bytes(f.read(), policy=email.policy.default)
        attached = full.get_payload()[2]
        self.assertEqual(attached.get_content_type(), "message/rfc822")
        inner = attached.get_payload()[0]
        self.assertEqual(str(inner["Subject"]), "Quarterly report")
        self.assertIn("the numbers are attached", inner.get_content())
        with open(os.path.join(GOLDEN_DIR, "ret_hdrs.eml"), "rb") as f:
            hdrs = f.read()
        self.assertNotIn(b"the numbers are attached", hdrs)
        self.assertEqual(email.message_from_bytes(hdrs, policy=email.policy.default).get_payload()[2]
                         .get_content_type(), "text/rfc822-headers")


# ---- whole system -----------------------------------------------------------

def body(tag, sender="alice@sender.test", to="someone@reject.test"):
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: bounce test {tag}\r\n"
            f"Message-Id: <{tag}@client.test>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n"
            f"Body of {tag}.\r\n").encode()


def send(cluster, mail_from, rcpts, data):
    host, port = cluster.smtp_address()
    with smtplib.SMTP(host, port, timeout=30) as s:
        s.ehlo("client.test")
        return s.sendmail(mail_from, rcpts, data)


def bouncer_metric(cluster, name):
    return cluster.metric("bouncer", name)


def log_events(cluster, service, event):
    with open(os.path.join(cluster.logs, f"{service}.log"), "rb") as f:
        return [line for line in f.read().decode("utf-8", "replace").splitlines() if event in line]


class ClusterTest(ClusterTestCase, DsnChecks):

    def dsns_about(self, sink, needle):
        return [m for m in sink.received() if needle in m.data]

    def assert_quiet(self, check, seconds, what):
        """`check()` stays true for `seconds` (nothing more happens)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.assertTrue(check(), what)
            time.sleep(0.2)


class BounceSystemTest(ClusterTest):

    def test_refused_message_ends_as_exactly_one_dsn_at_the_senders_mx(self):
        c = self.cluster
        send(c, "alice@sender.test", ["single@reject.test"], body("single"))
        sink = c.sinks["sender.test"]
        dsns = c.wait_until(lambda: self.dsns_about(sink, b"single@reject.test"), 60, "DSN at sender.test")
        # Wait a while: a second DSN (e.g. from a re-leased job) would show up here.
        self.assert_quiet(lambda: len(self.dsns_about(sink, b"single@reject.test")) == 1, 6, "one DSN only")
        dsn = dsns[0]
        self.assertEqual(dsn.mail_from, "")
        self.assertEqual(dsn.rcpts, ["alice@sender.test"])
        msg, recipients, texts = self.check_dsn(dsn.data, "system DSN")
        self.assertEqual(len(recipients), 1)
        self.assertEqual(recipients[0]["final-recipient"], "rfc822;single@reject.test")
        self.assertEqual(recipients[0]["action"], "failed")
        self.assertEqual(recipients[0]["status"], "5.1.1")
        self.assertIn("No such user here", recipients[0]["diagnostic-code"])
        self.assertEqual(str(msg["In-Reply-To"]).strip(), "<single@client.test>")
        # The shipped templates: a text and an HTML alternative.
        self.assertEqual(len(texts), 2)
        self.assertIn("bounce test single", texts[0])

    def test_partial_failure_dsn_lists_only_the_failed_recipient(self):
        c = self.cluster
        send(c, "alice@sender.test", ["ok@good.test", "partial@reject.test"], body("partial"))
        delivered = c.wait_until(lambda: [m for m in c.sinks["good.test"].received()
                                          if b"bounce test partial" in m.data], 60, "delivery to good.test")
        self.assertEqual(delivered[0].rcpts, ["ok@good.test"])
        sink = c.sinks["sender.test"]
        dsns = c.wait_until(lambda: self.dsns_about(sink, b"partial@reject.test"), 60, "DSN for the failure")
        self.assert_quiet(lambda: len(self.dsns_about(sink, b"bounce test partial")) == 1, 4, "one DSN only")
        _, recipients, texts = self.check_dsn(dsns[0].data, "partial DSN")
        self.assertEqual([r["final-recipient"] for r in recipients], ["rfc822;partial@reject.test"])
        self.assertNotIn("ok@good.test", texts[0])

    def test_undeliverable_dsn_is_one_double_bounce_and_no_loop(self):
        c = self.cluster
        reject = c.sinks["reject.test"]
        before_db = bouncer_metric(c, "tern_bouncer_double_bounces_total")
        before_attempts = reject.rcpt_attempts
        # The sender's own domain refuses too, so the DSN bounces.
        send(c, "loop@reject.test", ["victim@reject.test"], body("loop", sender="loop@reject.test"))
        c.wait_until(lambda: bouncer_metric(c, "tern_bouncer_double_bounces_total") >= before_db + 1, 90,
                     "a double bounce")
        # The original RCPT and the DSN's RCPT, and then nothing more.
        attempts = reject.rcpt_attempts
        self.assertEqual(attempts - before_attempts, 2)
        self.assert_quiet(lambda: reject.rcpt_attempts == attempts
                          and bouncer_metric(c, "tern_bouncer_double_bounces_total") == before_db + 1,
                          8, "no further delivery attempts or double bounces")
        records = [e for e in log_events(c, "bouncer", "double_bounce") if "none configured" in e]
        self.assertEqual(len(records), 1, records)
        self.assertEqual([m for m in reject.received() if b"bounce test loop" in m.data], [])
        c.wait_until(lambda: int(c.stats().get("messages", -1)) == 0, 30, "queue drained")


class DoubleBounceCopyTest(ClusterTest):

    def set_postmaster(self, address):
        """Sets double_bounce_recipient in tern.ini and waits for the running
        bouncer to apply it by itself (its config watch, as on SIGHUP)."""
        c = self.cluster
        before = len(log_events(c, "bouncer", " config_reloaded "))
        # [bouncer] is the last section of the generated tern.ini.
        with open(os.path.join(c.config, "tern.ini"), "a") as f:
            f.write(f"double_bounce_recipient={address}\n")
        reloaded = c.wait_until(lambda: log_events(c, "bouncer", " config_reloaded ")[before:], 30,
                                "the bouncer to reload tern.ini")
        self.assertIn(f"double_bounce_recipient={address}", reloaded[0])

    def test_a_changed_hooks_ini_is_named_as_needing_a_restart(self):
        c = self.cluster
        before = len(log_events(c, "bouncer", " reload_needs_restart "))
        path = os.path.join(c.config, "hooks.ini")
        try:
            with open(path, "w") as f:
                f.write("[main]\naddress=127.0.0.1:1\nhooks=bounce\n")
            named = c.wait_until(lambda: log_events(c, "bouncer", " reload_needs_restart ")[before:], 30,
                                 "the bouncer to name hooks.ini")
            self.assertIn("hooks.ini", named[0])
        finally:
            os.remove(path)

    def test_double_bounce_copy_reaches_postmaster_and_a_failed_copy_is_not_copied(self):
        c = self.cluster
        self.set_postmaster("postmaster@good.test")
        good = c.sinks["good.test"]
        send(c, "copy@reject.test", ["gone@reject.test"], body("copy", sender="copy@reject.test"))
        # The copy reports on the DSN, whose recipient was the original sender.
        marker = b"Final-Recipient: rfc822;copy@reject.test"
        copies = c.wait_until(lambda: [m for m in good.received() if marker in m.data], 90, "postmaster copy")
        self.assert_quiet(lambda: len([m for m in good.received() if marker in m.data]) == 1, 5, "one copy")
        self.assertEqual(copies[0].mail_from, "")
        self.assertEqual(copies[0].rcpts, ["postmaster@good.test"])
        _, recipients, _ = self.check_dsn(copies[0].data, "postmaster copy")
        self.assertEqual([r["final-recipient"] for r in recipients], ["rfc822;copy@reject.test"])
        self.assertEqual(bouncer_metric(c, "tern_bouncer_double_bounce_copies_total"), 1)

        # Now a postmaster that refuses too: one copy attempt, then silence.
        c.wait_until(lambda: int(c.stats().get("messages", -1)) == 0, 30, "queue drained")
        self.set_postmaster("postmaster@reject.test")
        reject = c.sinks["reject.test"]
        before = reject.rcpt_attempts
        double_bounces = bouncer_metric(c, "tern_bouncer_double_bounces_total")
        send(c, "again@reject.test", ["gone2@reject.test"], body("again", sender="again@reject.test"))
        c.wait_until(lambda: bouncer_metric(c, "tern_bouncer_double_bounces_total") >= double_bounces + 2, 90,
                     "double bounce of the DSN and of the copy")
        attempts = reject.rcpt_attempts
        # Original, DSN, postmaster copy: three RCPTs, no fourth.
        self.assertEqual(attempts - before, 3)
        self.assert_quiet(lambda: reject.rcpt_attempts == attempts
                          and bouncer_metric(c, "tern_bouncer_double_bounces_total") == double_bounces + 2, 8,
                          "no loop")
        self.assertEqual(bouncer_metric(c, "tern_bouncer_double_bounce_copies_total"), 2)
        c.wait_until(lambda: int(c.stats().get("messages", -1)) == 0, 30, "queue drained")


if __name__ == "__main__":
    unittest.main()
