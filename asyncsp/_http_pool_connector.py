"""aiohttp's connector with its pool answering to asyncsp's gate: the hooks into aiohttp.

Every override of aiohttp's connector internals lives here (its pool lookup ``_get``, its
keep-alive expiry ``_cleanup``, its ``_create_connection``, its protocol ``_factory``); CI checks
each against the oldest and newest aiohttp pyproject allows, in
``tests/test_aiohttp_internals.py``. The `Connector` that owns one (``asyncsp._http_connector``)
holds what asyncsp knows of its connections.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from ._http_sockets import CLAIM, CountingHandler, RequestClaim
from ._http_tunnel import TunnelConnector
from ._tls import CURRENT_ATTEMPT

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest

    from ._http_connector import Connector

__all__ = ["PoolConnector", "TunnelPoolConnector"]

HTTP_LOG = logging.getLogger("asyncsp.http")

_EXPIRY_SLACK = 0.1
"""Seconds before keep-alive expiry from which a pool lookup watches what aiohttp expires (its
check reads the clock a little later than ours)."""


class PoolConnector(aiohttp.TCPConnector):
    """aiohttp's connector, with its pool answering to the gate.

    It tells each request's `RequestClaim` which pooled connection it took (a new one is
    noted by `Connector._make_socket`), and the idle connections aiohttp's keep-alive expiry
    would close uncounted are closed first as orphans; each new connection is reported once
    it is made; its connections count what they receive. The hooks are aiohttp's pool lookup
    ``_get``, its ``_cleanup``, its pool ``_conns``, its ``_create_connection`` and its protocol
    ``_factory``, alike in every aiohttp version pyproject allows.
    """

    def __init__(self, owner: Connector, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Its connections count what they receive (the stale-connection retry's evidence).
        self._factory = functools.partial(  # type: ignore[assignment]  # a subclass's
            CountingHandler, loop=asyncio.get_running_loop()
        )
        self.asyncsp_owner = owner
        self.asyncsp_claim: RequestClaim | None = None  # see `_get`

    async def _create_connection(
        self, req: ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        owner = self.asyncsp_owner
        # What `_tls.connect_attempt` does, without its generator machinery: the connection
        # made here (in this task, or in the tasks Happy Eyeballs starts from it) offers the
        # service point's TLS session and reports its handshake to the service point.
        token = CURRENT_ATTEMPT.set(owner.attempt)
        try:
            protocol = await super()._create_connection(req, traces, timeout)
        finally:
            CURRENT_ATTEMPT.reset(token)
        owner.connected(protocol)
        return protocol

    def _cleanup(self) -> None:
        # aiohttp's periodic keep-alive expiry: what it closes is counted right after.
        idle = self.asyncsp_owner.idle_open()
        super()._cleanup()
        self.asyncsp_owner.count_expired(idle)

    def _get(
        self, key: Any, traces: list[Any]
    ) -> Coroutine[Any, Any, aiohttp.connector.Connection | None]:
        # A plain def returning aiohttp's own coroutine on the hot path: no frame of ours per
        # request. aiohttp calls it before `_request` first waits (trace hooks aside), so the
        # request's claim is the one `_send` just left here; a traced request's is in the
        # task's context, and so is the claim of one that may open a connection (for
        # `Connector._make_socket`, in this task or those Happy Eyeballs starts from it).
        claim = self.asyncsp_claim
        if claim is not None:
            self.asyncsp_claim = None
        else:
            claim = CLAIM.get()
        pooled = self._conns.get(key)
        if pooled and claim is not None and not claim.fresh:
            # aiohttp takes the oldest idle connection still open and not past its keep-alive,
            # at once: when the oldest is both, the claim knows here that it takes that one.
            protocol, released_at = pooled[0]
            keepalive = self._keepalive_timeout
            if (
                keepalive is None or time.monotonic() - released_at <= keepalive - _EXPIRY_SLACK
            ) and protocol.is_connected():
                claim.took(protocol)
                if HTTP_LOG.isEnabledFor(logging.DEBUG):
                    HTTP_LOG.debug(
                        "%s: reusing an idle connection", self.asyncsp_owner.endpoint.sp.address
                    )
                return super()._get(key, traces)
        if claim is not None:
            if claim.token is None:
                claim.token = CLAIM.set(claim)  # reset by `_send`
            if claim.fresh:
                return self._get_fresh()
        if not pooled:
            return super()._get(key, traces)  # nothing idle: the request opens a connection
        return self._get_watched(key, traces, claim)

    async def _get_watched(
        self, key: Any, traces: list[Any], claim: RequestClaim | None
    ) -> aiohttp.connector.Connection | None:
        """`_get` where aiohttp may close idle connections first (past their keep-alive, or
        closed by the peer): those it closes are counted as orphans, the one it hands out
        is told to the claim."""
        owner = self.asyncsp_owner
        idle = owner.idle_open()
        try:
            connection = await super()._get(key, traces)
        finally:
            owner.count_expired(idle)
        if connection is not None and connection.protocol is not None:
            if claim is not None:
                claim.took(connection.protocol)
            if HTTP_LOG.isEnabledFor(logging.DEBUG):
                HTTP_LOG.debug("%s: reusing an idle connection", owner.endpoint.sp.address)
        return connection

    async def _get_fresh(self) -> None:
        """`_get` for the retry after a stale connection: a new one, never the pool's; room
        for it is made first."""
        owner = self.asyncsp_owner
        await owner.endpoint.room_for_new_socket(owner)


class TunnelPoolConnector(PoolConnector, TunnelConnector):
    """`PoolConnector` whose new connections are CONNECT tunnels (HTTPS through a proxy)."""
