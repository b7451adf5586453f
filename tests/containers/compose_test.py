"""Tern deployed with docker compose, deliverers scaled out, queue queried over gRPC.

The stack is deploy/compose.yaml plus tests/containers/compose.test.yaml (a
dnsmasq serving the test zones and two scripted MXes on the compose network).
Steps, each timed:
  1. build the images, bring the stack up with 3 deliverers;
  2. send 3,000 messages from the host through the published ingest port;
     all arrive exactly once, every deliverer delivered a share, the queue
     drains (ternctl over gRPC from the host and inside the queue container);
  3. a second 3,000 while one deliverer is killed with SIGKILL and the
     deliverers are scaled to 5, then to 2: nothing accepted is lost;
  4. a third 3,000 while the queue container restarts: nothing accepted is lost;
  5. `down` leaves no containers behind.

Exit status 77 (ctest: skipped) when no container engine can run here or
TERN_SKIP_CONTAINERS=1. Every process it starts it stops; loops are bounded.
"""

import os
import re
import shutil
import smtplib
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "system"))
from cluster import free_port  # noqa: E402  (never hands out one port twice)

from engine import (COMPOSE_FILES, COMPOSE_PROJECT, HERE, ROOT, SKIP, T0,  # noqa: E402
                    build_images, docker_host, log, run, wait_all_arrived)

BIN_DIR = os.environ.get("TERN_BIN_DIR", os.path.join(ROOT, "build"))
PROJECT = COMPOSE_PROJECT


class Stack:
    def __init__(self, env):
        self.env = env
        self.files = COMPOSE_FILES

    def compose(self, *args, check=True, timeout=900):
        return run(["docker-compose", "-p", PROJECT, *self.files, *args], check=check, timeout=timeout, env=self.env)

    def containers(self, service=None):
        label = f"label=com.docker.compose.project={PROJECT}"
        args = ["podman", "ps", "-a", "--filter", label, "--format", "{{.Names}}"]
        if service:
            args[5:5] = ["--filter", f"label=com.docker.compose.service={service}"]
        return [n for n in run(args).stdout.split() if n]


class Sender:
    """Sends messages like a patient MTA: retries 4xx and connection errors,
    and records exactly which test ids got a 250."""

    def __init__(self, port):
        self.port = port
        self.accepted = set()
        self.lock = threading.Lock()
        self.temp_failures = 0

    def send_batch(self, ids, threads=8, deadline_s=300):
        chunks = [ids[i::threads] for i in range(threads)]
        workers = [threading.Thread(target=self._worker, args=(c, time.time() + deadline_s)) for c in chunks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def _worker(self, ids, deadline):
        pending = list(ids)
        conn = None
        while pending and time.time() < deadline:
            test_id = pending[0]
            domain = "one.test" if int(test_id.rsplit("-", 1)[1]) % 2 == 0 else "two.test"
            data = (f"From: load@client.test\r\nTo: user@{domain}\r\nSubject: load {test_id}\r\n"
                    f"X-Tern-Test-Id: {test_id}\r\n\r\n" + "body line\r\n" * 20).encode()
            try:
                if conn is None:
                    conn = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                    conn.ehlo("client.test")
                conn.sendmail("load@client.test", [f"user@{domain}"], data)
                with self.lock:
                    self.accepted.add(test_id)
                pending.pop(0)
            except smtplib.SMTPResponseException as e:
                # 4xx: the queue is briefly unavailable (restart); try again.
                with self.lock:
                    self.temp_failures += 1
                if e.smtp_code >= 500:
                    raise
                time.sleep(0.5)
                try:
                    conn.rset()
                except Exception:
                    conn = None
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.temp_failures += 1
                conn = None
                time.sleep(0.5)
        if conn is not None:
            try:
                conn.quit()
            except Exception:
                pass


def sink_logs(out_dir):
    return [os.path.join(out_dir, name) for name in ("one.log", "two.log")]


def ternctl_stats(stack, admin_port):
    host = run([os.path.join(BIN_DIR, "tools", "ternctl", "ternctl"), "--queue", f"127.0.0.1:{admin_port}",
                "stats", "--json"], timeout=30)
    inside = stack.compose("exec", "-T", "queue", "ternctl", "--queue", "127.0.0.1:7070", "stats", "--json")
    import json
    return json.loads(host.stdout), json.loads(inside.stdout)


def main():
    host = docker_host()
    if host is None:
        return SKIP
    env = dict(os.environ)
    env["DOCKER_HOST"] = host
    out_dir = tempfile.mkdtemp(prefix="tern-containers-")
    os.chmod(out_dir, 0o777)
    smtp_port, admin_port = free_port(), free_port()
    env.update(TERN_TEST_OUT=out_dir, TERN_TEST_CONFIG=os.path.join(HERE, "config"),
               TERN_SMTP_PORT=str(smtp_port), TERN_ADMIN_PORT=str(admin_port))
    stack = Stack(env)
    timings = {}
    passed = False
    try:
        t = time.time()
        stack.compose("down", "-v", "--remove-orphans", check=False)
        build_images(host, env)
        timings["build images"] = time.time() - t
        log("images built")

        t = time.time()
        stack.compose("up", "-d", "--scale", "deliverer=3")
        deadline = time.time() + 60
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as s:
                    if s.noop()[0] == 250:
                        break
            except (OSError, smtplib.SMTPException):
                if time.time() > deadline:
                    raise AssertionError("ingest did not answer on the published port")
                time.sleep(0.5)
        # Every deliverer must be talking to the queue before the load starts,
        # or the first ones take all the work. A deliverer logs queue_reachable
        # when its first Lease gets through; one whose connection hangs (seen
        # once: a name looked up before its container was up) logs nothing
        # for seconds, so silence is not readiness.
        deadline = time.time() + 60
        while True:
            waiting = []
            for name in stack.containers("deliverer"):
                r = run(["podman", "logs", name], env=env)
                text = r.stdout + r.stderr
                if "queue_reachable" not in text:
                    waiting.append(name)
            if not waiting:
                break
            assert time.time() < deadline, f"deliverers never reached the queue: {waiting}"
            time.sleep(1)
        timings["stack up"] = time.time() - t
        log(f"stack up: {stack.containers()}")

        # 1. 3,000 messages, 3 deliverers.
        sender = Sender(smtp_port)
        batch1 = [f"b1-{i}" for i in range(3000)]
        t = time.time()
        sender.send_batch(batch1)
        timings["batch 1 accepted"] = time.time() - t
        assert sender.accepted >= set(batch1), f"{len(set(batch1) - sender.accepted)} not accepted"
        counts = wait_all_arrived(sink_logs(out_dir), batch1, 300)
        timings["batch 1 delivered"] = time.time() - t
        dups = [i for i in batch1 if counts.get(i, 0) != 1]
        assert not dups, f"{len(dups)} messages arrived more than once, e.g. {dups[:5]}"
        log(f"batch 1: 3000 accepted and delivered exactly once in {timings['batch 1 delivered']:.1f}s")
        shares = {}
        for name in stack.containers("deliverer"):
            # One "delivery ... status=sent" line per delivered recipient.
            r = run(["podman", "logs", name], env=env)
            shares[name] = len(re.findall(r" delivery .*status=sent", r.stdout + r.stderr))
        log(f"deliveries per deliverer: {shares}")
        assert len(shares) == 3 and all(v > 0 for v in shares.values()), shares
        deadline = time.time() + 60
        while True:
            host_stats, inside_stats = ternctl_stats(stack, admin_port)
            if int(host_stats.get("messages", 1)) == 0:
                break
            assert time.time() < deadline, f"queue did not drain: {host_stats}"
            time.sleep(1)
        assert int(inside_stats.get("messages", 1)) in (0, 1)
        log(f"queue drained (ternctl from host and inside the queue container): {host_stats}")
        # The image's HEALTHCHECK command, run by hand: podman without systemd
        # never runs it, and a broken one would only show under docker.
        for service in ("queue", "ingest", "bouncer", "deliverer"):
            stack.compose("exec", "-T", service, "sh", "-c",
                          'exec ternctl --queue "$TERN_HEALTH" --config "$TERN_CONFIG" health', timeout=60)
        log("the image's health check passes in every service")

        # 2. 3,000 more while a deliverer is killed and the deliverers are rescaled.
        batch2 = [f"b2-{i}" for i in range(3000)]
        t = time.time()
        th = threading.Thread(target=sender.send_batch, args=(batch2,))
        th.start()
        time.sleep(3)
        victim = stack.containers("deliverer")[0]
        run(["podman", "kill", "--signal", "KILL", victim], env=env)
        log(f"killed {victim} with SIGKILL")
        # `scale`, not `up --scale`: docker-compose 1.29 reads the remote
        # network's IPAM "Options" but the file's "options", so under podman a
        # second `up` wants to recreate this test's fixed-address network.
        # (deploy/compose.yaml has no ipam block; `up --scale` works there.)
        stack.compose("scale", "deliverer=5")
        log(f"scaled to 5: {stack.containers('deliverer')}")
        time.sleep(3)
        stack.compose("scale", "deliverer=2")
        log(f"scaled to 2: {stack.containers('deliverer')}")
        th.join()
        accepted2 = [i for i in batch2 if i in sender.accepted]
        counts = wait_all_arrived(sink_logs(out_dir), accepted2, 300)
        timings["batch 2 delivered"] = time.time() - t
        dup2 = sum(1 for i in accepted2 if counts[i] > 1)
        log(f"batch 2: {len(accepted2)} accepted, all delivered; {dup2} duplicates (deliverer killed mid-delivery)")

        # 3. a batch while the queue container restarts.
        batch3 = [f"b3-{i}" for i in range(3000)]
        t = time.time()
        th = threading.Thread(target=sender.send_batch, args=(batch3,))
        th.start()
        # Early, so the restart falls inside the batch (1,500 take a few seconds).
        time.sleep(0.7)
        assert th.is_alive(), "batch 3 ended before the queue restart; the step would prove nothing"
        stack.compose("restart", "queue")
        log("queue container restarted")
        th.join()
        accepted3 = [i for i in batch3 if i in sender.accepted]
        assert len(accepted3) == len(batch3), f"{len(batch3) - len(accepted3)} never accepted"
        wait_all_arrived(sink_logs(out_dir), accepted3, 300)
        timings["batch 3 delivered"] = time.time() - t
        assert len(sender.accepted & set(batch3)) > 0
        log(f"batch 3: {len(accepted3)} accepted across the queue restart, all delivered "
            f"({sender.temp_failures} temporary refusals retried by the client)")

        t = time.time()
        stack.compose("down", "-v", "--remove-orphans")
        left = stack.containers()
        assert not left, f"containers left after down: {left}"
        timings["down"] = time.time() - t
        log("down: no containers left")
        print("\ntimings:")
        for k, v in timings.items():
            print(f"  {k:20s} {v:7.1f}s")
        print(f"  {'total':20s} {time.time() - T0:7.1f}s")
        passed = True
        return 0
    except Exception:
        for service in ("queue", "ingest", "deliverer", "bouncer"):
            r = stack.compose("logs", "--tail", "40", service, check=False)
            sys.stderr.write(f"\n===== {service} =====\n{r.stdout[-4000:]}\n")
        raise
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False)
        # The sinks' logs are kept only when they may explain a failure.
        if passed:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            log(f"sink logs kept in {out_dir}")


if __name__ == "__main__":
    sys.exit(main())
