"""A TCP proxy on loopback that a test can cut, to play a network partition between planvm and its
database: ``cut()`` drops every open connection and holds new ones without an answer (as a lost
route does) until ``restore()``; ``down()`` drops them and resets new ones at once (as a stopped
database server does) until ``restore()``."""

from __future__ import annotations

import asyncio
import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.loop = asyncio.new_event_loop()
        self.cut_off = False
        self.refusing = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.held: set[asyncio.StreamWriter] = set()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._started = threading.Event()

    def start(self) -> TcpProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = await asyncio.start_server(self._client, sock=self._sock)
            self._started.set()
            await self.server.serve_forever()

        try:
            self.loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()  # reset at once: nothing listens behind
            return
        if self.cut_off:
            self.held.add(writer)  # no answer: the client waits for its own timeout
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self.cut_off:
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.discard(writer)
        self.writers.discard(up_writer)

    def cut(self) -> None:
        self._reset_all("cut_off")

    def down(self) -> None:
        self._reset_all("refusing")

    def _reset_all(self, flag: str) -> None:
        """Set ``flag`` and reset every connection through the proxy (on its loop)."""
        def do() -> None:
            setattr(self, flag, True)
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()

        self.loop.call_soon_threadsafe(do)

    def restore(self) -> None:
        def do() -> None:
            self.cut_off = False
            self.refusing = False
            for w in list(self.held):
                w.transport.abort()
            self.held.clear()

        self.loop.call_soon_threadsafe(do)

    def stop(self) -> None:
        def do() -> None:
            self.server.close()
            for w in list(self.writers) + list(self.held):
                w.transport.abort()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        self.loop.call_soon_threadsafe(do)
        self._thread.join(10)
