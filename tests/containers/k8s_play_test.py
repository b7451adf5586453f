"""deploy/k8s run for real with `podman kube play`: the pods start from the
shipped manifests, pass their own probes, and relay mail end to end.

podman is not Kubernetes, so the test adapts only what podman lacks, and
leaves every pod template (image, command, --config layering, env, ports,
probes, security context, mounts) as shipped:
  - no Services: `queue:7070` in the tern-k8s ConfigMap becomes the queue
    pod's name on the podman network (`queue-pod-0:7070`);
  - no StatefulSet: the queue's template runs as a Deployment whose volume
    claim is a podman volume;
  - ingest's SMTP port is published on 127.0.0.1 for the test's client;
  - the optional `tern-site` ConfigMap and `tern-secret` Secret are
    supplied, as an operator would: a relay ACL for the podman network, a
    static route to a sink pod, and an AUTH user (podman 4.3 does not mount
    Secret volumes: that one is played as a ConfigMap at the same path).
Steps: build the image, play, wait until every pod's probe command says
SERVING, log in with the Secret's user, send 40 messages through ingest
(each gets a 250 and arrives at the sink exactly once), the queue drains,
kill the queue's process (podman restarts it, as the kubelet would) and
send 20 more, then tear down. Exit status 77 (ctest: skipped) when no
container engine can run here or TERN_SKIP_CONTAINERS=1.
"""

import copy
import json
import os
import shutil
import smtplib
import sys
import tempfile
import time

import yaml

import k8s_manifests as km
from engine import SKIP, arrivals, build_images, docker_host, log, run, wait_all_arrived

sys.path.insert(0, os.path.join(km.HERE, "..", "system"))
from cluster import free_port  # noqa: E402  (never hands out one port twice)

NETWORK = "tern-k8s-test"


def adapt(docs, smtp_port, out_dir):
    """The shipped documents as podman can play them (see the module doc)."""
    played = []
    for d in copy.deepcopy(docs):
        kind = d["kind"]
        if kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
            continue
        if kind == "ConfigMap" and d["metadata"]["name"] == "tern-k8s":
            ini = d["data"]["tern.ini"]
            assert ini.count("queue=queue:7070") == 3, "ingest, deliverer and bouncer name the queue Service"
            d["data"]["tern.ini"] = ini.replace("queue=queue:7070", "queue=queue-pod-0:7070")
        if kind == "StatefulSet":
            spec = d["spec"]
            claims = spec.pop("volumeClaimTemplates")
            spec.pop("serviceName", None)
            d["kind"] = "Deployment"
            pod = spec["template"]["spec"]
            for c in claims:
                claim = f"tern-k8s-test-{c['metadata']['name']}"
                pod["volumes"].append({"name": c["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}})
                played.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                               "spec": c["spec"]})
        if kind in ("Deployment", "StatefulSet"):
            d["spec"]["replicas"] = 1
            if d["metadata"]["name"] == "ingest":
                for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]:
                    if p["name"] == "smtp":
                        p["hostPort"] = smtp_port
                        p["hostIP"] = "127.0.0.1"
        played.append(d)
    played.append({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tern-site"},
        "data": {
            # The client's connections arrive through podman's port forwarding
            # from the network's gateway.
            "relay_acl_allow": "127.0.0.1/32\n10.0.0.0/8\n",
            "outbound_routes.ini": "[sink.test]\nhost[]=sink-pod-0:2525\n",
        }})
    # The optional Secret, as an operator would make it for AUTH users: the
    # test logs in with this user, so a secret layer that is not read shows.
    # podman 4.3 does not mount Secret volumes, so it is played as a
    # ConfigMap of the same name mounted where the Secret would be.
    auth = "[core]\nmethods=PLAIN,LOGIN\nrequire_tls=false\n[users]\nk8suser=k8s-secret-pass\n"
    played.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tern-secret"},
                   "data": {"auth_flat_file.ini": auth}})
    for d in played:
        if d["kind"] == "Deployment":
            for v in d["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in v:
                    v["configMap"] = {"name": v.pop("secret")["secretName"], "optional": True}
    played.append({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sink"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sink"}}, "template": {
            "metadata": {"labels": {"app": "sink"}},
            "spec": {"containers": [{
                "name": "sink", "image": "localhost/tern-peer:test",
                "command": ["python3", "/usr/local/lib/smtp_sink.py", "--listen", "0.0.0.0:2525",
                            "--name", "sink.test", "--record", "/out/sink.log"],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
                "volumes": [{"name": "out", "hostPath": {"path": out_dir, "type": "Directory"}}]}}}})
    return played


def send(port, ids, deadline_s=120):
    """Each id is sent until it gets a 250 (4xx and refused connections are
    retried: the queue may be restarting). Returns the 4xx count."""
    temp = 0
    deadline = time.time() + deadline_s
    for test_id in ids:
        while True:
            data = (f"From: k8s@client.test\r\nTo: user@sink.test\r\nSubject: {test_id}\r\n"
                    f"X-Tern-Test-Id: {test_id}\r\n\r\n" + "body line\r\n" * 10).encode()
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                    s.sendmail("k8s@client.test", ["user@sink.test"], data)
                break
            except smtplib.SMTPResponseException as e:
                if e.smtp_code >= 500:
                    raise
                temp += 1
            except (OSError, smtplib.SMTPException):
                temp += 1
            if time.time() > deadline:
                raise AssertionError(f"{test_id} got no 250 in {deadline_s} s")
            time.sleep(0.5)
    return temp


def container(name):
    return f"{name}-pod-0-{name}"


def probe(docs, name):
    """Runs the pod's own liveness probe command in its container."""
    (c,) = km.workloads(docs)[name]["spec"]["template"]["spec"]["containers"]
    return run(["podman", "exec", container(name), *c["livenessProbe"]["exec"]["command"]], check=False, timeout=30)


def wait_healthy(docs, timeout):
    deadline = time.time() + timeout
    pending = list(km.SERVICES)
    while pending:
        pending = [n for n in pending if probe(docs, n).returncode != 0]
        if not pending:
            return
        if time.time() > deadline:
            logs = {n: run(["podman", "logs", "--tail", "20", container(n)], check=False).stderr for n in pending}
            raise AssertionError(f"probes still failing after {timeout} s: {pending}\n{logs}")
        time.sleep(1)


def stats():
    out = run(["podman", "exec", container("queue"), "ternctl", "--queue", "127.0.0.1:7070", "stats", "--json"],
              timeout=30)
    return json.loads(out.stdout)


def teardown(play_file, played):
    """Removes what playing `played` made: its pods, and the volumes podman
    made for its ConfigMaps and claim (podman 4.3 leaves those behind, and
    a later play would reuse their old contents)."""
    for d in played:
        if d["kind"] == "Deployment":
            run(["podman", "pod", "rm", "-f", "-t", "5", f"{d['metadata']['name']}-pod-0"], check=False, timeout=120)
    for d in played:
        if d["kind"] in ("ConfigMap", "PersistentVolumeClaim"):
            run(["podman", "volume", "rm", "-f", d["metadata"]["name"]], check=False)
    run(["podman", "network", "rm", "-f", NETWORK], check=False)
    if play_file and os.path.exists(play_file):
        os.unlink(play_file)


def main():
    host = docker_host()
    if host is None:
        return SKIP
    kust, docs = km.load()
    problems = km.check(kust, docs)
    assert not problems, problems
    passed = False
    out_dir = tempfile.mkdtemp(prefix="tern-k8s-")
    os.chmod(out_dir, 0o777)
    smtp_port = free_port()
    played = adapt(docs, smtp_port, out_dir)
    play_file = os.path.join(out_dir, "play.yaml")
    sink_logs = [os.path.join(out_dir, "sink.log")]  # the sink pod's --record file
    with open(play_file, "w") as f:
        yaml.safe_dump_all(played, f, sort_keys=False)
    teardown(None, played)
    try:
        t = time.time()
        build_images(host)
        log(f"images built in {time.time() - t:.0f} s")

        run(["podman", "network", "create", NETWORK])
        run(["podman", "kube", "play", "--network", NETWORK, play_file], timeout=300)
        t = time.time()
        wait_healthy(docs, timeout=120)
        log(f"all four pods pass their probes ({time.time() - t:.0f} s after play)")

        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            s.ehlo("client.test")
            try:
                s.login("k8suser", "wrong")
                raise AssertionError("AUTH accepted a wrong password")
            except smtplib.SMTPAuthenticationError:
                pass
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            s.ehlo("client.test")
            s.login("k8suser", "k8s-secret-pass")
        log("AUTH with the user from the tern-secret Secret works (and refuses a wrong password)")

        ids = [f"k8s-{i}" for i in range(40)]
        temp = send(smtp_port, ids)
        counts = wait_all_arrived(sink_logs, ids, timeout=120)
        dup = {i: n for i, n in counts.items() if n != 1}
        assert not dup, f"delivered more than once: {dup}"
        log(f"40 messages relayed through ingest, queue and deliverer pods ({temp} temporary failures)")
        deadline = time.time() + 60
        while True:
            s = stats()
            if int(s.get("messages", 1)) == 0:
                break
            if time.time() > deadline:
                raise AssertionError(f"queue did not drain: {s}")
            time.sleep(1)
        log(f"queue drained: {s}")

        # The queue process dies (SIGKILL from outside, as the OOM killer
        # would; `podman kill` would count as a stop by the user and not be
        # restarted); podman restarts it (restartPolicy Always, as the
        # kubelet would) and RocksDB comes back from the volume.
        pid = int(run(["podman", "inspect", container("queue"), "--format", "{{.State.Pid}}"]).stdout)
        assert open(f"/proc/{pid}/comm").read().strip() == "tern-queue"
        os.kill(pid, 9)
        more = [f"k8s-{i}" for i in range(40, 60)]
        temp = send(smtp_port, more, deadline_s=180)
        wait_all_arrived(sink_logs, more, timeout=180)
        wait_healthy(docs, timeout=60)
        log(f"queue killed and restarted: 20 more relayed ({temp} temporary failures while it was down)")
        counts = arrivals(sink_logs)
        assert sorted(counts) == sorted(ids + more), "the sink got messages the test never sent"
        passed = True
        return 0
    finally:
        teardown(play_file, played)
        # The sink's log and the played YAML are kept only when they may
        # explain a failure.
        if passed:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:
            log(f"sink log and play.yaml kept in {out_dir}")


if __name__ == "__main__":
    sys.exit(main())
