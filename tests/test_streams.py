"""Raw streams through service points: policy snapshots, verification, limits, failures."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import Callable, Iterator

import pytest
import trustme

import asyncsp
from asyncsp import (
    CertificateVerificationError,
    ConnectError,
    ConnectionClosedError,
    ConnectionManager,
    InsecurePolicyWarning,
    ManagerClosedError,
    PinMismatchError,
    ReadLimitError,
    SecurityProtocol,
    TlsError,
    TlsPolicy,
)

from .servers import (
    LOCAL,
    RawServer,
    ServerRecord,
    ThreadedServer,
    echo_handler,
    fd_baseline,
    server_context,
    wait_until,
)
from .test_defaults import run_python

SP = SecurityProtocol


@pytest.fixture(scope="module")
def tls_server(server_cert: trustme.LeafCert) -> Iterator[ThreadedServer]:
    with ThreadedServer(server_context(server_cert, "TLSv1.2", "TLSv1.3")) as server:
        yield server


@pytest.fixture(scope="module")
def plain_server() -> Iterator[ThreadedServer]:
    with ThreadedServer() as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_plain_stream_round_trip(plain_server: ThreadedServer) -> None:
    async with ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5) as s:
            assert s.tls is None
            s.write(b"hello\n")
            await s.drain()
            assert await s.readline() == b"echo:hello\n"
            s.write(b"abc")
            assert await s.readuntil(b"bc") == b"echo:abc"
            sp = mgr.find_service_point(f"tcp://127.0.0.1:{plain_server.port}")
            assert sp.current_connections == 1
            assert sp.idle_since is None
        assert sp.current_connections == 0
        assert sp.idle_since is not None
        assert sp.stats.requests == 1 and sp.stats.connections_opened == 1


async def test_stream_opened_before_a_policy_change_keeps_its_version(
    tls_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5) as before:
            assert before.tls is not None and before.tls.version == "TLSv1.3"
            mgr.security_protocol = SP.TLS12
            async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5) as after:
                assert after.tls is not None and after.tls.version == "TLSv1.2"
                before.write(b"old")
                assert await before.readexactly(8) == b"echo:old"
                assert before.tls.version == "TLSv1.3"
                assert before.policy.protocols == SP.SYSTEM_DEFAULT
                assert after.policy.protocols == SP.TLS12
        sp = mgr.find_service_point(f"tls://localhost:{tls_server.port}")
        assert sp.stats.versions == {"TLSv1.3": 1, "TLSv1.2": 1}


async def test_per_endpoint_policy_override(
    tls_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        sp = mgr.find_service_point(f"tls://localhost:{tls_server.port}")
        sp.policy = trusted(protocols=SP.TLS12)
        async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5) as s:
            assert s.tls is not None and s.tls.version == "TLSv1.2"
        sp.policy = None
        assert sp.policy == mgr.policy
        async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5) as s:
            assert s.tls is not None and s.tls.version == "TLSv1.3"


async def test_untrusted_ca_is_refused_naming_the_endpoint(tls_server: ThreadedServer) -> None:
    async with ConnectionManager(
        policy=TlsPolicy(cadata=trustme.CA().cert_pem.bytes().decode())
    ) as mgr:
        with pytest.raises(CertificateVerificationError) as info:
            async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5):
                pass
        assert f"tls://localhost:{tls_server.port}" in str(info.value)
        assert info.value.endpoint == f"tls://localhost:{tls_server.port}"
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


async def test_wrong_hostname_is_refused(
    tls_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        with pytest.raises(CertificateVerificationError, match=r"mismatch|match"):
            async with mgr.open_stream(
                "127.0.0.1", tls_server.port, tls=True, server_hostname="other.test", timeout=5
            ):
                pass


async def test_pins(
    tls_server: ThreadedServer, trusted: Callable[..., TlsPolicy], server_cert: trustme.LeafCert
) -> None:
    der = ssl.PEM_cert_to_DER_cert(server_cert.cert_chain_pems[0].bytes().decode())
    good = hashlib.sha256(der).hexdigest()
    async with ConnectionManager(policy=trusted(pins=frozenset({good}))) as mgr:
        async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5) as s:
            assert s.tls is not None and s.tls.peer_cert_sha256 == good
            sp = s.service_point
            assert sp.certificate == der
    before = len(tls_server.record.received)
    async with ConnectionManager(policy=trusted(pins=frozenset({"0" * 64}))) as mgr:
        with pytest.raises(PinMismatchError, match=good):
            async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5):
                pass
    assert len(tls_server.record.received) == before


async def test_verify_false_warns_and_connects(tls_server: ThreadedServer) -> None:
    policy = TlsPolicy(verify=False, alpn=("stream-test",))
    async with ConnectionManager(policy=policy) as mgr:
        with pytest.warns(InsecurePolicyWarning):
            async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5) as s:
                assert s.tls is not None


async def test_validator_can_only_refuse(
    tls_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    seen: list[tuple[str, int]] = []

    def refuse(info: asyncsp.TlsInfo, der: bytes) -> bool:
        seen.append((info.version, len(der)))
        raise RuntimeError("not this one")

    async with ConnectionManager(policy=trusted(validator=refuse)) as mgr:
        with pytest.raises(CertificateVerificationError) as info:
            async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5):
                pass
    assert isinstance(info.value.__cause__, RuntimeError)
    assert seen and seen[0][0] == "TLSv1.3" and seen[0][1] > 100


async def test_refused_port_is_connect_error() -> None:
    port = free_port()
    async with ConnectionManager() as mgr:
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}") as info:
            async with mgr.open_stream("127.0.0.1", port, timeout=5):
                pass
        assert isinstance(info.value, ConnectionError)
        sp = mgr.find_service_point(f"tcp://127.0.0.1:{port}")
        assert sp.current_connections == 0


async def test_stalled_handshake_times_out(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    with ThreadedServer(server_context(server_cert), handshake=False) as stalled, fd_baseline():
        async with ConnectionManager(policy=trusted()) as mgr:
            with pytest.raises(asyncsp.TimeoutError, match="TLS handshake") as info:
                async with mgr.open_stream("localhost", stalled.port, tls=True, timeout=0.3):
                    pass
            assert isinstance(info.value, TimeoutError)
            sp = mgr.find_service_point(f"tls://localhost:{stalled.port}")
            assert sp.current_connections == 0


async def test_stalled_read_times_out_and_closes(plain_server: ThreadedServer) -> None:
    async with ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=0.2) as s:
            with pytest.raises(asyncsp.TimeoutError):
                await s.read(10)
            assert s.closed
            with pytest.raises(ConnectionClosedError):
                await s.read(1)
            assert (
                mgr.find_service_point(f"tcp://127.0.0.1:{plain_server.port}").current_connections
                == 0
            )


async def test_forty_streams_through_a_limit_of_two(
    tls_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    def slow_echo(conn: socket.socket, record: ServerRecord) -> None:
        echo_handler(conn, record)

    with ThreadedServer(tls_server.context, slow_echo) as server:
        async with ConnectionManager(policy=trusted(), default_connection_limit=2) as mgr:
            sp = mgr.find_service_point(f"tls://localhost:{server.port}")
            peak = 0

            async def one(n: int) -> bytes:
                nonlocal peak
                async with mgr.open_stream("localhost", server.port, tls=True, timeout=10) as s:
                    peak = max(peak, sp.current_connections)
                    s.write(b"%d" % n)
                    reply = await s.readexactly(5 + len(b"%d" % n))
                    await asyncio.sleep(0)
                    return reply

            replies = await asyncio.gather(*(one(n) for n in range(40)))
            assert replies == [b"echo:%d" % n for n in range(40)]
            assert peak <= 2
            assert sp.current_connections == 0
        assert server.record.peak_active <= 2
        assert server.record.connections == 40


async def test_cancelled_waiters_return_their_slots(
    plain_server: ThreadedServer,
) -> None:
    async with ConnectionManager(default_connection_limit=1) as mgr:
        sp = mgr.find_service_point(f"tcp://127.0.0.1:{plain_server.port}")
        holding = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
                holding.set()
                await release.wait()

        async def waiter() -> None:
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
                pytest.fail("a waiter got a slot while the holder had it")

        hold = asyncio.create_task(holder())
        await holding.wait()
        waiters = [asyncio.create_task(waiter()) for _ in range(20)]
        await wait_until(lambda: sp._pool.waiting == 20)
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert sp._pool.waiting == 0
        release.set()
        await hold
        assert sp.current_connections == 0
        # The slot is free again: the next stream opens at once.
        async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=1) as s:
            s.write(b"x")
            assert await s.readexactly(6) == b"echo:x"


async def test_cancelled_holder_returns_its_slot(plain_server: ThreadedServer) -> None:
    async with ConnectionManager(default_connection_limit=1) as mgr:
        inside = asyncio.Event()

        async def holder() -> None:
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5) as s:
                inside.set()
                await s.read(10)  # the server sends nothing: wait forever

        task = asyncio.create_task(holder())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sp = mgr.find_service_point(f"tcp://127.0.0.1:{plain_server.port}")
        assert sp.current_connections == 0
        async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=1):
            pass


async def test_closing_the_manager_fails_streams_and_waiters(plain_server: ThreadedServer) -> None:
    with fd_baseline():
        mgr = ConnectionManager(default_connection_limit=1)
        inside = asyncio.Event()

        async def reader() -> None:
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=30) as s:
                inside.set()
                await s.read(10)

        async def waiter() -> None:
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=30):
                pass

        r = asyncio.create_task(reader())
        await inside.wait()
        w = asyncio.create_task(waiter())
        sp = mgr.find_service_point(f"tcp://127.0.0.1:{plain_server.port}")
        await wait_until(lambda: sp._pool.waiting == 1)
        await mgr.aclose()
        results = await asyncio.wait_for(asyncio.gather(r, w, return_exceptions=True), 5)
        assert all(isinstance(e, ManagerClosedError) for e in results), results
        with pytest.raises(ManagerClosedError):
            async with mgr.open_stream("127.0.0.1", plain_server.port):
                pass


async def test_start_tls_upgrades_in_place(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    ctx = server_context(server_cert)

    def starttls_echo(conn: socket.socket, record: ServerRecord) -> None:
        assert conn.recv(100) == b"STARTTLS\r\n"
        conn.sendall(b"GO\r\n")
        tls = ctx.wrap_socket(conn, server_side=True)
        echo_handler(tls, record)
        tls.close()

    with ThreadedServer(None, starttls_echo) as server:
        async with ConnectionManager(policy=trusted()) as mgr:
            async with mgr.open_stream("localhost", server.port, timeout=5) as s:
                s.write(b"STARTTLS\r\n")
                assert await s.readline() == b"GO\r\n"
                info = await s.start_tls()
                assert info.version == "TLSv1.3"
                assert s.tls == info
                s.write(b"secret")
                assert await s.readexactly(11) == b"echo:secret"


async def test_start_tls_refuses_injected_plaintext(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    def injector(conn: socket.socket, record: ServerRecord) -> None:
        conn.recv(100)
        conn.sendall(b"GO\r\nINJECTED\r\n")
        conn.recv(100)

    with ThreadedServer(None, injector) as server:
        async with ConnectionManager(policy=trusted()) as mgr:
            async with mgr.open_stream("localhost", server.port, timeout=5) as s:
                s.write(b"STARTTLS\r\n")
                assert await s.readline() == b"GO\r\n"
                with pytest.raises(TlsError, match="before the TLS handshake"):
                    await s.start_tls()
                assert s.closed


async def test_overlong_line_is_read_limit_error(server_cert: trustme.LeafCert) -> None:
    def flood(conn: socket.socket, record: ServerRecord) -> None:
        conn.sendall(b"x" * (200 * 1024))
        conn.recv(10)

    with ThreadedServer(None, flood) as server:
        async with ConnectionManager() as mgr:
            async with mgr.open_stream("127.0.0.1", server.port, timeout=5) as s:
                with pytest.raises(ReadLimitError):
                    await s.readline()


async def test_peer_close_mid_readexactly(server_cert: trustme.LeafCert) -> None:
    def short(conn: socket.socket, record: ServerRecord) -> None:
        conn.sendall(b"abc")

    with ThreadedServer(None, short) as server:
        async with ConnectionManager() as mgr:
            async with mgr.open_stream("127.0.0.1", server.port, timeout=5) as s:
                with pytest.raises(ConnectionClosedError) as info:
                    await s.readexactly(10)
                assert info.value.partial == b"abc"


async def test_failed_handshakes_leave_no_file_descriptors(
    tls_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    untrusted = TlsPolicy(cadata=trustme.CA().cert_pem.bytes().decode())
    async with ConnectionManager(policy=untrusted) as mgr:
        with fd_baseline():
            for _ in range(100):
                with pytest.raises(CertificateVerificationError):
                    async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5):
                        pass
            await asyncio.sleep(0)


async def test_ipv6_loopback(
    server_cert: trustme.LeafCert, trusted: Callable[..., TlsPolicy]
) -> None:
    try:
        server = ThreadedServer(server_context(server_cert), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with server:
        async with ConnectionManager(policy=trusted()) as mgr:
            async with mgr.open_stream("::1", server.port, tls=True, timeout=5) as s:
                assert s.tls is not None
                assert s.service_point.address == f"tls://[::1]:{server.port}"


async def test_waiting_for_a_slot_is_bounded_by_the_timeout(plain_server: ThreadedServer) -> None:
    async with ConnectionManager(default_connection_limit=1) as mgr:
        async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
            with pytest.raises(asyncsp.TimeoutError, match="connection_limit=1"):
                async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=0.1):
                    pass
        sp = mgr.find_service_point(f"tcp://127.0.0.1:{plain_server.port}")
        assert sp.current_connections == 0 and sp._pool.waiting == 0


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize(
    ("ending", "seen"),
    [
        ("abort", "reset"),
        ("timeout", "reset"),
        ("manager closed", "reset"),
        ("aclose", "end of stream"),
    ],
)
async def test_an_interrupted_stream_is_reset_and_a_closed_one_ended(
    server_cert: trustme.LeafCert,
    trusted: Callable[..., TlsPolicy],
    tls: bool,
    ending: str,
    seen: str,
) -> None:
    """An abort sends RST, never FIN first: a peer must not take a cut-off stream for a whole
    one, nor hold its socket (blocked on a full window) for the FIN timeout."""
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        try:
            await reader.read()
        except ConnectionResetError:
            outcome.set_result("reset")
        else:
            outcome.set_result("end of stream")

    async with RawServer(script, server_context(server_cert) if tls else None) as server:
        mgr = ConnectionManager(policy=trusted())
        reading = asyncio.Event()

        async def use() -> None:
            async with mgr.open_stream(LOCAL, server.port, tls=tls, timeout=5) as s:
                assert await s.readline() == b"hello\n"  # nothing left unread: no RST for that
                if ending == "abort":
                    s.abort()
                elif ending == "timeout":
                    s.timeout = 0.05
                    with pytest.raises(asyncsp.TimeoutError):
                        await s.readline()
                elif ending == "manager closed":
                    reading.set()
                    with pytest.raises(ManagerClosedError):
                        await s.readline()

        user = asyncio.create_task(use())
        if ending == "manager closed":
            await reading.wait()
            await mgr.aclose()
        await user
        await mgr.aclose()
        assert await asyncio.wait_for(outcome, 5) == seen


async def take_turns(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """Answer each line from the client with b"hello\n" (a cue; its own reads come after)."""
    while await reader.readline():
        writer.write(b"hello\n")
        await writer.drain()


async def test_a_second_reader_is_refused_and_the_first_reads_on() -> None:
    async with RawServer(take_turns) as server, ConnectionManager() as mgr:
        async with mgr.open_stream(LOCAL, server.port, timeout=5) as s:
            first = asyncio.create_task(s.readline())
            await asyncio.sleep(0)  # one turn: the first reader waits for data
            for second in (s.read(1), s.readline(), s.readexactly(1), s.readuntil(b"o")):
                with pytest.raises(RuntimeError, match=f"another task is reading.*{server.port}"):
                    await second
            assert not s.closed
            s.write(b"go\n")
            assert await first == b"hello\n"


SECOND_READER = """
import asyncio, asyncsp

async def main():
    async def serve(reader, writer):
        await reader.readline()
        writer.write(b"hello\\n")
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with asyncsp.ConnectionManager() as mgr:
        async with mgr.open_stream("127.0.0.1", port, timeout=5) as s:
            first = asyncio.create_task(s.readline())
            await asyncio.sleep(0)
            try:
                await s.read(1)
            except RuntimeError as exc:
                print(type(exc).__name__)
            s.write(b"go\\n")
            print(await first)
    server.close()

asyncio.run(main())
"""


def test_a_second_reader_is_refused_under_python_optimised() -> None:
    result = run_python(SECOND_READER, check=False, options=("-O",))
    assert result.stdout.split() == ["RuntimeError", "b'hello\\n'"], result.stderr[-2000:]


async def test_negotiated_group_where_the_ssl_module_tells_it(
    tls_server: ThreadedServer, trusted: Callable[..., TlsPolicy]
) -> None:
    """The key-exchange group (a post-quantum hybrid with OpenSSL 3.5) is reported by Pythons
    whose `ssl` objects have ``group()``; before them it is None, never a guess."""
    async with ConnectionManager(policy=trusted()) as mgr:
        async with mgr.open_stream("localhost", tls_server.port, tls=True, timeout=5) as stream:
            assert stream.tls is not None
            ssl_object = stream.get_extra_info("ssl_object")
            assert ssl_object is not None
            if hasattr(ssl_object, "group"):
                assert stream.tls.group == ssl_object.group()
                assert isinstance(stream.tls.group, str) and stream.tls.group
            else:
                assert stream.tls.group is None


async def test_a_waiter_is_served_before_a_task_that_asks_again(
    plain_server: ThreadedServer,
) -> None:
    """A task that frees the only slot and at once asks for one again queues behind the task
    already waiting (else a busy worker wins every time and a waiter can time out while the
    endpoint keeps serving)."""
    order: list[str] = []
    held, release = asyncio.Event(), asyncio.Event()
    async with ConnectionManager(default_connection_limit=1) as mgr:
        sp = mgr.find_service_point(f"tcp://127.0.0.1:{plain_server.port}")

        async def busy() -> None:
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
                held.set()
                await release.wait()
            # The slot was just freed (and the waiter woken for it): ask again at once.
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
                order.append("again")

        async def waiter() -> None:
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
                order.append("waiter")

        worker = asyncio.create_task(busy())
        await held.wait()
        waiting = asyncio.create_task(waiter())
        await wait_until(lambda: sp._pool.waiting == 1)
        release.set()
        await asyncio.gather(worker, waiting)
        assert order == ["waiter", "again"]
        assert sp.current_connections == 0 and not sp._pool.queued


async def test_a_newcomer_behind_a_woken_waiter_takes_a_second_free_slot(
    plain_server: ThreadedServer,
) -> None:
    """A newcomer that queued behind a woken waiter while another slot was free is woken by
    that waiter once it has taken its own: it does not wait for a connection to close."""
    entered, done = asyncio.Event(), asyncio.Event()
    async with ConnectionManager(default_connection_limit=1) as mgr:
        sp = mgr.find_service_point(f"tcp://127.0.0.1:{plain_server.port}")

        async def waiter() -> None:
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
                entered.set()
                await done.wait()

        async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
            waiting = asyncio.create_task(waiter())
            await wait_until(lambda: sp._pool.waiting == 1)
            sp.connection_limit = 3  # two slots free; the one waiter is woken for one
            async with mgr.open_stream("127.0.0.1", plain_server.port, timeout=5):
                await entered.wait()
                assert sp.current_connections == 3
            done.set()
            await waiting
    assert sp.current_connections == 0
