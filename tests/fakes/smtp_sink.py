"""A scripted SMTP server for whole-system tests.

Tern's tests use real clients and real DNS; the destination MX is this
scripted server because the scenarios need replies on demand (550 at RCPT,
451 that later turns into 250, a disconnect) that no real MTA produces when
asked. It speaks enough ESMTP for a correct client (EHLO with PIPELINING,
8BITMIME, SIZE; MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT) and
records every transaction it accepted, byte-exact.

Thread model: each sink runs its own asyncio loop on a daemon thread; the
test thread reads `messages` and changes `rcpt_reply` / `data_reply` under
`lock`.
"""

import asyncio
import threading
import time


class Transaction:
    def __init__(self, mail_from, rcpts, data):
        self.mail_from = mail_from
        self.rcpts = rcpts
        self.data = data  # bytes, dot-unstuffed, CRLF line ends, no final "."
        self.received_at = time.monotonic()  # when the final dot was accepted


class SmtpSink:
    def __init__(self, host, port, name="sink.test"):
        self.host = host
        self.port = port
        self.name = name
        self.lock = threading.Lock()
        self.messages = []
        self.rcpt_attempts = 0
        self.connections = 0
        # Reply to every RCPT; may be a function of the address.
        self.rcpt_reply = "250 2.1.5 Ok"
        self.data_reply = "250 2.0.0 Ok: queued"
        # Seconds to wait before answering the final dot (a slow MX).
        self.dot_delay = 0.0
        # Transactions open at once (MAIL until the final reply, RSET or
        # hang-up), and the most seen: what a destination limit must cap.
        self.active = 0
        self.max_active = 0
        # Connections open at once (accepted until closed), and the most seen.
        self.open_connections = 0
        self.max_open_connections = 0
        self._loop = None
        self._server = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # -- control from the test thread ---------------------------------
    def start(self):
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("sink did not start")
        if self._error:
            raise self._error
        return self

    def stop(self):
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def set_rcpt_reply(self, reply):
        with self.lock:
            self.rcpt_reply = reply

    def received(self):
        with self.lock:
            return list(self.messages)

    def received_since(self, index):
        """Messages from position `index` on (for callers that poll a sink
        collecting many messages without copying all of them each time)."""
        with self.lock:
            return self.messages[index:]

    def wait_for(self, count, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)

    def record(self, tx):
        """Called with the lock held for every accepted transaction."""
        self.messages.append(tx)

    # -- the server ------------------------------------------------------
    _error = None

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._counted_session, self.host, self.port, reuse_address=True))
        except OSError as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._server.close()

    def _reply_for_rcpt(self, address):
        with self.lock:
            r = self.rcpt_reply
            self.rcpt_attempts += 1
        return r(address) if callable(r) else r

    async def _counted_session(self, reader, writer):
        with self.lock:
            self.open_connections += 1
            self.max_open_connections = max(self.max_open_connections, self.open_connections)
        try:
            await self._session(reader, writer)
        finally:
            with self.lock:
                self.open_connections -= 1

    async def _session(self, reader, writer):
        with self.lock:
            self.connections += 1

        def send(line):
            writer.write(line.encode() + b"\r\n")

        send(f"220 {self.name} ESMTP sink")
        mail_from = None
        rcpts = []
        open_tx = False

        def tx_begin():
            nonlocal open_tx
            if not open_tx:
                open_tx = True
                with self.lock:
                    self.active += 1
                    self.max_active = max(self.max_active, self.active)

        def tx_end():
            nonlocal open_tx
            if open_tx:
                open_tx = False
                with self.lock:
                    self.active -= 1

        try:
            while True:
                raw = await asyncio.wait_for(reader.readline(), 60)
                if not raw:
                    return
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                verb = line[:4].upper()
                if verb in ("EHLO",):
                    send(f"250-{self.name}")
                    send("250-PIPELINING")
                    send("250-8BITMIME")
                    send("250-SIZE 52428800")
                    send("250 ENHANCEDSTATUSCODES")
                elif verb == "HELO":
                    send(f"250 {self.name}")
                elif verb == "MAIL":
                    start, end = line.find("<"), line.find(">")
                    mail_from = line[start + 1:end]
                    rcpts = []
                    tx_begin()
                    send("250 2.1.0 Ok")
                elif verb == "RCPT":
                    start, end = line.find("<"), line.find(">")
                    address = line[start + 1:end]
                    reply = self._reply_for_rcpt(address)
                    if reply.startswith("2"):
                        rcpts.append(address)
                    send(reply)
                elif verb == "DATA":
                    if not rcpts:
                        send("554 5.5.1 No valid recipients")
                        continue
                    send("354 End data with <CR><LF>.<CR><LF>")
                    await writer.drain()
                    chunks = []
                    while True:
                        data_line = await asyncio.wait_for(reader.readline(), 60)
                        if not data_line:
                            return
                        if data_line == b".\r\n":
                            break
                        if data_line.startswith(b"."):
                            data_line = data_line[1:]
                        chunks.append(data_line)
                    with self.lock:
                        delay = self.dot_delay
                    if delay:
                        await asyncio.sleep(delay)
                    with self.lock:
                        reply = self.data_reply
                        if reply.startswith("2"):
                            self.record(Transaction(mail_from, list(rcpts), b"".join(chunks)))
                    tx_end()
                    send(reply)
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    tx_end()
                    send("250 2.0.0 Ok")
                elif verb == "NOOP":
                    send("250 2.0.0 Ok")
                elif verb == "QUIT":
                    send("221 2.0.0 Bye")
                    await writer.drain()
                    return
                else:
                    send("502 5.5.2 Command not recognised")
                await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            return
        finally:
            tx_end()
            writer.close()


def main():
    """Run one sink as a process (used by the container tests).

    Every accepted message is appended to --record as one line: the value of
    its X-Tern-Test-Id header (or "-"), so the test can count arrivals.
    """
    import argparse
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="0.0.0.0:25")
    parser.add_argument("--name", default="sink.test")
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    record = open(args.record, "a", buffering=1)

    class RecordingSink(SmtpSink):
        # Keep memory flat in long runs: the record file is the truth here.
        def record(self, tx):
            test_id = "-"
            for line in tx.data.split(b"\r\n"):
                if not line:
                    break
                if line.lower().startswith(b"x-tern-test-id:"):
                    test_id = line.split(b":", 1)[1].strip().decode()
            record.write(test_id + "\n")

    sink = RecordingSink(host, int(port), name=args.name)
    sink.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    sink.stop()


if __name__ == "__main__":
    main()
