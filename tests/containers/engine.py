"""What the container tests share: a timed log, a checked subprocess run, and
the container engine (set up on demand by deploy/scripts/container-engine.sh)."""

import os
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
SKIP = 77  # ctest's SKIP_RETURN_CODE for these tests
COMPOSE_PROJECT = "terntest"
COMPOSE_FILES = ["-f", os.path.join(ROOT, "deploy", "compose.yaml"), "-f", os.path.join(HERE, "compose.test.yaml")]
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def run(args, check=True, timeout=900, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def docker_host():
    """DOCKER_HOST of a usable engine (podman is set up if need be), or None,
    with the reason printed, when none can run here or TERN_SKIP_CONTAINERS=1."""
    if os.environ.get("TERN_SKIP_CONTAINERS") == "1":
        print("skipped: TERN_SKIP_CONTAINERS=1")
        return None
    engine = subprocess.run([os.path.join(ROOT, "deploy", "scripts", "container-engine.sh")],
                            capture_output=True, text=True)
    if engine.returncode == 3:
        print("skipped: no container engine can run here:", engine.stderr.strip())
        return None
    if engine.returncode != 0:
        raise RuntimeError(f"container-engine.sh failed:\n{engine.stderr}")
    return engine.stdout.strip().split("=", 1)[1]


def build_images(host, env=None):
    """Builds Tern's image (localhost/tern:latest) and the test peers' image
    (localhost/tern-peer:test) from this tree, always the same way (compose
    through the engine's API): the second container test of a run then finds
    every layer cached, which podman's own `build` command did not."""
    env = dict(env or os.environ)
    env["DOCKER_HOST"] = host
    # compose.test.yaml names these in its volumes; a build does not use them.
    env.setdefault("TERN_TEST_OUT", tempfile.gettempdir())
    env.setdefault("TERN_TEST_CONFIG", os.path.join(HERE, "config"))
    run([os.path.join(ROOT, "deploy", "scripts", "make-base-image.sh")], env=env)
    run(["docker-compose", "-p", COMPOSE_PROJECT, *COMPOSE_FILES, "build"], env=env)


def arrivals(paths):
    """Test id -> how many times the scripted sinks recorded it (each sink's
    --record file has one id per line; a file not yet written counts as empty)."""
    counts = {}
    for path in paths:
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    counts[line] = counts.get(line, 0) + 1
    return counts


def wait_all_arrived(paths, ids, timeout):
    """Waits until every id in `ids` is recorded; returns arrivals(paths)."""
    deadline = time.time() + timeout
    while True:
        counts = arrivals(paths)
        missing = [i for i in ids if i not in counts]
        if not missing:
            return counts
        if time.time() > deadline:
            raise AssertionError(f"{len(missing)} accepted messages never reached a sink, e.g. {missing[:5]}")
        time.sleep(1)
