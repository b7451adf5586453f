#!/usr/bin/env python3
"""slow_sink: an SMTP sink that waits before every reply, for many sessions.

For the deliverer's "10,000 simultaneous sessions" benchmark (README.md):
smtp-sink stops at ~256 sessions, this one holds as many as its file
descriptor limit allows (raised to the hard limit at start). Every reply -
banner, EHLO, each pipelined MAIL/RCPT, DATA, the final dot, RSET, QUIT -
is sent `--delay` seconds after the command (or the connection) arrived.

Loopback only: it refuses to listen anywhere but 127.0.0.0/8 or ::1.
Bounded: at most `--max-sessions` open sessions (more get 421 and are
closed), a 120 s idle timeout per read, 1 MB per message, and it exits after
`--max-seconds`.

On exit (SIGTERM/SIGINT or --max-seconds) it prints one JSON line to stdout:
{"sessions": .., "peak_sessions": .., "messages": .., "refused": ..}; with
--stats FILE it also rewrites that file every second while running.
"""

import argparse
import asyncio
import ipaddress
import json
import resource
import os
import signal


class Sink:
    def __init__(self, delay, max_sessions):
        self.delay = delay
        self.max_sessions = max_sessions
        self.open = 0
        self.sessions = 0
        self.peak = 0
        self.messages = 0
        self.refused = 0

    def stats(self):
        return {"sessions": self.sessions, "open": self.open, "peak_sessions": self.peak,
                "messages": self.messages, "refused": self.refused}

    async def session(self, reader, writer):
        if self.open >= self.max_sessions:
            self.refused += 1
            writer.write(b"421 4.3.2 too many sessions\r\n")
            writer.close()
            return
        self.open += 1
        self.sessions += 1
        self.peak = max(self.peak, self.open)
        try:
            await self._serve(reader, writer)
        except (asyncio.TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def reply(self, writer, text):
        await asyncio.sleep(self.delay)
        writer.write(text.encode() + b"\r\n")
        await writer.drain()

    async def _serve(self, reader, writer):
        await self.reply(writer, "220 slow.sink.test ESMTP")
        while True:
            line = await asyncio.wait_for(reader.readline(), 120)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"LHLO"):
                await self.reply(writer, "250-slow.sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                         "250-SIZE 1048576\r\n250 ENHANCEDSTATUSCODES")
            elif verb == b"HELO":
                await self.reply(writer, "250 slow.sink.test")
            elif verb == b"MAIL":
                await self.reply(writer, "250 2.1.0 Ok")
            elif verb == b"RCPT":
                await self.reply(writer, "250 2.1.5 Ok")
            elif verb == b"DATA":
                await self.reply(writer, "354 End data with <CR><LF>.<CR><LF>")
                size = 0
                while True:
                    chunk = await asyncio.wait_for(reader.readline(), 120)
                    if not chunk:
                        return
                    if chunk == b".\r\n":
                        break
                    size += len(chunk)
                    if size > 1 << 20:
                        await self.reply(writer, "552 5.3.4 too big")
                        return
                self.messages += 1
                await self.reply(writer, "250 2.0.0 Ok: queued")
            elif verb in (b"RSET", b"NOOP"):
                await self.reply(writer, "250 2.0.0 Ok")
            elif verb == b"QUIT":
                await self.reply(writer, "221 2.0.0 Bye")
                return
            else:
                await self.reply(writer, "502 5.5.2 Command not recognised")


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:2526", help="HOST:PORT on loopback")
    ap.add_argument("--delay", type=float, default=2.0, help="seconds before each reply")
    ap.add_argument("--max-sessions", type=int, default=12000)
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--stats", help="file rewritten every second with the counters (JSON)")
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    host = host.strip("[]")
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("slow_sink listens on loopback only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.max_sessions + 64:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below --max-sessions {args.max_sessions} + 64")

    sink = Sink(args.delay, args.max_sessions)
    server = await asyncio.start_server(sink.session, host, int(port), backlog=65535, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deadline = loop.time() + args.max_seconds
    while not stop.is_set() and loop.time() < deadline:
        try:
            await asyncio.wait_for(stop.wait(), 1)
        except asyncio.TimeoutError:
            pass
        if args.stats:
            with open(args.stats + ".tmp", "w") as f:
                json.dump(sink.stats(), f)
            os.replace(args.stats + ".tmp", args.stats)
    server.close()
    print(json.dumps(sink.stats()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
