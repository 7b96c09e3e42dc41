"""A TCP proxy that adds a fixed delay each way, to measure against a Firestore as far away as
production's (about 10 ms each way from a Cloud Function to Firestore in its region).

Every chunk of bytes read from one side is written to the other ``delay`` seconds later, in
order; reading goes on meanwhile, so the delay is latency, not a bandwidth cap: a gRPC stream
of many calls is delayed as a whole, exactly as a longer wire would. Runs its own event loop in
a daemon thread::

    with LatencyProxy("127.0.0.1", 8080, delay=0.010) as proxy:
        os.environ["FIRESTORE_EMULATOR_HOST"] = f"127.0.0.1:{proxy.port}"
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType
from typing import Self

_READ = 65536


class LatencyProxy:
    def __init__(self, target_host: str, target_port: int, delay: float,
                 listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = listen_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="latency-proxy", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the latency proxy did not start")
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, then the loop."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _connection(self, client_reader: asyncio.StreamReader,
                          client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer),
                                 self._pipe(server_reader, client_writer),
                                 return_exceptions=True)
        except asyncio.CancelledError:
            # The proxy is stopping: end the connection quietly (the server's callback reads
            # this task's outcome, and a cancelled one would be reported as an error).
            for writer in (client_writer, server_writer):
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``delay`` after it was read."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                chunk = await reader.read(_READ)
                queue.put_nowait((time.monotonic() + self.delay, chunk))
                if not chunk:
                    break
            await sender
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        finally:
            with contextlib.suppress(Exception):
                writer.close()
