"""deploy/k8s read as the cluster would, and checked against what Tern needs.

Shared by k8s_manifests_test.py (these checks alone, no container engine)
and k8s_play_test.py (the same manifests run with `podman kube play`).
A manifest that would start but not work (a config directory that is not
mounted, a probe on the wrong port, a Service aimed at a port no container
has, a tern.ini key Tern does not know) fails here with its name.
"""

import configparser
import copy
import os
import re

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")
SERVICES = ("queue", "ingest", "deliverer", "bouncer")


SHARDS = os.path.join(K8S, "shards")


def _merge(into, patch):
    """A strategic-merge patch as far as the shipped overlays use it: maps
    merge key by key, anything else is replaced."""
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def load_overlay(directory):
    """The documents a kustomization in `directory` builds from its base
    (`..`) and resources, with its patch files applied (a patch matches a
    document by kind and name; `$patch: delete` removes it)."""
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    docs = []
    base_kust = None
    for name in kust["resources"]:
        path = os.path.normpath(os.path.join(directory, name))
        if os.path.isdir(path):
            base_kust, base_docs = load() if path == K8S else load_overlay(path)
            docs.extend(base_docs)
            continue
        with open(path) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    for patch_ref in kust.get("patches", []):
        with open(os.path.join(directory, patch_ref["path"])) as f:
            patch = yaml.safe_load(f)
        key = (patch["kind"], patch["metadata"]["name"])
        matches = [d for d in docs if (d["kind"], d["metadata"]["name"]) == key]
        if len(matches) != 1:
            raise ValueError(f"{patch_ref['path']}: patches {len(matches)} documents named {key}")
        if patch.get("$patch") == "delete":
            docs.remove(matches[0])
        else:
            _merge(matches[0], {k: v for k, v in patch.items() if k != "$patch"})
    return base_kust, docs


def load():
    """Every document of every resource the kustomization lists, with its
    `images` overrides applied, in order."""
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    docs = []
    for name in kust["resources"]:
        with open(os.path.join(K8S, name)) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    images = {i["name"]: i for i in kust.get("images", [])}
    for d in docs:
        for c in containers(d):
            repo, _, tag = c["image"].partition(":")
            if repo in images:
                over = images[repo]
                c["image"] = f"{over.get('newName', repo)}:{over.get('newTag', tag or 'latest')}"
    return kust, docs


def containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", [])


def workloads(docs):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}


def ini(text):
    p = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=(";", "#"))
    p.read_string(text)
    return p


def documented_keys(path):
    """section -> keys named in a shipped INI file, set or shown commented out."""
    keys, section = {}, None
    with open(path) as f:
        for line in f:
            m = re.match(r"\[(.+)\]\s*$", line)
            if m:
                section = m.group(1)
                continue
            m = re.match(r"[;#]?\s*([a-z_]+(?:\[\])?)\s*=", line)
            if m and section:
                keys.setdefault(section, set()).add(m.group(1))
    return keys


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def dockerfile_health_command():
    with open(os.path.join(ROOT, "deploy", "Dockerfile")) as f:
        text = f.read()
    m = re.search(r'HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])', text)
    return yaml.safe_load(m.group(1))


def dockerfile_ids():
    with open(os.path.join(ROOT, "deploy", "Dockerfile")) as f:
        text = f.read()
    return int(re.search(r"useradd [^\n]*--uid (\d+)", text).group(1)), int(re.search(r"groupadd [^\n]*--gid (\d+)",
                                                                                          text).group(1))


def compose_grace():
    with open(os.path.join(ROOT, "deploy", "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    return {name: int(s["stop_grace_period"].rstrip("s")) for name, s in compose["services"].items()}


def shard_addresses(docs):
    """The `queue` addresses a sharded deployment's clients must list: one
    per pod of the queue StatefulSet, by the name its governing headless
    Service gives it; or a problem."""
    queue = workloads(docs).get("queue", {})
    spec = queue.get("spec", {})
    governing = spec.get("serviceName")
    svc = next((d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == governing), None)
    if svc is None or svc["spec"].get("clusterIP") != "None":
        return None, f"queue: serviceName {governing} is not a headless Service (no per-shard DNS names)"
    return ",".join(f"queue-{i}.{governing}:7070" for i in range(spec.get("replicas", 1))), None


def check(kust, docs, sharded=False):
    """Returns a list of problems, each naming the manifest part at fault.
    `sharded`: the documents of deploy/k8s/shards, where the queue has
    several pods and every client lists each of them."""
    problems = []
    listed = set(kust["resources"])
    present = {n for n in os.listdir(K8S) if n.endswith(".yaml") and n != "kustomization.yaml"}
    if listed != present:
        problems.append(f"kustomization resources {sorted(listed)} != files {sorted(present)}")
    want_queue = "queue:7070"
    if sharded:
        want_queue, problem = shard_addresses(docs)
        if problem:
            return problems + [problem]

    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    if "tern-k8s" not in config_maps:
        return problems + ["no ConfigMap tern-k8s"]
    tern_ini = ini(config_maps["tern-k8s"]["data"]["tern.ini"])
    smtp_ini = ini(config_maps["tern-k8s"]["data"]["smtp.ini"])
    known = documented_keys(os.path.join(ROOT, "deploy", "config", "tern.ini"))
    for section in tern_ini.sections():
        for key in tern_ini[section]:
            if key not in known.get(section, set()):
                problems.append(f"tern-k8s tern.ini [{section}] {key}: not a key of deploy/config/tern.ini")

    loads = workloads(docs)
    if set(loads) != set(SERVICES):
        problems.append(f"workloads {sorted(loads)} != {sorted(SERVICES)}")
    queue = loads.get("queue", {})
    replicas = queue.get("spec", {}).get("replicas")
    if queue.get("kind") != "StatefulSet" or (replicas != 1 if not sharded else not 2 <= replicas <= 64):
        problems.append("queue: must be a StatefulSet with exactly one replica (one RocksDB, one writer)"
                        if not sharded else f"queue: {replicas} replicas is not 2-64 shards")
    uid, gid = dockerfile_ids()
    health_cmd = dockerfile_health_command()
    grace = compose_grace()
    image = None
    for name, w in loads.items():
        spec = w["spec"]
        tmpl = spec["template"]
        labels = tmpl["metadata"].get("labels", {})
        for k, v in spec["selector"]["matchLabels"].items():
            if labels.get(k) != v:
                problems.append(f"{name}: selector {k}={v} does not match the pod template's labels")
        pod = tmpl["spec"]
        sc = pod.get("securityContext", {})
        if sc.get("runAsUser") != uid or sc.get("runAsGroup") != gid or not sc.get("runAsNonRoot"):
            problems.append(f"{name}: must run as the image's user {uid}:{gid}, non-root")
        if pod.get("terminationGracePeriodSeconds") != grace.get(name):
            problems.append(f"{name}: terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds')} "
                            f"!= compose stop_grace_period {grace.get(name)}")
        volumes = {v["name"] for v in pod.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        (c,) = pod["containers"]
        image = image or c["image"]
        if c["image"] != image:
            problems.append(f"{name}: image {c['image']} differs from {image} (one image for all)")
        if c["command"][:2] != [f"tern-{name}", "--config"]:
            problems.append(f"{name}: command {c['command']} does not start tern-{name} --config")
            continue
        config_path = c["command"][2]
        env = env_of(c)
        if env.get("TERN_CONFIG") != config_path:
            problems.append(f"{name}: TERN_CONFIG {env.get('TERN_CONFIG')} != --config {config_path}")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for m in mounts.values():
            if m["name"] not in volumes:
                problems.append(f"{name}: volumeMount {m['name']} has no volume")
        for d in config_path.split(":"):
            if d != "/etc/tern" and d not in mounts:
                problems.append(f"{name}: config directory {d} is not mounted")
        if config_path.split(":")[0] != "/etc/tern-k8s":
            problems.append(f"{name}: /etc/tern-k8s (the addresses) must come first in --config")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        section = tern_ini[name] if tern_ini.has_section(name) else {}
        health_key = "listen" if name == "queue" else "health_listen"
        if health_key not in section:
            problems.append(f"tern-k8s tern.ini [{name}] has no {health_key}")
            continue
        health_port = port_of(section[health_key])
        if not section[health_key].startswith("0.0.0.0:"):
            problems.append(f"{name}: {health_key} must listen on the pod network")
        if env.get("TERN_HEALTH") != f"127.0.0.1:{health_port}":
            problems.append(f"{name}: TERN_HEALTH {env.get('TERN_HEALTH')} is not its {health_key} port {health_port}")
        want_ports = {health_port, port_of(section.get("metrics_listen", ":0"))}
        if name == "ingest":
            want_ports.add(port_of(smtp_ini["main"]["listen"]))
            if ports.get("smtp") != port_of(smtp_ini["main"]["listen"]):
                problems.append("ingest: the smtp containerPort is not smtp.ini's listen port")
        lacking = sorted(want_ports - set(ports.values()))
        if lacking:
            problems.append(f"{name}: containerPorts {sorted(ports.values())} lack {lacking}")
        metrics_port = port_of(section.get("metrics_listen", ":0"))
        if tmpl["metadata"].get("annotations", {}).get("prometheus.io/port") != str(metrics_port):
            problems.append(f"{name}: prometheus.io/port annotation is not its metrics port {metrics_port}")
        for probe in ("livenessProbe", "readinessProbe"):
            if c.get(probe, {}).get("exec", {}).get("command") != health_cmd:
                problems.append(f"{name}: {probe} is not the image's health command {health_cmd}")
        if name != "queue" and section.get("queue") != want_queue:
            problems.append(f"{name}: tern.ini queue={section.get('queue')} is not {want_queue}"
                            + (" (every shard)" if sharded else " (the queue Service)"))
        if name == "queue" and "/var/lib/tern/queue" not in mounts:
            problems.append("queue: the data directory is not on the persistent volume")
        if name == "queue" and section.get("data_dir") not in mounts:
            problems.append(f"queue: data_dir {section.get('data_dir')} is not a mounted volume")

    for d in docs:
        if d["kind"] != "Service":
            continue
        sel = d["spec"]["selector"]
        targets = [w for w in loads.values() if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v
                                                    for k, v in sel.items())]
        if len(targets) != 1:
            problems.append(f"Service {d['metadata']['name']}: selects {len(targets)} workloads, not one")
            continue
        if sharded and targets[0] is queue and d["spec"].get("clusterIP") != "None":
            problems.append(f"Service {d['metadata']['name']}: load-balances over the queue shards; a worker "
                            "must report to the shard that leased it the job")
        (c,) = targets[0]["spec"]["template"]["spec"]["containers"]
        names = {p["name"] for p in c.get("ports", [])}
        for p in d["spec"]["ports"]:
            if p["targetPort"] not in names:
                problems.append(f"Service {d['metadata']['name']}: targetPort {p['targetPort']} is no containerPort")
        if not sharded and d["metadata"]["name"] == "queue" and 7070 not in [p["port"] for p in d["spec"]["ports"]]:
            problems.append("Service queue: no port 7070, which tern.ini's queue=queue:7070 needs")
    return problems

