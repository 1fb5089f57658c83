"""Happy Eyeballs (RFC 8305): a resolved address that never answers costs at most the attempt
delay before the next one is tried, never the whole connect timeout.

The address that never answers is a loopback listener whose accept queue is full: Linux drops
the SYNs it cannot queue, so a connect to it neither succeeds nor fails. The resolver is the
test's (it answers one name with that address first, then a good one); nothing but 127.0.0.1 is
ever contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import select
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trustme
from OpenSSL import SSL

import asyncsp
from asyncsp import ConnectionManager, TimeoutError
from asyncsp._http_pool import ENDPOINT_SLOT

from .servers import LOCAL, RawServer
from .test_ftp import PAYLOAD, PyFtpd
from .test_http_proxy import ScriptedProxy, tunnel
from .test_http_support import Trusted, WebServer
from .test_smtp import responder, scripted

NAME = "dual.test"


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port on 127.0.0.1 whose listener answers no new SYN (its accept queue is full)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind((LOCAL, 0))
        listener.listen(0)  # room for one connection that is never accepted
        port: int = listener.getsockname()[1]
        filler = socket.create_connection((LOCAL, port), timeout=5)
        fillers.append(filler)
        probe = socket.socket()
        fillers.append(probe)
        probe.setblocking(False)
        probe.connect_ex((LOCAL, port))
        _, writable, _ = select.select([], [probe], [], 0.5)
        if writable and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            pytest.skip("this kernel completes connections past a full accept queue")
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """The addresses the running loop resolves NAME to, in order (set by the test)."""
    answers: list[tuple[str, int]] = []
    real = asyncio.base_events.BaseEventLoop.getaddrinfo

    async def getaddrinfo(self: Any, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != NAME:
            return await real(self, host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", address) for address in answers]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", getaddrinfo)
    yield answers


@contextlib.asynccontextmanager
async def timed(limit: float) -> AsyncIterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"took {elapsed:.2f} s"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    writer.write(await reader.read(1))
    await writer.drain()


async def test_a_stream_reaches_the_next_address_within_the_delay(
    resolver: list[tuple[str, int]],
) -> None:
    async with RawServer(echo) as good:
        with black_hole() as silent:
            resolver[:] = [(LOCAL, silent), (LOCAL, good.port)]
            async with ConnectionManager() as mgr, timed(1.5):
                async with mgr.open_stream(NAME, good.port, timeout=5) as stream:
                    stream.write(b"x")
                    assert await stream.readexactly(1) == b"x"
    assert good.connections == 1


async def test_an_smtp_session_reaches_the_next_address_within_the_delay(
    resolver: list[tuple[str, int]],
) -> None:
    async with scripted(responder()) as (server, port):
        with black_hole() as silent:
            resolver[:] = [(LOCAL, silent), (LOCAL, port)]
            async with ConnectionManager() as mgr, timed(1.5):
                async with mgr.smtp(NAME, port, security="none", timeout=5) as client:
                    assert (await client.noop()).code == 250
    assert server.connections == 1


async def test_ftp_control_and_data_reach_the_next_address_within_the_delay(
    resolver: list[tuple[str, int]], tmp_path: pathlib.Path, server_cert: trustme.LeafCert
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "payload.bin").write_bytes(PAYLOAD)
    with PyFtpd(root, server_cert, SSL.TLS1_3_VERSION) as ftpd, black_hole() as silent:
        resolver[:] = [(LOCAL, silent), (LOCAL, ftpd.port)]
        async with ConnectionManager() as mgr, timed(1.5):
            async with mgr.ftp(NAME, ftpd.port, security="none", timeout=5) as ftp:
                assert await ftp.retrieve("payload.bin") == PAYLOAD


async def test_an_http_request_reaches_the_next_address_within_the_delay(
    resolver: list[tuple[str, int]],
) -> None:
    async with WebServer() as web:
        with black_hole() as silent:
            resolver[:] = [(LOCAL, silent), (LOCAL, web.port)]
            async with ConnectionManager() as mgr, timed(1.5):
                response = await mgr.get(f"http://{NAME}:{web.port}/hello", timeout=5)
                assert response.status == 200
            # Every attempt's socket was counted while it existed, and the loser is gone.
            sp = mgr.find_service_point(f"http://{NAME}:{web.port}")
            assert sp.current_connections <= 1
    assert web.seen.connections == 1


async def test_a_connect_tunnel_reaches_the_proxy_s_next_address_within_the_delay(
    resolver: list[tuple[str, int]], https: WebServer, trusted: Trusted
) -> None:
    async with ScriptedProxy(tunnel()) as proxy:
        with black_hole() as silent:
            resolver[:] = [(LOCAL, silent), (LOCAL, proxy.port)]
            async with (
                ConnectionManager(policy=trusted(), proxy=f"http://{NAME}:{proxy.port}") as mgr,
                timed(1.5),
            ):
                assert await (await mgr.get(https.url(), timeout=5)).text() == "hello"
    assert proxy.connections == 1


async def test_the_manager_s_delay_reaches_http(resolver: list[tuple[str, int]]) -> None:
    async with WebServer() as web:
        with black_hole() as silent:
            resolver[:] = [(LOCAL, silent), (LOCAL, web.port)]
            async with ConnectionManager(happy_eyeballs_delay=0.6) as mgr:
                started = time.monotonic()
                await mgr.get(f"http://{NAME}:{web.port}/hello", timeout=5)
                assert time.monotonic() - started >= 0.6
                # A new setting on the service point gives its next connection a new connector.
                sp = mgr.find_service_point(f"http://{NAME}:{web.port}")
                sp.happy_eyeballs_delay = 0.05
                await sp.close()
                async with timed(0.55):
                    await mgr.get(f"http://{NAME}:{web.port}/hello", timeout=5)


async def test_one_address_at_a_time_spends_the_timeout_on_a_silent_one(
    resolver: list[tuple[str, int]],
) -> None:
    """What every protocol did before Happy Eyeballs: the first address took the whole timeout."""
    async with RawServer(echo) as good:
        with black_hole() as silent:
            resolver[:] = [(LOCAL, silent), (LOCAL, good.port)]
            async with ConnectionManager() as mgr:
                sp = mgr.find_service_point(f"tcp://{NAME}:{good.port}")
                sp.happy_eyeballs_delay = None
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    async with mgr.open_stream(NAME, good.port, timeout=0.5):
                        pass
                assert time.monotonic() - started >= 0.5
    assert good.connections == 0


# -- the settings ------------------------------------------------------------------------------


def test_the_settings_start_at_rfc_8305_s_values_and_are_inherited() -> None:
    assert asyncsp.defaults.happy_eyeballs_delay == 0.25
    assert asyncsp.defaults.interleave is None
    mgr = ConnectionManager()
    asyncsp.defaults.happy_eyeballs_delay = 0.1
    asyncsp.defaults.interleave = 2
    assert (mgr.happy_eyeballs_delay, mgr.interleave) == (0.1, 2)
    own = ConnectionManager(happy_eyeballs_delay=0.3, interleave=1)
    sp = own.find_service_point("tcp://a.test:1")
    assert (sp.happy_eyeballs_delay, sp.interleave) == (0.3, 1)
    del own.happy_eyeballs_delay  # follows the defaults again
    assert own.happy_eyeballs_delay == 0.1
    assert sp.happy_eyeballs_delay == 0.3  # a service point keeps what it started with
    own.happy_eyeballs_delay = None  # one address at a time, for this manager's new points
    assert own.happy_eyeballs_delay is None
    assert own.find_service_point("tcp://b.test:1").happy_eyeballs_delay is None
    assert ConnectionManager(happy_eyeballs_delay=None).happy_eyeballs_delay is None
    sp.happy_eyeballs_delay = None  # one address at a time, here only
    assert sp.happy_eyeballs_delay is None
    asyncsp.defaults.happy_eyeballs_delay = None
    assert ConnectionManager().happy_eyeballs_delay is None


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("happy_eyeballs_delay", -0.1),
        ("happy_eyeballs_delay", float("nan")),
        ("happy_eyeballs_delay", "0.25"),
        ("happy_eyeballs_delay", True),
        ("interleave", 0),
        ("interleave", 1.5),
        ("interleave", "2"),
    ],
)
def test_invalid_values_are_refused_and_leave_the_old_one(name: str, bad: object) -> None:
    mgr = ConnectionManager(happy_eyeballs_delay=0.2, interleave=2)
    sp = mgr.find_service_point("tcp://a.test:1")
    for owner in (asyncsp.defaults, mgr, sp):
        before = getattr(owner, name)
        with pytest.raises(ValueError, match=name):
            setattr(owner, name, bad)
        assert getattr(owner, name) == before
    with pytest.raises(ValueError, match=name):
        ConnectionManager(**{name: bad})  # type: ignore[arg-type]


async def test_http_connectors_follow_the_service_point_s_settings() -> None:
    async with WebServer() as web:
        async with ConnectionManager(happy_eyeballs_delay=0.1, interleave=2) as mgr:
            await mgr.get(web.url(), timeout=5)
            sp = mgr.find_service_point(web.url())

            def aiohttp_connector() -> Any:
                endpoint = sp.layer(ENDPOINT_SLOT)
                assert endpoint is not None and endpoint.current is not None
                return endpoint.current.aiohttp_connector

            first = aiohttp_connector()
            assert (first._happy_eyeballs_delay, first._interleave) == (0.1, 2)
            sp.interleave = 1
            await mgr.get(web.url(), timeout=5)
            assert aiohttp_connector() is not first and aiohttp_connector()._interleave == 1


async def test_a_cancelled_https_request_keeps_its_slot_while_the_race_s_winner_closes(
    resolver: list[tuple[str, int]],
) -> None:
    """The first address wins late (its SYN is answered only on a retransmission, after the
    second attempt began), so the last socket opened is the loser. A request cancelled after
    connecting must still hold its gate slot while the *winner's* socket is closing."""
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(NAME).configure_cert(context)
    got_request, release = threading.Event(), threading.Event()
    late = socket.socket()
    late.bind((LOCAL, 0))
    late.listen(0)
    port = late.getsockname()[1]
    fillers: list[socket.socket] = []
    for _ in range(4):  # connect until one is not answered: then the queue is full
        try:
            fillers.append(socket.create_connection((LOCAL, port), timeout=0.3))
        except OSError:
            break
    else:
        pytest.skip("this kernel completes connections past a full accept queue")

    def serve() -> None:
        time.sleep(0.5)  # past the 0.25 s delay: the second attempt has begun
        for _ in fillers:  # room in the queue: the first attempt's retransmitted SYN gets in
            late.accept()[0].close()
        late.settimeout(10)
        raw, _ = late.accept()
        # The client resets the connection it gives up: what that raises here is no news.
        with contextlib.suppress(OSError), context.wrap_socket(raw, server_side=True) as conn:
            conn.recv(65536)
            got_request.set()
            release.wait(10)  # no answer, no close_notify: the client's close lingers

    server = threading.Thread(target=serve, daemon=True)
    try:
        with black_hole() as silent:
            resolver[:] = [(LOCAL, port), (LOCAL, silent)]
            server.start()
            policy = asyncsp.TlsPolicy(cadata=ca.cert_pem.bytes().decode())
            async with ConnectionManager(policy=policy, default_connection_limit=1) as mgr:
                url = f"https://{NAME}:{port}/"
                request = asyncio.create_task(mgr.get(url, timeout=10))
                assert await asyncio.to_thread(got_request.wait, 10)
                sp = mgr.find_service_point(url)
                endpoint = sp.layer(ENDPOINT_SLOT)
                assert endpoint is not None
                request.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await request
                # aiohttp is closing the winner's TLS connection: the slot is still taken.
                assert sp.current_connections == 1
                assert endpoint.held + endpoint.orphans == 1
                release.set()
    finally:
        release.set()
        if server.is_alive():
            server.join(10)
        for filler in fillers:
            filler.close()
        late.close()
