"""MTA-STS (RFC 8461) end to end: tern-deliverer, real DNS, a real HTTPS
policy server and a real Postfix as the receiving MTA.

Everything the deliverer meets is real except the policy host's contents:

  dnsmasq   MX, A and TXT `_mta-sts.<domain>` records for five test domains;
  HTTPS     Python's http.server behind ssl (a thread of this process) on
            HTTPS_IP:<mta_sts_port>, one certificate from the test CA for
            every mta-sts.<domain>, a policy per Host, every request recorded;
  Postfix   the private instance of deliverer_postfix_test.PostfixServer,
            STARTTLS with a certificate for mx.postfix.test from the same test
            CA, listening on POSTFIX_IP:<mx_port> so MX delivery reaches it.

tls.ini sets only `ca=` (the test CA is trusted) and not rejectUnauthorized:
opportunistic TLS stays unverified, so a `tls_verified=yes` can only come
from the MTA-STS policy. No static route covers these domains (MTA-STS is
for MX delivery only).

The domains, one per behaviour (each has MX records and an mta-sts host):

  sts-enforce.test  enforce, mx *.postfix.test  -> delivered, verified TLS
  sts-refuse.test   enforce, mx elsewhere       -> deferred, no connection
  sts-testing.test  testing, mx elsewhere       -> delivered, mismatch logged
  sts-badname.test  enforce, MX mx2.sts-badname.test (Postfix's address, but
                    its certificate is for mx.postfix.test) -> deferred
  sts-restart.test  enforce, mx *.postfix.test; delivered again after a
                    deliverer restart with the policy from the queue
  sts-none.test     no TXT record; its mta-sts host would serve a refusing
                    enforce policy, so a fetch without a record would show

Needs root (Postfix), postfix, sasl2-bin, openssl and dnsmasq.
"""

import http.server
import re
import ssl
import sys
import threading
import unittest
import urllib.request

from cluster import free_port
from deliverer_postfix_test import MX, PostfixMxCluster, PostfixMxTestCase, field, received_header, run
from deliverer_test import deliverer_log_lines, ternctl_json

POSTFIX_IP = PostfixMxCluster.POSTFIX_IP
HTTPS_IP = "127.0.0.12"
WELL_KNOWN = "/.well-known/mta-sts.txt"
BADNAME_MX = "mx2.sts-badname.test"

# domain -> (MX host, TXT record or None, policy served at mta-sts.<domain>).
DOMAINS = {
    "sts-enforce.test": (MX, "v=STSv1; id=enforce2026;",
                         "version: STSv1\r\nmode: enforce\r\nmx: backup.elsewhere.test\r\nmx: *.postfix.test\r\n"
                         "max_age: 86400\r\n"),
    # "*.test" must not match mx.postfix.test: the wildcard is one label.
    "sts-refuse.test": (MX, "v=STSv1; id=refuse2026;",
                        "version: STSv1\r\nmode: enforce\r\nmx: mx.sts-refuse.test\r\nmx: *.test\r\n"
                        "max_age: 86400\r\n"),
    "sts-testing.test": (MX, "v=STSv1; id=testing2026;",
                         "version: STSv1\r\nmode: testing\r\nmx: mx.sts-testing.test\r\nmax_age: 86400\r\n"),
    "sts-badname.test": (BADNAME_MX, "v=STSv1; id=badname2026;",
                         f"version: STSv1\r\nmode: enforce\r\nmx: {BADNAME_MX}\r\nmax_age: 86400\r\n"),
    "sts-restart.test": (MX, "v=STSv1; id=restart2026;",
                         "version: STSv1\r\nmode: enforce\r\nmx: *.postfix.test\r\nmax_age: 86400\r\n"),
    "sts-none.test": (MX, None,
                      "version: STSv1\r\nmode: enforce\r\nmx: mx.nowhere.test\r\nmax_age: 86400\r\n"),
}


def make_sts_cert(pki):
    """A certificate for every mta-sts.<domain>, signed by make_pki's test CA
    (the one tls.ini's `ca` names)."""
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{pki}/sts.key", "-out", f"{pki}/sts.csr", "-subj", "/CN=mta-sts policy host"])
    sans = ",".join(f"DNS:mta-sts.{d}" for d in DOMAINS)
    with open(f"{pki}/sts.ext", "w") as f:
        f.write(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    run(["openssl", "x509", "-req", "-in", f"{pki}/sts.csr", "-CA", f"{pki}/ca.pem", "-CAkey", f"{pki}/ca.key",
         "-CAcreateserial", "-out", f"{pki}/sts.pem", "-days", "2", "-extfile", f"{pki}/sts.ext"])
    return f"{pki}/sts.pem", f"{pki}/sts.key"


class _PolicyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a silent client costs one thread for 10 s at most

    def do_GET(self):
        owner = self.server.owner
        host = self.headers.get("Host", "")
        owner.record({"method": "GET", "path": self.path, "host": host,
                      "sni": getattr(self.connection, "sni_name", None),
                      "user_agent": self.headers.get("User-Agent", "")})
        policy = owner.policies.get(host.split(":", 1)[0].lower()) if self.path == WELL_KNOWN else None
        body = (policy or "no such policy\r\n").encode()
        self.send_response(200 if policy else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_POST(self):
        # RFC 8460 §5.3: a TLS report POSTed to an https: rua; the body is
        # recorded whole, and 201 says it was taken.
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if 0 < length <= 1 << 20 else b""
        self.server.owner.record({"method": "POST", "path": self.path, "host": self.headers.get("Host", ""),
                                  "sni": getattr(self.connection, "sni_name", None),
                                  "content_type": self.headers.get("Content-Type", ""),
                                  "user_agent": self.headers.get("User-Agent", ""), "body": body})
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def log_message(self, fmt, *args):
        pass  # every request is recorded by the server instead


class _TlsHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, so a
        # stuck client cannot hold up accept().
        request.settimeout(10)
        try:
            tls = self.owner.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.owner.record({"method": None, "handshake_error": str(e)})
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class PolicyServer:
    """HTTPS on host:port serving `policies` (Host name -> policy text) at
    /.well-known/mta-sts.txt as text/plain; 404 for anything else; 201 to
    any POST (a TLS report). Records each request (method, path, Host, the
    TLS SNI; a POST's Content-Type and body) and failed handshakes."""

    def __init__(self, host, port, certfile, keyfile, policies):
        self.policies = policies
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        self._lock = threading.Lock()
        self.context.sni_callback = self._on_sni
        self._requests = []
        self._sni_seen = []
        self.httpd = _TlsHttpServer((host, port), _PolicyHandler)
        self.httpd.owner = self
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def _on_sni(self, tls_socket, name, context):
        # Kept on the connection for the request record (the deliverer must
        # name mta-sts.<domain> in the handshake, not only in Host), and in a
        # list that also holds handshakes which failed before any request.
        tls_socket.sni_name = name
        with self._lock:
            self._sni_seen.append(name)
        return None

    def sni_seen(self):
        with self._lock:
            return list(self._sni_seen)

    def record(self, entry):
        with self._lock:
            self._requests.append(entry)

    def requests(self):
        with self._lock:
            return list(self._requests)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


class MtaStsCluster(PostfixMxCluster):
    """Postfix reached by MX delivery for DOMAINS, plus the policy server."""

    def __init__(self):
        super().__init__(DOMAINS)
        self.https = None
        self.https_port = free_port(HTTPS_IP)
        # A short fetch timeout: a hung fetch shows as a failure within the
        # tests' patience instead of after the default 10 s.
        self.deliverer_ini_extra = f"mta_sts_port={self.https_port}\nmta_sts_timeout=5\n"

    def dns_extra_args(self):
        args = [f"--host-record={MX},{POSTFIX_IP}", f"--host-record={BADNAME_MX},{POSTFIX_IP}"]
        for domain, (mx, txt, _) in DOMAINS.items():
            args.append(f"--mx-host={domain},{mx},10")
            args.append(f"--host-record=mta-sts.{domain},{HTTPS_IP}")
            if txt:
                args.append(f"--txt-record=_mta-sts.{domain},{txt}")
        return args

    def _write_config(self):
        super()._write_config()
        self.sts_cert = make_sts_cert(self.postfix.pki)
        # Only the CA: no rejectUnauthorized, no force_tls_hosts.
        self.write_tls_ini(ca=f"{self.postfix.pki}/ca.pem")

    def _start_sinks(self):
        super()._start_sinks()
        policies = {f"mta-sts.{d}": policy for d, (_, _, policy) in DOMAINS.items()}
        self.https = PolicyServer(HTTPS_IP, self.https_port, *self.sts_cert, policies).start()

    def dump_logs(self):
        super().dump_logs()
        if self.https is not None:
            lines = "\n".join(str(r) for r in self.https.requests())
            sys.stderr.write(f"\n===== MTA-STS policy server requests =====\n{lines}\n")

    def close(self):
        try:
            super().close()
        finally:
            if self.https is not None:
                self.https.stop()


def deliverer_metric(cluster, name, **labels):
    """One series of a deliverer metric (0 when it was never set)."""
    url = f"http://127.0.0.1:{cluster.ports['m_deliverer']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        m = re.match(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")) == labels:
            return float(m.group(2))
    return 0.0


class MtaStsPostfixTest(PostfixMxTestCase):
    CLUSTER = MtaStsCluster

    def setUp(self):
        super().setUp()
        self.https = self.cluster.https

    # -- helpers ---------------------------------------------------------------
    def policy_requests(self, domain):
        return [r for r in self.https.requests()
                if r.get("host", "").split(":", 1)[0] == f"mta-sts.{domain}"]

    def assert_fetched_once(self, domain):
        """The deliverer fetched the policy of `domain` exactly once, as RFC
        8461 §3.3 says: GET of the well-known path, SNI and Host naming
        mta-sts.<domain> (Host with or without the port: RFC 9110 wants it
        for a port other than 443, which only tests use)."""
        host = f"mta-sts.{domain}"
        (req,) = self.policy_requests(domain)
        self.assertEqual(req["method"], "GET", req)
        self.assertEqual(req["path"], WELL_KNOWN, req)
        self.assertIn(req["host"], (host, f"{host}:{self.cluster.https_port}"), req)
        self.assertEqual(req["sni"], host, req)
        self.assertEqual(self.https.sni_seen().count(host), 1, self.https.sni_seen())

    # -- enforce, listed MX ------------------------------------------------------
    def test_enforce_policy_delivers_over_verified_tls_to_a_listed_mx(self):
        domain = "sts-enforce.test"
        before = deliverer_metric(self.cluster, "tern_deliverer_mta_sts_total", mode="enforce")
        # An opportunistic (unverified) session to the same MX first, which
        # the pool may keep: the enforced delivery must not ride on it.
        self.deliver("sts-none.test", "pool warmer")
        stored, attempt = self.deliver(domain, "enforced")
        # Tern's facts: STARTTLS with a verified certificate, although
        # tls.ini does not ask for verification; a new session.
        self.assertEqual(field(attempt, "tls_verified"), "yes", attempt)
        self.assertEqual(field(attempt, "reused"), "no", attempt)
        tls = field(attempt, "tls")
        self.assertRegex(tls, r"^TLSv1\.[23] \S+$", attempt)
        protocol, cipher = tls.split(" ")
        # Postfix's facts: ESMTPS with the same protocol and cipher.
        received = received_header(stored)
        self.assertRegex(received, rf"by {re.escape(MX)} \(Postfix\) with ESMTPS ")
        self.assertIn(f"(using {protocol} with cipher {cipher} ", received)
        self.assertIn(b"Hello Postfix (enforced).", stored)
        self.assert_fetched_once(domain)
        self.assertGreaterEqual(deliverer_metric(self.cluster, "tern_deliverer_mta_sts_total", mode="enforce"),
                                before + 1)
        # A second message uses the cached policy (same id in the TXT
        # record: no second fetch) and still verified TLS.
        _, again = self.deliver(domain, "enforced again")
        self.assertEqual(field(again, "tls_verified"), "yes", again)
        self.assert_fetched_once(domain)

    # -- the queue keeps the policy -----------------------------------------------
    def test_enforced_policy_outlives_a_deliverer_restart_without_a_new_fetch(self):
        domain = "sts-restart.test"
        _, first = self.deliver(domain, "before restart")
        self.assertEqual(field(first, "tls_verified"), "yes", first)
        self.assert_fetched_once(domain)
        # A new deliverer process: its memory is empty, the queue's store is
        # not, so the policy applies without another fetch (RFC 8461 §5.1).
        self.cluster.restart_deliverer()
        _, again = self.deliver(domain, "after restart")
        self.assertEqual(field(again, "tls_verified"), "yes", again)
        self.assert_fetched_once(domain)
        self.assertEqual(deliverer_metric(self.cluster, "tern_deliverer_mta_sts_stored_total"), 1)

    # -- enforce, MX not listed -------------------------------------------------
    def test_enforce_policy_without_a_listed_mx_defers_and_never_connects(self):
        domain, tag = "sts-refuse.test", "refused"
        connects = self.postfix_log_count(r"\]: connect from ")
        refused_before = deliverer_metric(self.cluster, "tern_deliverer_mta_sts_refused_mx_total")
        msg_id = self.send(domain, tag)
        try:
            result = self.deferred_result(msg_id)
            self.assertEqual(result["enhanced_status"], "4.4.4", result)
            self.assertIn(f"no usable MX for {domain}: {MX}: not an MX host of the MTA-STS policy of {domain} "
                          "(id refuse2026)", result["reply_text"])
            self.assertEqual(result["remote_ip"], "", result)
            # No SMTP session was started, and the refusal was logged.
            self.assertEqual(self.msg_lines(msg_id, "attempt"), [])
            refusals = [l for l in deliverer_log_lines(self.cluster, "mta_sts_mx_refused") if f"msg={msg_id}" in l]
            self.assertTrue(refusals, "no mta_sts_mx_refused line")
            refusal = refusals[0]  # one per attempt; retries may add more
            self.assertEqual(field(refusal, "domain"), domain, refusal)
            self.assertEqual(field(refusal, "mx"), MX, refusal)
            self.assertEqual(field(refusal, "id"), "refuse2026", refusal)
            self.assertGreaterEqual(deliverer_metric(self.cluster, "tern_deliverer_mta_sts_refused_mx_total"),
                                    refused_before + 1)
            # Nothing reached Postfix, not even a connection.
            self.assertIsNone(self.postfix.message_with(tag))
            self.assertEqual(self.postfix_log_count(r"\]: connect from "), connects, self.postfix.log()[-3000:])
            self.assert_fetched_once(domain)
        finally:
            ternctl_json(self.cluster, "delete", msg_id, "--yes")

    # -- testing mode -------------------------------------------------------------
    def test_testing_policy_delivers_anyway_and_logs_the_mismatch(self):
        domain = "sts-testing.test"
        before = deliverer_metric(self.cluster, "tern_deliverer_mta_sts_total", mode="testing")
        msg_id = self.send(domain, "testing mode")
        stored = self.cluster.wait_until(lambda: self.postfix.message_with("testing mode"), 60,
                                         "Postfix to store the testing-mode message")
        self.assertRegex(received_header(stored), rf"by {re.escape(MX)} \(Postfix\) with ESMTPS ")
        (attempt,) = self.cluster.wait_until(lambda: self.msg_lines(msg_id, "attempt"), 30, "the attempt line")
        # Testing mode changes nothing: opportunistic, unverified TLS as
        # tls.ini says.
        self.assertEqual(field(attempt, "relay"), f"{MX}[{POSTFIX_IP}]:{self.mx_port}", attempt)
        self.assertEqual(field(attempt, "tls_verified"), "no", attempt)
        (mismatch,) = [l for l in deliverer_log_lines(self.cluster, "mta_sts_testing_mismatch")
                       if f"msg={msg_id}" in l]
        self.assertEqual(field(mismatch, "domain"), domain, mismatch)
        self.assertEqual(field(mismatch, "mx"), MX, mismatch)
        self.assertEqual(field(mismatch, "id"), "testing2026", mismatch)
        self.assertEqual(deliverer_metric(self.cluster, "tern_deliverer_mta_sts_total", mode="testing"), before + 1)
        self.assert_fetched_once(domain)

    # -- enforce, certificate not for the MX name ---------------------------------
    def test_enforce_policy_defers_when_the_certificate_does_not_match_the_mx_name(self):
        domain, tag = "sts-badname.test", "bad name"
        tls_errors = self.postfix_log_count(r"SSL_accept error from ")
        msg_id = self.send(domain, tag)
        try:
            result = self.deferred_result(msg_id)
            relay = f"{BADNAME_MX}[{POSTFIX_IP}]:{self.mx_port}"
            self.assertEqual(result["enhanced_status"], "4.7.5", result)
            self.assertIn(f"TLS is required by the MTA-STS policy of {domain}, but the certificate of host {relay} "
                          "did not verify: ", result["reply_text"])
            self.assertIn("certificate verify failed", result["reply_text"])
            self.assertFalse(result.get("tls"), "no TLS session was used for mail")
            # The session got as far as the TLS handshake, which Tern broke
            # off (Postfix logs the failed accept), with no plain-text retry.
            attempts = self.msg_lines(msg_id, "attempt")
            self.assertTrue(attempts)
            self.assertEqual(field(attempts[0], "relay"), relay, attempts[0])
            self.cluster.wait_until(lambda: self.postfix_log_count(r"SSL_accept error from ") > tls_errors, 10,
                                    "Postfix to log the refused handshake")
            self.assertIsNone(self.postfix.message_with(tag))
            self.assert_fetched_once(domain)
        finally:
            ternctl_json(self.cluster, "delete", msg_id, "--yes")

    # -- no policy ------------------------------------------------------------------
    def test_domain_without_a_policy_record_is_delivered_without_a_fetch(self):
        domain = "sts-none.test"
        before = deliverer_metric(self.cluster, "tern_deliverer_mta_sts_total", mode="absent")
        stored, attempt = self.deliver(domain, "no policy")
        self.assertEqual(field(attempt, "tls_verified"), "no", attempt)
        self.assertRegex(received_header(stored), rf"by {re.escape(MX)} \(Postfix\) with ESMTPS ")
        # mta-sts.sts-none.test resolves and would serve a policy refusing
        # this MX: without the TXT record it must not even be contacted.
        self.assertEqual(self.policy_requests(domain), [])
        self.assertNotIn(f"mta-sts.{domain}", self.https.sni_seen())
        self.assertGreaterEqual(deliverer_metric(self.cluster, "tern_deliverer_mta_sts_total", mode="absent"),
                                before + 1)


if __name__ == "__main__":
    unittest.main()
