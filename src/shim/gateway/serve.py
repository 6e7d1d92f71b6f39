"""The gateway's listeners (``--listen-client-http-urls``, and ``--listen-metrics-urls`` for
/metrics and the health paths alone), in the server's event loop.

A separate HTTP/1.1 port, as etcd 3.5 offers with the same flag: gRPC keeps its own port to
itself (serving both on one port would put a Python proxy in front of every gRPC byte).
"""

from __future__ import annotations

import logging
import ssl

from shim.config import ConfigError, HttpListen
from shim.gateway.gateway import Gateway
from shim.gateway.http import HttpServer
from shim.tls import ServerTls, server_ssl_context

log = logging.getLogger(__name__)

IDLE_TIMEOUT_SECONDS = 120.0  # a connection between requests, or a request body that stalls


class GatewayServer:
    """``gateway`` served on the --listen-client-http-urls listeners."""

    def __init__(self, gateway: Gateway, what: str = "the HTTP/JSON gateway") -> None:
        self._http = HttpServer(gateway, idle_timeout=IDLE_TIMEOUT_SECONDS)
        self._what = what

    async def start(
        self, listens: list[HttpListen], tls: ServerTls | None, reuse_port: bool
    ) -> list[str]:
        """Listen on every URL; returns them with the ports bound."""
        context: ssl.SSLContext | None = None
        urls: list[str] = []
        for listen in listens:
            if listen.secure and context is None:
                assert tls is not None  # parse_http_urls refuses https:// without TLS
                context = server_ssl_context(tls)
            try:
                port = await self._http.listen(
                    listen.host, listen.port, ssl=context if listen.secure else None,
                    reuse_port=reuse_port,
                )
            except OSError as exc:
                await self._http.close(0)
                raise ConfigError(f"cannot listen on {listen.target}: {exc.strerror}") from None
            bound = HttpListen(listen.host, port, listen.secure)
            urls.append(f"{'https' if listen.secure else 'http'}://{bound.target}")
        log.info("serving %s on %s", self._what, ", ".join(urls))
        return urls

    async def close(self, grace: float) -> None:
        await self._http.close(grace)
