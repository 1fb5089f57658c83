"""Shared fixtures: a throwaway CA (trustme), certificates, policies that trust it."""

from __future__ import annotations

import collections.abc
import dataclasses

import pytest
import trustme

import asyncsp
from asyncsp import TlsPolicy


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
def trusted(ca_pem: str) -> collections.abc.Callable[..., TlsPolicy]:
    """Make a policy that trusts the test CA: ``trusted(protocols=..., ...)``."""

    def make(**kwargs: object) -> TlsPolicy:
        return TlsPolicy(cadata=ca_pem, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(autouse=True)
def _restore_defaults() -> collections.abc.Iterator[None]:
    """Tests may change the process-wide defaults; put them back afterwards."""
    saved = dataclasses.replace(asyncsp.defaults.policy)
    limit = asyncsp.defaults.default_connection_limit
    idle = asyncsp.defaults.max_idle_time
    lease = asyncsp.defaults.connection_lease_timeout
    dns = asyncsp.defaults.dns_refresh_timeout
    yield
    asyncsp.defaults.policy = saved
    asyncsp.defaults.default_connection_limit = limit
    asyncsp.defaults.max_idle_time = idle
    asyncsp.defaults.connection_lease_timeout = lease
    asyncsp.defaults.dns_refresh_timeout = dns
