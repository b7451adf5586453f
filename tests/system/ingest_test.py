"""tern-ingest against real clients: swaks and Python's smtplib (and raw
sockets for the malformed input no client library will send), with the real
tern-queue behind it (synced writes).

Only the queue and ingest run: what is tested ends at the queue's durable 250.
The client address decides relaying: 127.0.0.1 is in relay_acl_allow,
127.0.0.2 is not (Linux routes all of 127/8 to loopback), so AUTH is the only
way for 127.0.0.2 to relay. A self-signed certificate is made with
`openssl req` for each run.
"""

import base64
import hashlib
import hmac
import os
import resource
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import unittest

from cluster import Cluster, ClusterTestCase, binary, free_port, wait_port

OUTSIDER = "127.0.0.2"


class IngestCluster(Cluster):
    """Queue + ingest only, with TLS, AUTH users, tight limits and a PROXY host list."""

    def __init__(self, ingest_ini_extra=""):
        super().__init__(relay_acl=("127.0.0.1/32",), ingest_ini_extra=ingest_ini_extra)

    def _set_up(self):
        self._write_config()
        for service in ("queue", "ingest"):
            self.start(service)

    def _write_config(self):
        super()._write_config()
        p = self.ports
        p["smtps"] = free_port()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", "/CN=tern.test", "-keyout", os.path.join(self.config, "tls_key.pem"),
             "-out", os.path.join(self.config, "tls_cert.pem")],
            check=True, capture_output=True, timeout=60)
        with open(os.path.join(self.config, "smtp.ini"), "w") as f:
            f.write(f"[main]\nlisten=127.0.0.1:{p['smtp']},127.0.0.1:{p['smtps']}\nsmtps_port={p['smtps']}\n"
                    "inactivity_timeout=3\nforce_shutdown_timeout=10\n"
                    # Sessions on three threads: every test here also checks
                    # that sessions on different threads share the limits,
                    # the tarpit and the shutdown (the other system tests
                    # run the default, one).
                    "nodes=3\n")
        with open(os.path.join(self.config, "connection.ini"), "w") as f:
            f.write("[max]\nbytes=200000\nrecipients=5\nconnections_per_ip=30\n"
                    "[headers]\nmax_received=10\n"
                    # A proxy that is not us: PROXY from loopback must be refused.
                    "[haproxy]\nhosts[]=192.0.2.4\n")
        with open(os.path.join(self.config, "auth_flat_file.ini"), "w") as f:
            f.write("[core]\nmethods=PLAIN,LOGIN,CRAM-MD5\nfail_delay_ms=300\nfail_delay_max_ms=1200\n"
                    "[users]\nalice=wonderland\n")

    def smtps_address(self):
        return ("127.0.0.1", self.ports["smtps"])


def no_verify():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Raw:
    """A plain socket client with timeouts, for input no SMTP library sends."""

    def __init__(self, address, source=None, timeout=10):
        self.sock = socket.create_connection(address, timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        """One whole reply as bytes, b"" at EOF."""
        out = b""
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return out
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            out += line + b"\n"
            if len(line) < 4 or line[3:4] != b"-":
                return out

    def cmd(self, line):
        self.send(line + b"\r\n")
        return self.reply()

    def at_eof(self):
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            return False

    def close(self):
        self.sock.close()


class IngestSystemTest(ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        return IngestCluster()

    def greet(self, source=None):
        c = Raw(self.cluster.smtp_address(), source=source)
        self.assertTrue(c.reply().startswith(b"220 tern.test"))
        self.assertTrue(c.cmd(b"EHLO client.test").startswith(b"250-tern.test"))
        return c

    # -- TLS -----------------------------------------------------------------
    def test_swaks_starttls_queues(self):
        host, port = self.cluster.smtp_address()
        out = subprocess.run(["swaks", "--server", f"{host}:{port}", "--tls", "--from", "a@sender.test",
                              "--to", "r@good.test", "--timeout", "20"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("<-  220 2.0.0 Ready to start TLS", out.stdout)
        self.assertRegex(out.stdout, r"<~  250 2\.0\.0 Ok: queued as \S+")

    def test_smtplib_starttls_and_ehlo_after_tls(self):
        with smtplib.SMTP(*self.cluster.smtp_address(), timeout=20) as s:
            code, text = s.ehlo("client.test")
            self.assertEqual(code, 250)
            self.assertTrue(s.has_extn("starttls"))
            self.assertFalse(s.has_extn("auth"))  # AUTH only after TLS by default
            self.assertTrue(s.has_extn("chunking"))
            s.starttls(context=no_verify())
            s.ehlo("client.test")
            self.assertFalse(s.has_extn("starttls"))
            self.assertEqual(s.esmtp_features.get("auth", "").split(), ["PLAIN", "LOGIN", "CRAM-MD5"])
            refused = s.sendmail("a@sender.test", ["r@good.test"], b"Subject: tls\r\n\r\nhello\r\n")
            self.assertEqual(refused, {})

    def test_smtplib_implicit_tls_listener(self):
        with smtplib.SMTP_SSL(*self.cluster.smtps_address(), context=no_verify(), timeout=20) as s:
            s.ehlo("client.test")
            self.assertFalse(s.has_extn("starttls"))
            self.assertIn("PLAIN", s.esmtp_features.get("auth", ""))
            self.assertEqual(s.sendmail("a@sender.test", ["r@good.test"], b"Subject: smtps\r\n\r\nx\r\n"), {})

    def test_starttls_with_pipelined_command_is_refused(self):
        c = self.greet()
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
        self.assertEqual(c.reply(), b"554 5.5.1 Error: command pipelined after STARTTLS\r\n")
        self.assertTrue(c.at_eof())

    # -- AUTH ----------------------------------------------------------------
    def test_unauthenticated_outsider_cannot_relay(self):
        with smtplib.SMTP(*self.cluster.smtp_address(), timeout=20, source_address=(OUTSIDER, 0)) as s:
            with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
                s.sendmail("a@sender.test", ["r@good.test"], b"Subject: x\r\n\r\nx\r\n")
            self.assertEqual(cm.exception.recipients["r@good.test"][0], 550)

    def test_smtplib_auth_plain_and_login_allow_relaying(self):
        for mechanism in ("PLAIN", "LOGIN"):
            with self.subTest(mechanism=mechanism):
                with smtplib.SMTP(*self.cluster.smtp_address(), timeout=20, source_address=(OUTSIDER, 0)) as s:
                    s.starttls(context=no_verify())
                    s.ehlo("client.test")
                    s.user, s.password = "alice", "wonderland"
                    auth = {"PLAIN": s.auth_plain, "LOGIN": s.auth_login}[mechanism]
                    code, _ = s.auth(mechanism, auth, initial_response_ok=(mechanism == "PLAIN"))
                    self.assertEqual(code, 235)
                    self.assertEqual(s.sendmail("alice@sender.test", ["r@good.test"],
                                                b"Subject: auth\r\n\r\nx\r\n"), {})

    def test_swaks_auth_cram_md5_from_outsider(self):
        host, port = self.cluster.smtp_address()
        out = subprocess.run(["swaks", "--server", f"{host}:{port}", "--local-interface", OUTSIDER, "--tls",
                              "--auth", "CRAM-MD5", "--auth-user", "alice", "--auth-password", "wonderland",
                              "--from", "alice@sender.test", "--to", "r@good.test", "--timeout", "20"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("235 2.7.0 Authentication successful", out.stdout)
        self.assertRegex(out.stdout, r"250 2\.0\.0 Ok: queued as \S+")

    def test_auth_errors(self):
        c = self.greet(source=OUTSIDER)
        self.assertEqual(c.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wonderland")),
                         b"538 5.7.11 Encryption required for requested authentication mechanism\r\n")
        c.close()
        with smtplib.SMTP(*self.cluster.smtp_address(), timeout=20, source_address=("127.0.0.3", 0)) as s:
            s.starttls(context=no_verify())
            s.ehlo("client.test")
            self.assertEqual(s.docmd("AUTH", "PLAIN %%%notbase64"), (501, b"5.5.2 Cannot decode response"))
            start = time.time()
            code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0wrong").decode())
            self.assertEqual(code, 535)
            self.assertGreaterEqual(time.time() - start, 0.25)  # tarpit
            start = time.time()
            code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0wrong").decode())
            self.assertEqual(code, 535)
            self.assertGreaterEqual(time.time() - start, 0.55)  # doubled
        # The password never reaches the log.
        with open(os.path.join(self.cluster.logs, "ingest.log"), "rb") as f:
            log = f.read()
        self.assertIn(b"auth_failed", log)
        self.assertNotIn(b"wonderland", log)

    # -- BDAT ----------------------------------------------------------------
    def test_bdat_pipelined_chunks(self):
        c = self.greet()
        part1 = b"Subject: chunked\r\n\r\nfirst part, "
        part2 = b"second part\r\n"
        c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<r@good.test>\r\n" +
               b"BDAT %d\r\n" % len(part1) + part1 + b"BDAT %d LAST\r\n" % len(part2) + part2)
        self.assertEqual(c.reply(), b"250 2.1.0 Ok\r\n")
        self.assertEqual(c.reply(), b"250 2.1.5 Ok\r\n")
        self.assertEqual(c.reply(), b"250 2.0.0 %d octets received\r\n" % len(part1))
        self.assertRegex(c.reply(), rb"^250 2\.0\.0 Ok: queued as \S+\r\n$")

    # -- bad input -----------------------------------------------------------
    def test_overlong_line_nul_and_out_of_order(self):
        c = self.greet()
        self.assertEqual(c.cmd(b"NOOP " + b"x" * 5000), b"500 5.5.2 Error: line too long\r\n")
        self.assertEqual(c.cmd(b"NOOP \0x"), b"500 5.5.2 Syntax error: control characters in command\r\n")
        self.assertEqual(c.cmd(b"RCPT TO:<r@good.test>"), b"503 5.5.1 Error: need MAIL command\r\n")
        self.assertEqual(c.cmd(b"DATA"), b"503 5.5.1 Error: need MAIL command\r\n")
        self.assertEqual(c.cmd(b"NOOP"), b"250 2.0.0 Ok\r\n")  # still usable

    def test_bare_lf_cannot_smuggle_a_second_message(self):
        c = self.greet()
        self.assertEqual(c.cmd(b"MAIL FROM:<a@sender.test>"), b"250 2.1.0 Ok\r\n")
        self.assertEqual(c.cmd(b"RCPT TO:<r@good.test>"), b"250 2.1.5 Ok\r\n")
        self.assertTrue(c.cmd(b"DATA").startswith(b"354 "))
        c.send(b"Subject: s\r\n\r\ntext\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<v@good.test>\nDATA\n"
               b"smuggled\n.\r\n")
        # One message, one reply: the bare-LF dot did not end DATA.
        self.assertRegex(c.reply(), rb"^250 2\.0\.0 Ok: queued as \S+\r\n$")
        self.assertEqual(c.cmd(b"NOOP"), b"250 2.0.0 Ok\r\n")

    def test_too_many_recipients(self):
        c = self.greet()
        self.assertEqual(c.cmd(b"MAIL FROM:<a@sender.test>"), b"250 2.1.0 Ok\r\n")
        for i in range(5):
            self.assertEqual(c.cmd(b"RCPT TO:<r%d@good.test>" % i), b"250 2.1.5 Ok\r\n")
        self.assertEqual(c.cmd(b"RCPT TO:<r6@good.test>"), b"452 4.5.3 Error: too many recipients\r\n")

    def test_oversize_message_is_refused(self):
        # smtplib declares SIZE=: refused at MAIL FROM (RFC 1870).
        with smtplib.SMTP(*self.cluster.smtp_address(), timeout=20) as s:
            with self.assertRaises(smtplib.SMTPSenderRefused) as cm:
                s.sendmail("a@sender.test", ["r@good.test"], b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300)
            self.assertEqual(cm.exception.smtp_code, 552)
            self.assertEqual(s.noop()[0], 250)
        # Without SIZE=: read to the end, dropped, refused, session goes on.
        c = self.greet()
        self.assertEqual(c.cmd(b"MAIL FROM:<a@sender.test>"), b"250 2.1.0 Ok\r\n")
        self.assertEqual(c.cmd(b"RCPT TO:<r@good.test>"), b"250 2.1.5 Ok\r\n")
        self.assertTrue(c.cmd(b"DATA").startswith(b"354 "))
        c.send(b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300 + b".\r\n")
        self.assertEqual(c.reply(), b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
        self.assertEqual(c.cmd(b"NOOP"), b"250 2.0.0 Ok\r\n")

    def test_never_ending_data_is_cut_off(self):
        c = self.greet()
        self.assertEqual(c.cmd(b"MAIL FROM:<a@sender.test>"), b"250 2.1.0 Ok\r\n")
        self.assertEqual(c.cmd(b"RCPT TO:<r@good.test>"), b"250 2.1.5 Ok\r\n")
        self.assertTrue(c.cmd(b"DATA").startswith(b"354 "))
        line = b"z" * 998 + b"\r\n"
        sent = 0
        closed = False
        try:
            while sent < 20 * 1024 * 1024:  # far past max.bytes + 1 MiB
                c.send(line * 64)
                sent += len(line) * 64
        except OSError:
            closed = True  # the server hung up on the endless message
        self.assertTrue(closed, f"still accepting after {sent} bytes")
        try:
            reply = c.reply()
        except OSError:
            reply = b""  # an RST may overtake the reply
        if reply:
            self.assertEqual(reply, b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")

    def test_slowloris_is_cut_off_by_the_inactivity_timeout(self):
        c = self.greet()
        start = time.time()
        reply = b""
        for ch in b"NOOP this is sent one byte a second":
            try:
                c.send(bytes([ch]))
            except OSError:
                break
            c.sock.settimeout(1.0)
            try:
                reply = c.reply()
            except socket.timeout:
                continue
            if reply:
                break
        elapsed = time.time() - start
        self.assertEqual(reply, b"421 4.4.2 tern.test Error: timeout exceeded\r\n")
        self.assertLess(elapsed, 6)  # inactivity_timeout=3 bounds a whole line

    def test_nodes_sets_the_session_threads(self):
        """smtp.ini nodes=3 gives three session threads (ingest says so at
        start); the other tests here run their sessions on them."""
        with open(os.path.join(self.cluster.logs, "ingest.log"), encoding="utf-8", errors="replace") as f:
            started = [line for line in f if "started" in line and "threads=" in line]
        self.assertTrue(started)
        self.assertIn("threads=3", started[-1])
        # Each thread has its busy gauge, and only those three.
        for thread in range(4):
            name = f'tern_ingest_session_thread_busy_percent{{thread="{thread}"}}'
            self.assertEqual(self.cluster.metric("ingest", name, missing=None) is not None, thread < 3, name)

    def test_thousand_connections_from_one_ip(self):
        """1,000 connections held open from one address: connections_per_ip (30)
        get a banner, the other 970 get 421 4.7.0 and are closed; another
        address still gets through; once they are all closed, ingest is back to
        the file descriptors it had and the address gets its 30 slots again."""
        want = 1000 + 200  # our sockets plus Python's own files
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < want:
            if hard != resource.RLIM_INFINITY and hard < want:
                self.skipTest(f"RLIMIT_NOFILE hard limit {hard} < {want}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        flood = "127.0.0.4"  # an address no other test uses, so its count starts at 0
        limit = 30  # IngestCluster's connections_per_ip
        refused = b"421 4.7.0 tern.test Too many connections from your address, try again later\r\n"
        ingest_fds = f"/proc/{self.cluster.procs['ingest'].pid}/fd"
        baseline = len(os.listdir(ingest_fds))
        clients = []
        try:
            for _ in range(1000):
                clients.append(Raw(self.cluster.smtp_address(), source=flood))
            banners = [c.reply() for c in clients]
            greeted = [c for c, b in zip(clients, banners) if b.startswith(b"220 tern.test")]
            self.assertEqual(len(greeted), limit)
            self.assertEqual(sum(b == refused for b in banners), 1000 - limit,
                             {b for b in banners if b != refused and not b.startswith(b"220 ")})
            for c, b in zip(clients[:50], banners[:50]):  # refused ones are hung up on
                if b == refused:
                    self.assertTrue(c.at_eof())
            # The greeted sessions still work, and other addresses are unaffected.
            self.assertEqual(greeted[0].cmd(b"NOOP"), b"250 2.0.0 Ok\r\n")
            with smtplib.SMTP(*self.cluster.smtp_address(), timeout=20) as s:
                self.assertEqual(s.sendmail("a@sender.test", ["r@good.test"], b"Subject: x\r\n\r\nx\r\n"), {})
        finally:
            for c in clients:
                c.close()
        # Nothing leaks: every socket ingest accepted is closed again (a slack
        # of 3 for a socket gRPC may open to the queue meanwhile; leaking the
        # held sessions would be 30) ...
        deadline = time.time() + 15
        while len(os.listdir(ingest_fds)) > baseline + 3 and time.time() < deadline:
            time.sleep(0.1)
        self.assertLessEqual(len(os.listdir(ingest_fds)), baseline + 3)
        # ... and the per-address count is back to zero: all 30 slots are free.
        again = []
        try:
            for _ in range(limit):
                again.append(Raw(self.cluster.smtp_address(), source=flood))
                self.assertTrue(again[-1].reply().startswith(b"220 tern.test"))
            extra = Raw(self.cluster.smtp_address(), source=flood)
            again.append(extra)
            self.assertEqual(extra.reply(), refused)
        finally:
            for c in again:
                c.close()

    def test_proxy_from_unlisted_host_is_refused(self):
        c = self.greet()
        self.assertEqual(c.cmd(b"PROXY TCP4 192.0.2.9 198.51.100.1 40000 25"),
                         b"421 4.7.0 tern.test PROXY not allowed from 127.0.0.1\r\n")
        self.assertTrue(c.at_eof())


class IngestShutdownTest(unittest.TestCase):
    def test_sigterm_finishes_the_transaction_in_flight(self):
        with IngestCluster() as cluster:
            idle = Raw(cluster.smtp_address())
            self.assertTrue(idle.reply().startswith(b"220 "))
            busy = Raw(cluster.smtp_address())
            self.assertTrue(busy.reply().startswith(b"220 "))
            busy.cmd(b"EHLO c.test")
            self.assertEqual(busy.cmd(b"MAIL FROM:<a@sender.test>"), b"250 2.1.0 Ok\r\n")
            self.assertEqual(busy.cmd(b"RCPT TO:<r@good.test>"), b"250 2.1.5 Ok\r\n")
            self.assertTrue(busy.cmd(b"DATA").startswith(b"354 "))
            busy.send(b"Subject: in flight\r\n\r\n")
            proc = cluster.procs["ingest"]
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(idle.reply(), b"421 4.3.2 tern.test Service shutting down, closing connection\r\n")
            busy.send(b"the end\r\n.\r\n")
            self.assertRegex(busy.reply(), rb"^250 2\.0\.0 Ok: queued as \S+\r\n$")
            self.assertEqual(busy.reply(), b"421 4.3.2 tern.test Service shutting down, closing connection\r\n")
            self.assertEqual(proc.wait(20), 0)
            cluster.procs.pop("ingest")
            with self.assertRaises(RuntimeError):
                wait_port("127.0.0.1", cluster.ports["smtp"], 0.5)


class IngestReloadTest(unittest.TestCase):
    """SIGHUP: tern-ingest reads its config directory again without a restart."""

    def hup(self, cluster, event):
        """Sends SIGHUP and waits for `event` in ingest's log; returns that line."""
        self.log_start = os.path.getsize(os.path.join(cluster.logs, "ingest.log"))
        cluster.procs["ingest"].send_signal(signal.SIGHUP)
        return self.hup_wait(cluster, event)

    def hup_wait(self, cluster, event):
        """Waits for `event` in ingest's log after the last SIGHUP."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(os.path.join(cluster.logs, "ingest.log"), "rb") as f:
                f.seek(self.log_start)
                for line in f.read().decode(errors="replace").splitlines():
                    if f" {event} " in line + " ":
                        return line
            time.sleep(0.05)
        self.fail(f"no {event} after SIGHUP")

    def served_certificate(self, cluster):
        with smtplib.SMTP(*cluster.smtp_address(), timeout=20) as s:
            s.starttls(context=no_verify())
            return s.sock.getpeercert(binary_form=True)

    def file_certificate(self, path):
        with open(path) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    def test_sighup_applies_acl_certificate_and_users_and_survives_a_broken_file(self):
        # Only the signals reload here (no watching), so each step's log
        # line comes from the signal the test sent.
        with IngestCluster(ingest_ini_extra="config_watch_ms=0") as cluster:
            config = cluster.config
            outsider = lambda: smtplib.SMTP(*cluster.smtp_address(), timeout=20, source_address=(OUTSIDER, 0))
            with outsider() as s:
                with self.assertRaises(smtplib.SMTPRecipientsRefused):
                    s.sendmail("a@sender.test", ["r@good.test"], b"Subject: before\r\n\r\nx\r\n")

            # The outsider's network joins relay_acl_allow; a certificate is
            # renewed in place; a user is added.
            with open(os.path.join(config, "relay_acl_allow"), "a") as f:
                f.write("127.0.0.2/32\n")
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-days", "2", "-subj", "/CN=renewed.tern.test", "-keyout", os.path.join(config, "tls_key.pem"),
                 "-out", os.path.join(config, "tls_cert.pem")],
                check=True, capture_output=True, timeout=60)
            with open(os.path.join(config, "auth_flat_file.ini"), "a") as f:
                f.write("bob=builder\n")
            line = self.hup(cluster, "config_reloaded")
            self.assertIn("relay_networks=2", line)
            self.assertIn("auth_users=2", line)
            with outsider() as s:
                self.assertEqual(s.sendmail("a@sender.test", ["r@good.test"], b"Subject: after\r\n\r\nx\r\n"), {})
            renewed = self.file_certificate(os.path.join(config, "tls_cert.pem"))
            self.assertEqual(self.served_certificate(cluster), renewed)
            with smtplib.SMTP(*cluster.smtp_address(), timeout=20, source_address=("127.0.0.3", 0)) as s:
                s.starttls(context=no_verify())
                s.login("bob", "builder")
                self.assertEqual(s.sendmail("bob@sender.test", ["r@good.test"], b"Subject: bob\r\n\r\nx\r\n"), {})

            # A key file half written when the signal comes: the reload is
            # refused and the running certificate, ACL and users stay.
            with open(os.path.join(config, "tls_key.pem"), "w") as f:
                f.write("-----BEGIN PRIVATE KEY-----\nAAAA\n")
            with open(os.path.join(config, "relay_acl_allow"), "w") as f:
                f.write("127.0.0.1/32\n")
            line = self.hup(cluster, "reload_failed")
            self.assertIn("tls_key.pem", line)
            self.assertEqual(self.served_certificate(cluster), renewed)
            with outsider() as s:
                self.assertEqual(s.sendmail("a@sender.test", ["r@good.test"], b"Subject: kept\r\n\r\nx\r\n"), {})

            # Settings only a restart applies are named and keep running as
            # they are; the rest of the same reload applies.
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-days", "2", "-subj", "/CN=third.tern.test", "-keyout", os.path.join(config, "tls_key.pem"),
                 "-out", os.path.join(config, "tls_cert.pem")],
                check=True, capture_output=True, timeout=60)
            p = cluster.ports
            extra = free_port()
            with open(os.path.join(config, "smtp.ini"), "w") as f:
                f.write(f"[main]\nlisten=127.0.0.1:{p['smtp']},127.0.0.1:{p['smtps']},127.0.0.1:{extra}\n"
                        f"smtps_port={p['smtps']}\ninactivity_timeout=3\nforce_shutdown_timeout=10\nnodes=1\n")
            with open(os.path.join(config, "hooks.ini"), "w") as f:
                f.write("[main]\naddress=127.0.0.1:1\nhooks=queue_outbound\n")
            line = self.hup(cluster, "reload_needs_restart")
            self.assertIn("smtp.ini [main] listen/smtps_port", line)
            self.assertIn("smtp.ini [main] nodes", line)
            self.assertIn("hooks.ini", line)
            self.hup_wait(cluster, "config_reloaded")
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", extra), timeout=2).close()
            self.assertEqual(self.served_certificate(cluster),
                             self.file_certificate(os.path.join(config, "tls_cert.pem")))
            with outsider() as s:  # relay_acl_allow as rewritten above
                with self.assertRaises(smtplib.SMTPRecipientsRefused):
                    s.sendmail("a@sender.test", ["r@good.test"], b"Subject: last\r\n\r\nx\r\n")

    def test_a_changed_file_reloads_without_a_signal(self):
        with IngestCluster(ingest_ini_extra="config_watch_ms=200") as cluster:
            outsider = lambda: smtplib.SMTP(*cluster.smtp_address(), timeout=20, source_address=(OUTSIDER, 0))
            with outsider() as s:
                with self.assertRaises(smtplib.SMTPRecipientsRefused):
                    s.sendmail("a@sender.test", ["r@good.test"], b"Subject: before\r\n\r\nx\r\n")
            self.log_start = os.path.getsize(os.path.join(cluster.logs, "ingest.log"))
            # Written as an editor does: to a new file renamed over the old.
            path = os.path.join(cluster.config, "relay_acl_allow")
            with open(path + ".new", "w") as f:
                f.write("127.0.0.1/32\n127.0.0.2/32\n")
            os.rename(path + ".new", path)
            self.hup_wait(cluster, "config_changed")
            self.assertIn("relay_networks=2", self.hup_wait(cluster, "config_reloaded"))
            with outsider() as s:
                self.assertEqual(s.sendmail("a@sender.test", ["r@good.test"], b"Subject: after\r\n\r\nx\r\n"), {})
            # Haraka's legacy one-line file for outbound.ini received_header,
            # made where there was none: the Received: comment follows it.
            self.log_start = os.path.getsize(os.path.join(cluster.logs, "ingest.log"))
            with open(os.path.join(cluster.config, "outbound.received_header"), "w") as f:
                f.write("Example outbound\n")
            self.hup_wait(cluster, "config_changed")
            self.hup_wait(cluster, "config_reloaded")
            with smtplib.SMTP(*cluster.smtp_address(), timeout=20) as s:
                s.ehlo("client.test")
                s.mail("a@sender.test")
                s.rcpt("r@good.test")
                code, reply = s.data(b"Subject: comment\r\n\r\nx\r\n")
            self.assertEqual(code, 250, reply)
            queue_id = reply.decode().rsplit(" ", 1)[1]
            out = subprocess.run([binary("ternctl"), "--queue", f"127.0.0.1:{cluster.ports['queue']}", "show",
                                  queue_id], capture_output=True, text=True, timeout=20)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertRegex(out.stdout, r"by \S+ \(Example outbound\) with ESMTP id ")
            # log.ini: the new level applies at once; debug lines follow.
            self.log_start = os.path.getsize(os.path.join(cluster.logs, "ingest.log"))
            with open(os.path.join(cluster.config, "log.ini"), "w") as f:
                f.write("[main]\nlevel=debug\nformat=logfmt\n")
            line = self.hup_wait(cluster, "event=log_settings_changed")
            self.assertIn("level=debug format=logfmt", line)
            self.hup_wait(cluster, "event=config_reloaded")
            # A file ingest does not read changes nothing.
            with open(os.path.join(cluster.config, "shaping.ini"), "a") as f:
                f.write("\n")
            time.sleep(1)
            with open(os.path.join(cluster.logs, "ingest.log"), "rb") as f:
                text = f.read()
            self.assertEqual(text.count(b" config_changed ") + text.count(b" event=config_changed "), 3)


if __name__ == "__main__":
    unittest.main()
