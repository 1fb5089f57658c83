"""Shared fixtures: a throwaway CA (trustme), certificates, policies that trust it, and the
loopback web servers and manager the HTTP tests share."""

from __future__ import annotations

import collections.abc
import dataclasses

import pytest
import trustme

import asyncsp
from asyncsp import ConnectionManager, TlsPolicy

from .servers import server_context
from .test_http_support import Trusted, WebServer


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA) -> str:
    return ca.cert_pem.bytes().decode()


@pytest.fixture
def trusted(ca_pem: str) -> Trusted:
    """Make a policy that trusts the test CA: ``trusted(protocols=..., ...)``."""

    def make(**kwargs: object) -> TlsPolicy:
        return TlsPolicy(cadata=ca_pem, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def https(server_cert: trustme.LeafCert) -> collections.abc.AsyncIterator[WebServer]:
    """A web server speaking TLS 1.2 and 1.3 with the test CA's certificate."""
    async with WebServer(server_context(server_cert, "TLSv1.2", "TLSv1.3")) as server:
        yield server


@pytest.fixture
async def plain() -> collections.abc.AsyncIterator[WebServer]:
    async with WebServer() as server:
        yield server


@pytest.fixture
async def mgr(trusted: Trusted) -> collections.abc.AsyncIterator[ConnectionManager]:
    """A manager whose policy trusts the test CA."""
    async with ConnectionManager(policy=trusted()) as manager:
        yield manager


@pytest.fixture(autouse=True)
def _restore_defaults() -> collections.abc.Iterator[None]:
    """Tests may change the process-wide defaults; put them back afterwards."""
    saved = dataclasses.replace(asyncsp.defaults.policy)
    limit = asyncsp.defaults.default_connection_limit
    idle = asyncsp.defaults.max_idle_time
    lease = asyncsp.defaults.connection_lease_timeout
    dns = asyncsp.defaults.dns_refresh_timeout
    delay = asyncsp.defaults.happy_eyeballs_delay
    interleave = asyncsp.defaults.interleave
    yield
    asyncsp.defaults.policy = saved
    asyncsp.defaults.default_connection_limit = limit
    asyncsp.defaults.max_idle_time = idle
    asyncsp.defaults.connection_lease_timeout = lease
    asyncsp.defaults.dns_refresh_timeout = dns
    asyncsp.defaults.happy_eyeballs_delay = delay
    asyncsp.defaults.interleave = interleave
