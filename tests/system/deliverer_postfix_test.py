"""tern-deliverer against a real Postfix as the receiving MTA, on loopback.

A private Postfix instance runs from a temp dir (`postfix -c DIR start-fg`,
its own main.cf/master.cf, queue, maillog and maildir; nothing in
/etc/postfix is touched; as root no alternate_config_directories entry is
needed). It offers STARTTLS with a certificate from a throwaway CA made with
`openssl` at test time, and delivers every accepted message into one maildir
(the virtual delivery agent), so the test reads what Postfix really received,
including its own Received header. Two smtpd listeners:

  plain port: STARTTLS offered (smtpd_tls_security_level=may), no AUTH;
  auth port:  the same plus Cyrus SASL AUTH from a sasldb made with
              saslpasswd2 (sasl2-bin); recipients are refused unless the
              client authenticated, so delivery proves AUTH worked.

The deliverer reaches it through static routes to the host name
mx.postfix.test (dnsmasq gives 127.0.0.1), so SNI and certificate name
checks see a real name. tls.ini changes restart the deliverer.

Needs postfix, sasl2-bin and openssl (scripts/deps.sh installs them) and
root (Postfix's master runs as root and drops to the postfix user).
"""

import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from cluster import ZONES, ClusterTestCase, free_port, free_port_on_all, wait_port
from deliverer_test import DnsCluster, deliverer_log_lines, send_for_id, ternctl_json, wait_for_last_result

MX = "mx.postfix.test"
SASL_USER, SASL_PASS = "tern", "s3cret-Pass"
# A second account, used with a wrong password. (A route with SASL_USER and a
# wrong password would reuse a pooled session that SASL_USER authenticated:
# the pool key holds the user, not the password - one user, one password.)
OTHER_USER, OTHER_PASS = "tern-other", "0ther-Pass"

BODY = ("From: Alice <alice@sender.test>\r\n"
        "Subject: postfix test {tag}\r\n"
        "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        "Message-ID: <{tag}@sender.test>\r\n"
        "\r\n"
        "Hello Postfix ({tag}).\r\n")


CLIENT_CN = "relay-client.tern.test"


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, timeout=60, **kw)


def make_pki(d):
    """A test CA, a server certificate for MX signed by it, and a second CA
    that signed nothing here (the "untrusted" one). EC keys: fast to make."""
    def key_and_req(name, subject):
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", subject])

    for ca in ("ca", "other-ca"):
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{d}/{ca}.key", "-out", f"{d}/{ca}.pem", "-days", "2", "-subj", f"/CN=Tern {ca} test",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    key_and_req("server", f"/CN={MX}")
    with open(f"{d}/server.ext", "w") as f:
        f.write(f"subjectAltName=DNS:{MX}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    run(["openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
         "-CAcreateserial", "-out", f"{d}/server.pem", "-days", "2", "-extfile", f"{d}/server.ext"])
    # A client certificate for a route's tls_cert (outbound_routes.ini).
    key_and_req("client", f"/CN={CLIENT_CN}")
    with open(f"{d}/client.ext", "w") as f:
        f.write("extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    run(["openssl", "x509", "-req", "-in", f"{d}/client.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
         "-CAcreateserial", "-out", f"{d}/client.pem", "-days", "2", "-extfile", f"{d}/client.ext"])


class PostfixServer:
    """A private Postfix instance in its own temp dir (see module doc)."""

    def __init__(self, host="127.0.0.1", port=None, domains=()):
        """`host`/`port`: where the plain listener is (the auth one is on
        `host` too); by default 127.0.0.1 and a free port. `domains`: more
        domains Postfix accepts mail for (besides the static-route ones)."""
        for tool in ("postfix", "postconf", "saslpasswd2", "openssl"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                raise RuntimeError(f"{tool} is not installed (scripts/deps.sh installs it)")
        self.dir = tempfile.mkdtemp(prefix="tern-postfix-")
        os.chmod(self.dir, 0o755)  # Postfix's daemons run as the postfix user
        self.conf, self.queue, self.data, self.mail, self.pki = (
            os.path.join(self.dir, d) for d in ("conf", "queue", "data", "mail", "pki"))
        # Debian's Postfix reads Cyrus SASL's smtpd.conf from
        # $config_directory/sasl (README.Debian); cyrus_sasl_config_path is
        # set as well for other builds.
        self.sasl = os.path.join(self.conf, "sasl")
        for d in (self.conf, self.queue, self.data, self.mail, self.pki, self.sasl):
            os.makedirs(d)
        pw = pwd.getpwnam("postfix")
        for d in (self.data, self.mail):
            os.chown(d, pw.pw_uid, pw.pw_gid)
        self.maillog = os.path.join(self.dir, "maillog")
        self.host = host
        self.port = port or free_port(host)
        self.auth_port = free_port(host)
        self.smtps_port = free_port(host)
        self.ccert_port = free_port(host)
        self.domains = " ".join(("postfix.test", "auth.test", "plain.test", "login.test", "badauth.test",
                                 "smtps.test", "ccert.test", "noccert.test") + tuple(domains))
        self.proc = None
        try:
            make_pki(self.pki)
            self._write_sasl(pw)
            self._write_config(pw)
        except Exception:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _write_sasl(self, pw):
        db = os.path.join(self.dir, "sasldb2")  # not under conf/: postfix check wants root to own that
        for user, password in ((SASL_USER, SASL_PASS), (OTHER_USER, OTHER_PASS)):
            subprocess.run(["saslpasswd2", "-p", "-c", "-f", db, "-u", MX, user],
                           input=password.encode(), check=True, capture_output=True, timeout=30)
        os.chown(db, pw.pw_uid, pw.pw_gid)  # smtpd reads it after dropping privileges
        with open(os.path.join(self.sasl, "smtpd.conf"), "w") as f:
            f.write(f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {db}\n"
                    "mech_list: CRAM-MD5 PLAIN LOGIN\n")

    def _write_config(self, pw):
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(f"""compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
myhostname = {MX}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = {self.maillog}
maillog_file_prefixes = {self.dir}
alias_maps =
local_recipient_maps =
smtpd_peername_lookup = no
smtp_tls_security_level = none
# Every accepted message goes to one maildir, owned by the postfix user.
virtual_mailbox_domains = {self.domains}
virtual_mailbox_base = {self.mail}
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{pw.pw_uid}
virtual_gid_maps = static:{pw.pw_gid}
# STARTTLS with the test CA's certificate.
smtpd_tls_security_level = may
smtpd_tls_chain_files = {self.pki}/server.key, {self.pki}/server.pem
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
# Cyrus SASL (enabled on the auth listener only).
cyrus_sasl_config_path = {self.sasl}
smtpd_sasl_local_domain = {MX}
smtpd_sasl_authenticated_header = yes
""")
        # The Debian master.cf, with no chroot (the instance's paths are
        # outside any chroot) and the two smtpd listeners on free ports.
        out = []
        with open("/etc/postfix/master.cf") as f:
            for line in f.read().splitlines():
                fields = line.split()
                if line[:1] not in ("", "#", " ", "\t") and len(fields) >= 8:
                    if fields[0] == "smtp" and fields[1] == "inet":
                        continue
                    fields[4] = "n"
                    line = " ".join(fields)
                out.append(line)
        out.append(f"{self.host}:{self.port} inet n - n - - smtpd")
        out.append(f"{self.host}:{self.auth_port} inet n - n - - smtpd")
        out.append("  -o smtpd_sasl_auth_enable=yes")
        out.append("  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject")
        # A submissions listener (RFC 8314 implicit TLS, Postfix's port-465
        # setup): TLS from the first byte, then AUTH.
        out.append(f"{self.host}:{self.smtps_port} inet n - n - - smtpd")
        out.append("  -o smtpd_tls_wrappermode=yes")
        out.append("  -o smtpd_sasl_auth_enable=yes")
        out.append("  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject")
        # A listener that asks for a client certificate (not requiring one):
        # its Received header then names the certificate's subject.
        out.append(f"{self.host}:{self.ccert_port} inet n - n - - smtpd")
        out.append("  -o smtpd_tls_ask_ccert=yes")
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write("\n".join(out) + "\n")

    def start(self):
        log = open(os.path.join(self.dir, "postfix-start.log"), "wb")
        self.proc = subprocess.Popen(["postfix", "-c", self.conf, "start-fg"], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.host, self.port, 30, self.proc)
        wait_port(self.host, self.auth_port, 30, self.proc)
        wait_port(self.host, self.smtps_port, 30, self.proc)
        wait_port(self.host, self.ccert_port, 30, self.proc)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["postfix", "-c", self.conf, "stop"], capture_output=True, timeout=30)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                master = self.master_pid()
                if master:
                    os.kill(master, 9)
                self.proc.kill()
                self.proc.wait(5)
        if os.environ.get("TERN_KEEP_TMP"):
            print("kept", self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def master_pid(self):
        try:
            with open(os.path.join(self.data, "master.lock")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def messages(self):
        """Every message the virtual agent wrote into the maildir (bytes)."""
        out = []
        for path in sorted(glob.glob(os.path.join(self.mail, "inbox", "new", "*")) +
                           glob.glob(os.path.join(self.mail, "inbox", "cur", "*"))):
            with open(path, "rb") as f:
                out.append(f.read())
        return out

    def message_with(self, tag):
        found = [m for m in self.messages() if f"postfix test {tag}\n".encode() in m]
        return found[0] if found else None

    def log(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def received_header(message):
    """Postfix's own (first) Received header, unfolded."""
    head = message.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    m = re.search(r"^Received: .*?(?=^\S)", head + "\nEnd:", re.M | re.S)
    return re.sub(r"\s+", " ", m.group(0)) if m else ""


class PostfixCluster(DnsCluster):
    def __init__(self):
        super().__init__()
        self.postfix = None

    def dns_extra_args(self):
        return [f"--host-record={MX},127.0.0.1"]

    def _write_config(self):
        self.postfix = PostfixServer()
        super()._write_config()
        p = self.postfix
        with open(os.path.join(self.config, "outbound_routes.ini"), "w") as f:
            f.write(f"""[postfix.test]
host[]={MX}:{p.port}

[auth.test]
host[]={MX}:{p.auth_port}
auth_user={SASL_USER}
auth_pass={SASL_PASS}
force_auth=true

[plain.test]
host[]={MX}:{p.auth_port}
auth_user={SASL_USER}
auth_pass={SASL_PASS}
auth_type=plain
force_auth=true

[login.test]
host[]={MX}:{p.auth_port}
auth_user={SASL_USER}
auth_pass={SASL_PASS}
auth_type=login
force_auth=true

[badauth.test]
host[]={MX}:{p.auth_port}
auth_user={OTHER_USER}
auth_pass=wrong-{OTHER_PASS}
force_auth=true

[smtps.test]
host[]={MX}:{p.smtps_port}
tls=implicit
auth_user={SASL_USER}
auth_pass={SASL_PASS}
auth_type=plain
force_auth=true

[ccert.test]
host[]={MX}:{p.ccert_port}
tls_cert={p.pki}/client.pem
tls_key={p.pki}/client.key

[noccert.test]
host[]={MX}:{p.ccert_port}
""")
        self.write_tls_ini()

    def write_tls_ini(self, **outbound):
        lines = ["[main]", "[outbound]"] + [f"{k}={v}" for k, v in outbound.items()]
        with open(os.path.join(self.config, "tls.ini"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def restart_deliverer(self):
        self.stop("deliverer")
        self.start("deliverer")

    def _start_sinks(self):
        super()._start_sinks()
        self.postfix.start()

    def dump_logs(self):
        super().dump_logs()
        if self.postfix is not None:
            sys.stderr.write(f"\n===== postfix maillog (tail) =====\n{self.postfix.log()[-6000:]}\n")

    def close(self):
        try:
            super().close()
        finally:
            if self.postfix is not None:
                self.postfix.stop()


class PostfixMxCluster(PostfixCluster):
    """A PostfixCluster whose Postfix is reached by MX delivery, not static
    routes: it listens on POSTFIX_IP at the deliverer's one mx_port and takes
    mail for `mx_domains`. Subclasses give the DNS that points there."""

    POSTFIX_IP = "127.0.0.11"  # ZONES use 127.0.0.2-5, other system tests 6-9

    def __init__(self, mx_domains):
        super().__init__()
        self.mx_domains = tuple(mx_domains)

    def _write_config(self):
        # The plain cluster's config (not PostfixCluster's: its static routes
        # and 127.0.0.1 listener are what MX delivery must not use).
        DnsCluster._write_config(self)
        # The deliverer connects to every MX on the one mx_port, so that port
        # must be free on POSTFIX_IP as well as on the sinks' addresses.
        mx = free_port_on_all(list(ZONES.values()) + [self.POSTFIX_IP])
        path = os.path.join(self.config, "tern.ini")
        with open(path) as f:
            text, n = re.subn(rf"^mx_port={self.ports['mx']}$", f"mx_port={mx}", f.read(), flags=re.M)
        if n != 1:
            raise RuntimeError("mx_port not found in tern.ini")
        with open(path, "w") as f:
            f.write(text)
        self.ports["mx"] = mx
        self.postfix = PostfixServer(host=self.POSTFIX_IP, port=mx, domains=self.mx_domains)


class PostfixMxTestCase(ClusterTestCase):
    """Tests on a PostfixMxCluster (a subclass sets CLUSTER): sending through
    ingest and reading what the deliverer and Postfix made of it."""

    CLUSTER = None

    @classmethod
    def make_cluster(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("Postfix's master must be started as root")
        return cls.CLUSTER()

    def setUp(self):
        self.postfix = self.cluster.postfix
        self.mx_port = self.cluster.ports["mx"]

    def send(self, domain, tag, headers=""):
        """One message (BODY with `tag`, `headers` first) from
        alice@sender.test to rcpt@<domain>; returns its queue id."""
        return send_for_id(self.cluster, "alice@sender.test", [f"rcpt@{domain}"], headers + BODY.format(tag=tag))

    def msg_lines(self, msg_id, kind):
        return [l for l in deliverer_log_lines(self.cluster, f"msg={msg_id}") if f" {kind} " in l]

    def deliver(self, domain, tag, mx=MX):
        """Sends one message; waits for Postfix to store it and for the
        deliverer's one attempt line and its outcome line, which must be MX
        delivery to `mx` at Postfix's address (no static route exists).
        Returns (stored, attempt line)."""
        msg_id = self.send(domain, tag)
        stored = self.cluster.wait_until(lambda: self.postfix.message_with(tag), 60, f"Postfix to store {tag}")
        (attempt,) = self.cluster.wait_until(lambda: self.msg_lines(msg_id, "attempt"), 30,
                                             f"the deliverer's attempt line for {msg_id}")
        (delivered,) = self.cluster.wait_until(lambda: self.msg_lines(msg_id, "delivery"), 30,
                                               f"the deliverer's outcome line for {msg_id}")
        self.assertEqual(field(delivered, "status"), "sent", delivered)
        self.assertEqual(field(attempt, "relay"), f"{mx}[{self.cluster.POSTFIX_IP}]:{self.mx_port}", attempt)
        # Postfix's own record of the session: ESMTPS, whatever Tern says.
        self.assertRegex(received_header(stored), rf"by {re.escape(MX)} \(Postfix\) with ESMTPS ")
        return stored, attempt

    def deferred_result(self, msg_id):
        return deferred_result(self, msg_id)

    def postfix_log_count(self, pattern):
        return len(re.findall(pattern, self.postfix.log()))


def deferred_result(test, msg_id):
    """The one recipient's reported result once it has one; asserts (on
    `test`) that it is a deferral that left the message queued."""
    shown = wait_for_last_result(test.cluster, msg_id, 60)
    (delivery,) = shown["deliveries"]
    (rcpt,) = delivery["recipients"]
    result = rcpt["last_result"]
    test.assertEqual(rcpt["state"], "deferred", rcpt)
    test.assertEqual(result["outcome"], "OUTCOME_TRANSIENT", result)
    test.assertFalse(shown.get("bounces"), shown)
    test.assertEqual(ternctl_json(test.cluster, "show", msg_id)["message_id"], msg_id)
    return result


def field(line, key):
    """The value of key=value or key="value" in a Tern log line."""
    m = re.search(rf'\b{key}=("(?:[^"\\]|\\.)*"|\S*)', line)
    if not m:
        return None
    v = m.group(1)
    return v[1:-1] if v.startswith('"') else v


class DelivererPostfixTest(ClusterTestCase):
    @classmethod
    def make_cluster(cls):
        if os.geteuid() != 0:
            # A missing Postfix is a failure (scripts/deps.sh installs it);
            # not being root is a property of the runner.
            raise unittest.SkipTest("Postfix's master must be started as root")
        return PostfixCluster()

    def setUp(self):
        self.postfix = self.cluster.postfix

    def deliver(self, rcpt, tag):
        """Sends one message; waits for Postfix to store it and for the
        deliverer's attempt line. Returns (stored message, attempt line)."""
        msg_id = send_for_id(self.cluster, "alice@sender.test", [rcpt], BODY.format(tag=tag))
        stored = self.cluster.wait_until(lambda: self.postfix.message_with(tag), 60, f"Postfix to store {tag}")
        attempt = self.cluster.wait_until(
            lambda: [l for l in deliverer_log_lines(self.cluster, f"msg={msg_id}") if " attempt " in l], 30,
            f"the deliverer's attempt line for {msg_id}")
        delivered = self.cluster.wait_until(
            lambda: [l for l in deliverer_log_lines(self.cluster, f"msg={msg_id}") if " delivery " in l], 30,
            f"the deliverer's outcome line for {msg_id}")
        self.assertEqual(field(delivered[-1], "status"), "sent", delivered[-1])
        # The outcome reported for the recipient carries the session's TLS.
        self.assertEqual(field(delivered[-1], "tls"), field(attempt[-1], "tls"), delivered[-1])
        return stored, attempt[-1]

    def assert_tls_on_both_sides(self, stored, attempt, port):
        # Tern's facts: this Postfix listener, TLS with the protocol and
        # cipher it names.
        self.assertEqual(field(attempt, "relay"), f"{MX}[127.0.0.1]:{port}", attempt)
        self.assertEqual(field(attempt, "mode"), "SMTP", attempt)
        tls = field(attempt, "tls")
        self.assertRegex(tls, r"^TLSv1\.[23] \S+$", attempt)
        protocol, cipher = tls.split(" ")
        # Postfix's facts: its Received header says the same protocol and
        # cipher, and ESMTPS (RFC 3848).
        received = received_header(stored)
        self.assertIn(f"(using {protocol} with cipher {cipher} ", received)
        self.assertRegex(received, rf"by {re.escape(MX)} \(Postfix\) with ESMTPSA? ")
        return received

    # -- opportunistic STARTTLS -------------------------------------------
    def test_1_opportunistic_starttls_to_postfix(self):
        stored, attempt = self.deliver("alice@postfix.test", "opportunistic")
        received = self.assert_tls_on_both_sides(stored, attempt, self.postfix.port)
        self.assertEqual(field(attempt, "tls_verified"), "no", attempt)
        self.assertEqual(field(attempt, "auth"), "none", attempt)
        self.assertNotIn("Authenticated sender", received)
        # Postfix logged the TLS session from us, and the queue-id line.
        self.assertRegex(self.postfix.log(), r"Anonymous TLS connection established from \S+\[127\.0\.0\.1\]")
        # Postfix offers CHUNKING (RFC 3030): the message went as BDAT.
        self.assertEqual(field(attempt, "sent_with"), "BDAT", attempt)
        # The body arrived intact (headers Tern did not add are unchanged).
        self.assertIn(b"Hello Postfix (opportunistic).", stored)
        self.assertIn(b"Message-ID: <opportunistic@sender.test>", stored)

    # -- verified TLS ---------------------------------------------------------
    def test_2_reject_unauthorized_with_trusted_ca_is_verified(self):
        try:
            self.cluster.write_tls_ini(rejectUnauthorized="true", ca=f"{self.postfix.pki}/ca.pem")
            self.cluster.restart_deliverer()
            stored, attempt = self.deliver("bob@postfix.test", "verified")
            self.assert_tls_on_both_sides(stored, attempt, self.postfix.port)
            self.assertEqual(field(attempt, "tls_verified"), "yes", attempt)
        finally:
            self.cluster.write_tls_ini()
            self.cluster.restart_deliverer()

    def test_3_forced_tls_with_untrusted_ca_defers_and_keeps_the_message(self):
        tag = "forced untrusted"
        msg_id = None
        try:
            # A CA is configured, but not the one that signed Postfix's
            # certificate (and the system store does not know the test CA).
            self.cluster.write_tls_ini(ca=f"{self.postfix.pki}/other-ca.pem", **{"force_tls_hosts[]": "postfix.test"})
            self.cluster.restart_deliverer()
            msg_id = send_for_id(self.cluster, "alice@sender.test", ["carol@postfix.test"], BODY.format(tag=tag))
            result = deferred_result(self, msg_id)
            self.assertEqual(result["enhanced_status"], "4.7.5", result)
            self.assertIn("TLS is required by configuration", result["reply_text"])
            self.assertIn("did not verify", result["reply_text"])
            self.assertIn("certificate verify failed", result["reply_text"])
            self.assertFalse(result.get("tls"), "no TLS session was used for mail")
            # Nothing reached Postfix, and the message is still queued.
            self.assertIsNone(self.postfix.message_with(tag))
            self.assertEqual(ternctl_json(self.cluster, "show", msg_id)["message_id"], msg_id)
            # The handshake really happened, and Tern refused the chain
            # (Postfix got TLS alert 48, unknown CA, from it).
            self.assertRegex(self.postfix.log(), r"SSL_accept error from \S+\[127\.0\.0\.1\]")
            self.assertIn("alert unknown ca", self.postfix.log())
        finally:
            if msg_id:
                ternctl_json(self.cluster, "delete", msg_id, "--yes")
            self.cluster.write_tls_ini()
            self.cluster.restart_deliverer()

    # -- AUTH (Cyrus SASL sasldb) ---------------------------------------------
    def test_4_auth_with_postfix_sasl(self):
        stored, attempt = self.deliver("dave@auth.test", "auth default")
        received = self.assert_tls_on_both_sides(stored, attempt, self.postfix.auth_port)
        # The strongest mechanism Postfix offers wins.
        self.assertEqual(field(attempt, "auth"), "CRAM-MD5", attempt)
        self.assertIn(f"(Authenticated sender: {SASL_USER}@{MX})", received)
        self.assertIn("with ESMTPSA", received)
        self.assertRegex(self.postfix.log(), rf"sasl_method=CRAM-MD5, sasl_username={SASL_USER}@{re.escape(MX)}\b")

    def test_5_auth_type_from_the_route(self):
        for domain, mechanism in (("plain.test", "PLAIN"), ("login.test", "LOGIN")):
            stored, attempt = self.deliver(f"erin@{domain}", f"auth {mechanism}")
            self.assertEqual(field(attempt, "auth"), mechanism, attempt)
            self.assertIn(f"(Authenticated sender: {SASL_USER}@{MX})", received_header(stored))
            self.assertRegex(self.postfix.log(),
                             rf"sasl_method={mechanism}, sasl_username={SASL_USER}@{re.escape(MX)}\b")

    def test_6_wrong_password_defers_and_keeps_the_message(self):
        tag = "bad password"
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["frank@badauth.test"], BODY.format(tag=tag))
        try:
            # Postfix says 535 5.7.8; Tern keeps the message for a retry
            # (a bad password is an operator's mistake, not the recipient's).
            result = deferred_result(self, msg_id)
            self.assertIn("535", result["reply_text"])
            self.assertIn("authentication failed", result["reply_text"].lower())
            self.assertIsNone(self.postfix.message_with(tag))
            self.assertRegex(self.postfix.log(),
                             rf"SASL CRAM-MD5 authentication failed: .*sasl_username={OTHER_USER}@{re.escape(MX)}")
        finally:
            ternctl_json(self.cluster, "delete", msg_id, "--yes")

    # -- implicit TLS (a smarthost's port 465) ---------------------------------
    def test_7_implicit_tls_route_submits_over_tls_from_the_first_byte(self):
        try:
            self.cluster.write_tls_ini(ca=f"{self.postfix.pki}/ca.pem")
            self.cluster.restart_deliverer()
            stored, attempt = self.deliver("gina@smtps.test", "implicit tls")
            received = self.assert_tls_on_both_sides(stored, attempt, self.postfix.smtps_port)
            self.assertEqual(field(attempt, "tls_verified"), "yes", attempt)
            self.assertEqual(field(attempt, "auth"), "PLAIN", attempt)
            self.assertIn("with ESMTPSA", received)
            self.assertRegex(self.postfix.log(), rf"sasl_method=PLAIN, sasl_username={SASL_USER}@{re.escape(MX)}\b")
        finally:
            self.cluster.write_tls_ini()
            self.cluster.restart_deliverer()

    def test_8_implicit_tls_with_an_untrusted_certificate_defers_without_plain_text(self):
        # The default tls.ini trusts no test CA: the handshake must fail, and
        # nothing (no EHLO, no AUTH, no password) goes in plain text.
        tag = "implicit untrusted"
        refusals = self.postfix.log().count("alert unknown ca")
        msg_id = send_for_id(self.cluster, "alice@sender.test", ["hank@smtps.test"], BODY.format(tag=tag))
        try:
            result = deferred_result(self, msg_id)
            self.assertEqual(result["enhanced_status"], "4.7.5", result)
            self.assertIn(f"implicit TLS with host {MX}[127.0.0.1]:{self.postfix.smtps_port}: the certificate did "
                          "not verify", result["reply_text"])
            self.assertIsNone(self.postfix.message_with(tag))
            self.cluster.wait_until(lambda: self.postfix.log().count("alert unknown ca") > refusals, 30,
                                    "Postfix to log the refused chain")
        finally:
            ternctl_json(self.cluster, "delete", msg_id, "--yes")


    # -- CHUNKING (RFC 3030) and DATA, both to the real Postfix ------------------
    def test_9_bdat_and_data_both_carry_dot_lines_intact(self):
        """Postfix offers CHUNKING: by default the message goes as BDAT,
        sent as stored; with chunking=false it goes as dot-stuffed DATA.
        Either way Postfix stores the lines that start with a dot as
        written (a lone "." line too, which ends DATA unless stuffed)."""
        def body(tag):
            return BODY.format(tag=tag) + ".leading dot\r\n.\r\n..two dots\r\nafter the dots\r\n"

        def deliver(tag):
            msg_id = send_for_id(self.cluster, "alice@sender.test", ["ivy@postfix.test"], body(tag))
            stored = self.cluster.wait_until(lambda: self.postfix.message_with(tag), 60, f"Postfix to store {tag}")
            (attempt,) = self.cluster.wait_until(
                lambda: [l for l in deliverer_log_lines(self.cluster, f"msg={msg_id}") if " attempt " in l], 30,
                f"the deliverer's attempt line for {msg_id}")
            self.assertIn(b"\n.leading dot\n.\n..two dots\nafter the dots\n", stored.replace(b"\r\n", b"\n"))
            return attempt

        self.assertEqual(field(deliver("chunked dots"), "sent_with"), "BDAT")
        path = os.path.join(self.cluster.config, "tern.ini")
        with open(path) as f:
            original = f.read()
        text, n = re.subn(r"^\[deliverer\]$", "[deliverer]\nchunking=false", original, count=1, flags=re.M)
        self.assertEqual(n, 1)
        try:
            with open(path, "w") as f:
                f.write(text)
            self.cluster.restart_deliverer()
            self.assertEqual(field(deliver("stuffed dots"), "sent_with"), "DATA")
        finally:
            with open(path, "w") as f:
                f.write(original)
            self.cluster.restart_deliverer()

    # -- a route's own client certificate ----------------------------------------
    def test_10_a_route_presents_its_own_client_certificate(self):
        """outbound_routes.ini tls_cert/tls_key: Postfix (smtpd_tls_ask_ccert
        on that listener) gets the route's certificate in the handshake and
        names its subject in the Received header; a route to the same
        listener without tls_cert presents none (tls.ini sets no cert)."""
        stored, attempt = self.deliver("alice@ccert.test", "client certificate")
        received = self.assert_tls_on_both_sides(stored, attempt, self.postfix.ccert_port)
        self.assertIn(f'(Client CN "{CLIENT_CN}", Issuer "Tern ca test" (not verified))', received)
        stored, attempt = self.deliver("alice@noccert.test", "no client certificate")
        received = self.assert_tls_on_both_sides(stored, attempt, self.postfix.ccert_port)
        self.assertNotIn("Client CN", received)
        self.assertIn("(Client did not present a certificate)", received)


class PostfixSmtpForwardCluster(PostfixCluster):
    """A Haraka config that relays through a smarthost with queue/smtp_forward
    (`plugins` and smtp_forward.ini), and no outbound_routes.ini: Postfix's
    AUTH listener is the smarthost for every domain, its plain listener for
    plain.test (a per-domain section that takes [main]'s host)."""

    def _write_config(self):
        super()._write_config()
        p = self.postfix
        os.remove(os.path.join(self.config, "outbound_routes.ini"))
        with open(os.path.join(self.config, "plugins"), "w") as f:
            f.write("# Haraka's plugin list\nrelay\nspamassassin\nqueue/smtp_forward\n")
        with open(os.path.join(self.config, "smtp_forward.ini"), "w") as f:
            f.write(f"host={MX}\nport={p.auth_port}\nenable_outbound=true\nenable_tls=true\n"
                    f"auth_type=plain\nauth_user={SASL_USER}\nauth_pass={SASL_PASS}\n"
                    f"[plain.test]\nport={p.port}\n")


class DelivererSmtpForwardTest(ClusterTestCase):
    """Tern pointed at that Haraka config sends where Haraka would: through
    the smarthost, authenticated, and never to the recipients' MX."""

    setUp = DelivererPostfixTest.setUp
    deliver = DelivererPostfixTest.deliver
    assert_tls_on_both_sides = DelivererPostfixTest.assert_tls_on_both_sides

    @classmethod
    def make_cluster(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("Postfix's master must be started as root")
        return PostfixSmtpForwardCluster()

    def test_every_domain_goes_through_the_smarthost_with_auth(self):
        stored, attempt = self.deliver("dave@auth.test", "forwarded")
        received = self.assert_tls_on_both_sides(stored, attempt, self.postfix.auth_port)
        self.assertEqual(field(attempt, "auth"), "PLAIN", attempt)
        self.assertIn(f"(Authenticated sender: {SASL_USER}@{MX})", received)
        (line,) = deliverer_log_lines(self.cluster, " smtp_forward_routes ")
        self.assertEqual(field(line, "domains"), "plain.test,*", line)
        self.assertEqual(field(line, "default"), f"{MX}:{self.postfix.auth_port}", line)
        # Ingest says at startup what of the Haraka plugin list Tern does not run.
        with open(os.path.join(self.cluster.logs, "ingest.log"), "rb") as f:
            (warning,) = [l for l in f.read().decode().splitlines() if " haraka_plugins_not_run " in l]
        self.assertEqual(field(warning, "plugins"), "spamassassin", warning)
        self.assertEqual(field(warning, "handled_natively"), "relay,queue/smtp_forward", warning)

    def test_a_domain_section_routes_its_domain(self):
        stored, attempt = self.deliver("erin@plain.test", "forwarded per domain")
        self.assert_tls_on_both_sides(stored, attempt, self.postfix.port)
        self.assertEqual(field(attempt, "auth"), "none", attempt)  # AUTH is the section's, and it has none


if __name__ == "__main__":
    unittest.main()
