"""A user's Hooks server (proto/tern/v1/hooks.proto), written with Python's
grpcio as any Tern user could write one, for the whole-system tests.

The message classes are generated at start with Debian's protoc
(`--python_out`) into a temp dir; the service is registered with a generic
handler, so no grpc_tools code generator is needed.

Each hook answers with what the test set for it: a response message, or a
function(request) -> response (may sleep, to test deadlines, or raise, to
test errors). A hook with no answer set answers UNIMPLEMENTED. Every request
is recorded in `calls[hook]`.
"""

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent import futures

try:
    import grpc
except ImportError:
    # Debian's python3-grpcio, when the tests run under another CPython 3.11
    # (a pyenv build earlier in PATH): same ABI, so its modules load as they are.
    sys.path.append("/usr/lib/python3/dist-packages")
    import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.abspath(os.path.join(HERE, "..", "..", "proto"))

_pb = None
_pb_lock = threading.Lock()


def pb():
    """The generated hooks_pb2 module (and message_pb2/queue_pb2 beside it)."""
    global _pb
    with _pb_lock:
        if _pb is None:
            out = tempfile.mkdtemp(prefix="tern-hooks-pb-")
            # Every file of the package: hooks.proto imports queue.proto,
            # which imports others in turn.
            protos = sorted(os.path.join("tern", "v1", p) for p in os.listdir(os.path.join(PROTO_DIR, "tern", "v1"))
                            if p.endswith(".proto"))
            subprocess.run(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}"] + protos, check=True)
            sys.path.insert(0, out)
            _pb = importlib.import_module("tern.v1.hooks_pb2")
            # The generated modules are loaded; their files are not needed again.
            shutil.rmtree(out, ignore_errors=True)
        return _pb


METHODS = {
    # rpc name: (hook name in hooks.ini, request class name, response class name)
    "QueueOutbound": ("queue_outbound", "QueueOutboundRequest", "QueueOutboundResponse"),
    "SendEmail": ("send_email", "SendEmailRequest", "SendEmailResponse"),
    "GetMx": ("get_mx", "GetMxRequest", "GetMxResponse"),
    "Deferred": ("deferred", "DeferredRequest", "DeferredResponse"),
    "Bounce": ("bounce", "BounceRequest", "BounceResponse"),
    "Delivered": ("delivered", "DeliveredRequest", "DeliveredResponse"),
}


class HookServer:
    def __init__(self, host="127.0.0.1", port=0):
        self.host = host
        self.port = port
        self.answers = {}
        self.calls = {hook: [] for hook, _, _ in METHODS.values()}
        self.lock = threading.Lock()
        self.server = None

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def set(self, hook, answer):
        """`answer`: a response message, a function(request) -> response, or None (UNIMPLEMENTED)."""
        with self.lock:
            self.answers[hook] = answer

    def requests(self, hook):
        with self.lock:
            return list(self.calls[hook])

    def _handler(self, hook):
        def handle(request, context):
            with self.lock:
                self.calls[hook].append(request)
                answer = self.answers.get(hook)
            if answer is None:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{hook} is not implemented here")
            return answer(request) if callable(answer) else answer
        return handle

    def start(self):
        m = pb()
        handlers = {}
        for rpc, (hook, req, resp) in METHODS.items():
            handlers[rpc] = grpc.unary_unary_rpc_method_handler(
                self._handler(hook), request_deserializer=getattr(m, req).FromString,
                response_serializer=getattr(m, resp).SerializeToString)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tern.v1.Hooks", handlers),))
        self.port = self.server.add_insecure_port(f"{self.host}:{self.port}")
        self.server.start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.stop(grace=None)
            self.server = None
