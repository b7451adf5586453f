"""A whole Tern whose config/hooks.ini names a user's Hooks server, for the
hooks_*_test modules.

The server (tests/fakes/hook_server.py, Python's grpcio) is started for the
test class before the cluster, so the services find it at start-up, and
stopped after the cluster.
"""

import os
import sys

from cluster import Cluster, ClusterTestCase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fakes"))
from hook_server import HookServer, pb  # noqa: E402,F401  (pb re-exported for the tests)


class HookClusterTestCase(ClusterTestCase):
    """Subclasses set HOOKS (hooks.ini hooks=), TIMEOUT_MS and, when needed,
    CLUSTER_OPTIONS (more Cluster() arguments); answers() gives the server's
    first answers, by hook name."""

    HOOKS = "*"
    TIMEOUT_MS = 1000
    CLUSTER_OPTIONS = {}
    server = None

    @classmethod
    def answers(cls):
        return {}

    @classmethod
    def make_cluster(cls):
        cls.server = HookServer().start()
        for hook, answer in cls.answers().items():
            cls.server.set(hook, answer)
        hooks_ini = f"[main]\naddress={cls.server.address}\nhooks={cls.HOOKS}\ntimeout_ms={cls.TIMEOUT_MS}\n"
        return Cluster(hooks_ini=hooks_ini, **cls.CLUSTER_OPTIONS)

    @classmethod
    def setUpClass(cls):
        try:
            super().setUpClass()
        except BaseException:
            # tearDownClass does not run when setUpClass fails.
            if cls.server is not None:
                cls.server.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.server.stop()
