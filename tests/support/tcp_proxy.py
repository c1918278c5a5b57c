"""A TCP proxy that can stall one direction: the network between a client and a real server."""

from __future__ import annotations

import asyncio
import contextlib


class StallingProxy:
    """Forward connections to ``host:port``; :meth:`hold` stops what the server sends back.

    While held, the client's bytes still reach the server (a publish lands) but the server's
    answers wait in the proxy (the acknowledgement never comes in time), as in a network stall.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on a free loopback port and return it."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def hold(self) -> None:
        """Keep the server's bytes from reaching the clients."""
        self._flowing.clear()

    def release(self) -> None:
        """Deliver what was held back and everything after."""
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        pumps = [
            asyncio.create_task(self._pump(client_r, server_w, gated=False)),
            asyncio.create_task(self._pump(server_r, client_w, gated=True)),
        ]
        self._pumps.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
            self._pumps.discard(pump)
        for writer in (client_w, server_w):
            writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gated: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if gated:
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
