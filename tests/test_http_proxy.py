"""HTTP and HTTPS through proxies: Debian's tinyproxy, and scripted proxies that misbehave.

tinyproxy runs as a child process on a free loopback port, from the configuration template in
``tests/tinyproxy/``; its log (stderr) tells what it saw. The scripted proxies are raw asyncio
servers in the test's loop: they answer CONNECT as a test needs (407, 502, bytes after the 200,
nothing at all) and, when they open the tunnel, relay bytes to the real origin.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import pathlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest
import trustme

import asyncsp
from asyncsp import (
    CertificateVerificationError,
    ConnectionManager,
    HttpError,
    ManagerClosedError,
    PinMismatchError,
    SecurityProtocol,
    TlsError,
)
from asyncsp._errors import ProxyError

from .servers import LOCAL, RawServer, fd_baseline, server_context
from .test_http_support import Trusted, WebServer, settled

TEMPLATE = pathlib.Path(__file__).with_name("tinyproxy") / "tinyproxy.conf.template"
TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
USER, PASSWORD = "alice", "proxy-Pa55word"
TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
READY = "Accepting connections"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


MAX_CHAIN = 100
"""More exceptions than any chain asyncsp raises holds: a walk that reaches it is a failure."""


def shown(exc: BaseException) -> str:
    """Everything a traceback, a logger, or an error tracker that walks and serialises the
    chain would show: the str, repr, args and attributes of the error and of every exception
    it reaches, through causes and contexts alike (suppressed or not), args and attributes."""
    text = "".join(traceback.format_exception(exc))
    seen: set[int] = set()
    pending = [exc]
    while pending:
        link = pending.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        assert len(seen) < MAX_CHAIN, "the chain does not end"
        attributes = vars(link)
        text += f"{link!s}\n{link!r}\n{link.args!r}\n{attributes!r}\n"
        linked = (link.__cause__, link.__context__, *link.args, *attributes.values())
        pending += [other for other in linked if isinstance(other, BaseException)]
        if isinstance(link, BaseExceptionGroup):
            pending += link.exceptions
    return text


def assert_no_credentials(exc: BaseException) -> None:
    text = shown(exc)
    assert PASSWORD not in text and TOKEN not in text, text


# -- tinyproxy -------------------------------------------------------------------------------


class Tinyproxy:
    """Debian's tinyproxy in the foreground on a free loopback port; stopped by its PID."""

    def __init__(self, directory: pathlib.Path, extra: str = "") -> None:
        self.directory = directory
        self.extra = extra
        self.port = 0
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}{LOCAL}:{self.port}"

    def __enter__(self) -> Tinyproxy:
        for _ in range(3):  # another process may take the free port first
            self.port = free_port()
            config = self.directory / f"tinyproxy-{self.port}.conf"
            config.write_text(TEMPLATE.read_text().format(port=self.port, extra=self.extra))
            self._process = subprocess.Popen(
                [TINYPROXY, "-d", "-c", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
            if self.wait_for(READY, timeout=10):
                return self
            self.__exit__()
        raise RuntimeError("tinyproxy did not start:\n" + "".join(self.lines))

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()  # by PID: this child, and nothing else
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if process is not None and process.stdout is not None:
            process.stdout.close()

    def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<exited>")
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 5) -> bool:
        """Whether a log line containing *text* arrives within *timeout* seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                if self.lines and self.lines[-1] == "<exited>":
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    @property
    def requests(self) -> list[str]:
        """The request lines tinyproxy logged ("CONNECT 127.0.0.1:443 HTTP/1.1", ...)."""
        marker = "): "
        with self._changed:
            return [
                line.split(marker, 1)[1].strip()
                for line in self.lines
                if "Request (file descriptor" in line and marker in line
            ]


@pytest.fixture
def tinyproxy(tmp_path: pathlib.Path) -> Iterator[Tinyproxy]:
    if not shutil.which("tinyproxy") and not pathlib.Path(TINYPROXY).exists():
        pytest.skip("tinyproxy is not installed (Debian package 'tinyproxy'; .ci/run installs it)")
    with Tinyproxy(tmp_path) as proxy:
        yield proxy


@pytest.fixture
def tinyproxy_with_auth(tmp_path: pathlib.Path) -> Iterator[Tinyproxy]:
    if not shutil.which("tinyproxy") and not pathlib.Path(TINYPROXY).exists():
        pytest.skip("tinyproxy is not installed (Debian package 'tinyproxy'; .ci/run installs it)")
    with Tinyproxy(tmp_path, extra=f"BasicAuth {USER} {PASSWORD}") as proxy:
        yield proxy


# -- through tinyproxy -----------------------------------------------------------------------


async def test_plain_http_goes_through_the_proxy_in_absolute_form(
    tinyproxy: Tinyproxy, plain: WebServer
) -> None:
    async with ConnectionManager(proxy=tinyproxy.url()) as mgr:
        response = await mgr.get(plain.url("/headers"))
        assert response.status == 200 and response.tls is None
        sp = response.service_point
        assert sp.proxy == tinyproxy.url() and sp is mgr.find_service_point(plain.url())
        assert sp is not mgr.find_service_point(plain.url(), proxy=None)
        assert mgr.find_service_point(plain.url(), proxy=None).stats.requests == 0
        assert sp.stats.requests == 1
    assert tinyproxy.wait_for(f"GET {plain.url('/headers')} HTTP/1.1")
    assert plain.seen.requests == 1


@pytest.mark.parametrize("version", [SecurityProtocol.TLS12, SecurityProtocol.TLS13])
async def test_https_tunnels_with_the_policy_end_to_end(
    tinyproxy: Tinyproxy,
    https: WebServer,
    server_cert: trustme.LeafCert,
    trusted: Trusted,
    version: SecurityProtocol,
) -> None:
    leaf = ssl.PEM_cert_to_DER_cert(server_cert.cert_chain_pems[0].bytes().decode())
    seen: list[asyncsp.TlsInfo] = []

    def validator(info: asyncsp.TlsInfo, der: bytes) -> bool:
        seen.append(info)
        return der == leaf

    policy = trusted(protocols=version, validator=validator)
    async with ConnectionManager(policy=policy, proxy=tinyproxy.url()) as mgr:
        first = await mgr.get(https.url())
        assert await first.text() == "hello"
        assert first.tls is not None and first.tls.protocol is version
        # The origin's certificate, not anything of the proxy's (which has none).
        assert first.tls.peer_cert_sha256 == hashlib.sha256(leaf).hexdigest()
        sp = first.service_point
        assert sp.proxy == tinyproxy.url() and sp.certificate == leaf
        sp.connection_lease_timeout = 0.0  # the next request opens a new tunnel ...
        second = await mgr.get(https.url())
        # ... and resumes the session the through-proxy service point cached.
        assert second.tls is not None and second.tls.session_reused
        assert sp.stats.tls_handshakes == 1 and sp.stats.session_resumptions == 1
        assert sp.stats.versions == {first.tls.version: 2}
    assert [info.session_reused for info in seen] == [False, True]
    assert tinyproxy.wait_for(f"CONNECT {LOCAL}:{https.port} HTTP/1.1")
    # The proxy saw only CONNECT lines: the request itself travelled inside TLS.
    assert tinyproxy.requests == [f"CONNECT {LOCAL}:{https.port} HTTP/1.1"] * 2
    assert https.seen.requests == 2 and https.seen.hosts == [LOCAL, LOCAL]


async def test_tunnelled_connections_are_verified_like_direct_ones(
    tinyproxy: Tinyproxy, server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    stranger = trustme.CA().issue_cert("localhost", LOCAL)
    async with (
        WebServer(server_context(stranger)) as untrusted,
        WebServer(server_context(server_cert)) as pinned,
        ConnectionManager(policy=trusted(), proxy=tinyproxy.url()) as mgr,
    ):
        with pytest.raises(CertificateVerificationError, match="unable to get local issuer"):
            await mgr.get(untrusted.url())
        mgr.find_service_point(pinned.url()).policy = trusted(pins=frozenset({"ab" * 32}))
        with pytest.raises(PinMismatchError):
            await mgr.get(pinned.url())
        assert untrusted.seen.requests == pinned.seen.requests == 0
        for url in (untrusted.url(), pinned.url()):
            assert mgr.find_service_point(url).current_connections == 0


async def test_credentials_reach_the_proxy_and_nothing_else(
    tinyproxy_with_auth: Tinyproxy, https: WebServer, plain: WebServer, trusted: Trusted
) -> None:
    proxy = tinyproxy_with_auth.url(f"{USER}:{PASSWORD}@")
    async with ConnectionManager(policy=trusted(), proxy=proxy) as mgr:
        assert await (await mgr.get(https.url())).text() == "hello"
        assert await (await mgr.get(plain.url())).text() == "hello"
        sp = mgr.find_service_point(https.url())
        for text in (repr(mgr), repr(sp), str(sp.proxy), str(mgr.proxy)):
            assert PASSWORD not in text and TOKEN not in text
        assert sp.proxy == mgr.proxy == tinyproxy_with_auth.url()
    # Inside the tunnel the origin never sees them.
    assert "Proxy-Authorization" not in https.seen.headers[0]


async def test_missing_or_wrong_credentials_are_refused_without_showing_them(
    tinyproxy_with_auth: Tinyproxy, https: WebServer, plain: WebServer, trusted: Trusted
) -> None:
    async with ConnectionManager(policy=trusted(), proxy=tinyproxy_with_auth.url()) as mgr:
        with pytest.raises(ProxyError, match="407 Proxy Authentication Required") as missing:
            await mgr.get(https.url())
        assert missing.value.status == 407 and "wants credentials" in str(missing.value)
        # Plain HTTP goes to the proxy as a request: its 407 is the response.
        assert (await mgr.get(plain.url())).status == 407
    wrong = tinyproxy_with_auth.url(f"{USER}:{PASSWORD}-not@")
    async with ConnectionManager(policy=trusted(), proxy=wrong) as mgr:
        with pytest.raises(ProxyError) as caught:
            await mgr.get(https.url())
        error = caught.value
        # tinyproxy answers wrong credentials with 401 (407 means none were given).
        assert error.status == 401 and error.proxy == tinyproxy_with_auth.url()
        assert "401" in str(error) and tinyproxy_with_auth.url() in str(error)
        assert "check the user and password" in str(error)
        assert isinstance(error, asyncsp.ConnectError) and isinstance(error, ConnectionError)
        assert_no_credentials(error)
    assert https.seen.requests == plain.seen.requests == 0


async def test_trust_env_reads_the_proxy_and_no_proxy(
    tinyproxy: Tinyproxy,
    https: WebServer,
    server_cert: trustme.LeafCert,
    trusted: Trusted,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url())
    monkeypatch.setenv("no_proxy", "localhost")
    async with (
        WebServer(server_context(server_cert), host="localhost") as exempt,
        ConnectionManager(policy=trusted(), trust_env=True) as mgr,
    ):
        via = await mgr.get(https.url())
        direct = await mgr.get(exempt.url())
        assert via.service_point.proxy == tinyproxy.url()
        assert direct.service_point.proxy is None
        assert direct.tls is not None and via.tls is not None
    async with ConnectionManager(policy=trusted()) as ignoring:  # trust_env is off by default
        assert (await ignoring.get(https.url())).service_point.proxy is None
    assert tinyproxy.requests == [f"CONNECT {LOCAL}:{https.port} HTTP/1.1"]


# -- scripted proxies ------------------------------------------------------------------------

Script = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedProxy(RawServer):
    """A raw proxy on loopback: reads each request head, then runs ``script(head, r, w)``."""

    def __init__(self, script: Script) -> None:
        super().__init__(self._proxy)
        self.proxy_script = script
        self.got_head = asyncio.Event()

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}{LOCAL}:{self.port}"

    async def _proxy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        head = await self.read_head(reader)
        self.got_head.set()
        await self.proxy_script(head, reader, writer)


def answer(reply: bytes) -> Script:
    """Answer CONNECT with *reply*, then close."""

    async def script(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(reply)
        await w.drain()

    return script


def tunnel(*, inject: bytes = b"", inject_after_hello: bytes = b"") -> Script:
    """Open the tunnel to the CONNECT target and relay; *inject* rides with the 200 (one
    write), *inject_after_hello* goes out once the client's ClientHello has arrived."""

    async def script(head: bytes, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        target = head.split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        try:
            w.write(b"HTTP/1.1 200 Connection established\r\n\r\n" + inject)
            hello = await reader.read(65536)
            if inject_after_hello:
                w.write(inject_after_hello)
            up_writer.write(hello)
            await asyncio.gather(relay(reader, up_writer), relay(up_reader, w))
        finally:
            up_writer.close()  # also when the client left before its hello

    return script


async def relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    finally:
        sink.close()


async def stall(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.Event().wait()  # cancelled when the proxy closes


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="p"\r\nContent-Length: 0\r\n\r\n',
            407,
        ),
        (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad", 502),
        (b"HTTP/1.0 302 Found\r\nLocation: http://elsewhere/\r\n\r\n", 302),
    ],
)
async def test_connect_answered_without_2xx_is_a_proxy_error(
    https: WebServer, trusted: Trusted, reply: bytes, status: int
) -> None:
    with fd_baseline():
        async with ScriptedProxy(answer(reply)) as proxy:
            credentials = f"{USER}:{PASSWORD}@"
            async with ConnectionManager(policy=trusted(), proxy=proxy.url(credentials)) as mgr:
                with pytest.raises(ProxyError) as caught:
                    await mgr.get(https.url(), timeout=5)
                await settled(mgr, https.url())
    error = caught.value
    assert error.status == status and error.proxy == proxy.url()
    assert f"{status}" in str(error) and proxy.url() in str(error) and https.url("") in str(error)
    assert_no_credentials(error)
    # The credentials went to the proxy, in the CONNECT request, as Basic credentials.
    assert proxy.heads == [
        f"CONNECT {LOCAL}:{https.port} HTTP/1.1\r\nHost: {LOCAL}:{https.port}\r\n"
        f"Proxy-Authorization: Basic {TOKEN}\r\n\r\n".encode()
    ]


async def test_bytes_after_the_200_are_refused(https: WebServer, trusted: Trusted) -> None:
    # Without the check this request succeeds: aiohttp's own tunnel drops such bytes unseen.
    with fd_baseline():
        async with ScriptedProxy(tunnel(inject=b"HTTP/1.1 200 OK\r\n\r\nforged")) as proxy:
            async with ConnectionManager(policy=trusted(), proxy=proxy.url()) as mgr:
                with pytest.raises(ProxyError, match="after its 200") as caught:
                    await mgr.get(https.url(), timeout=5)
                assert caught.value.status == 200
                await settled(mgr, https.url())
    assert https.seen.requests == 0


async def test_bytes_that_slip_past_the_check_fail_the_handshake(
    https: WebServer, trusted: Trusted
) -> None:
    async with ScriptedProxy(tunnel(inject_after_hello=b"HTTP/1.1 200 OK\r\n\r\n")) as proxy:
        async with ConnectionManager(policy=trusted(), proxy=proxy.url()) as mgr:
            with pytest.raises(TlsError):
                await mgr.get(https.url(), timeout=5)
    assert https.seen.requests == 0


async def test_a_clean_scripted_tunnel_works(https: WebServer, trusted: Trusted) -> None:
    # The control for the two tests above: the same relay without injected bytes.
    async with ScriptedProxy(tunnel()) as proxy:
        async with ConnectionManager(policy=trusted(), proxy=proxy.url()) as mgr:
            assert await (await mgr.get(https.url(), timeout=5)).text() == "hello"


@pytest.mark.parametrize(
    ("reply", "complaint"),
    [
        (b"", "closed the connection before answering CONNECT"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "something other than HTTP"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"x" * 70000 + b"\r\n\r\n", "more than"),
    ],
)
async def test_broken_answers_to_connect(
    https: WebServer, trusted: Trusted, reply: bytes, complaint: str
) -> None:
    async with ScriptedProxy(answer(reply)) as proxy:
        async with ConnectionManager(policy=trusted(), proxy=proxy.url()) as mgr:
            with pytest.raises(ProxyError, match=complaint):
                await mgr.get(https.url(), timeout=5)


async def test_a_stalled_proxy_times_out(https: WebServer, trusted: Trusted) -> None:
    with fd_baseline():
        async with ScriptedProxy(stall) as proxy:
            async with ConnectionManager(policy=trusted(), proxy=proxy.url()) as mgr:
                with pytest.raises(asyncsp.TimeoutError, match=proxy.url()):
                    await mgr.get(https.url(), timeout=0.3)
                step = aiohttp.ClientTimeout(total=5, sock_connect=0.3)
                with pytest.raises(asyncsp.TimeoutError, match="did not answer CONNECT"):
                    await mgr.get(https.url(), timeout=step)
                await settled(mgr, https.url())
            assert len(proxy.heads) == 2


async def test_unreachable_proxy_is_a_proxy_error(
    https: WebServer, plain: WebServer, trusted: Trusted
) -> None:
    unused = f"http://{USER}:{PASSWORD}@{LOCAL}:{free_port()}"
    async with ConnectionManager(policy=trusted(), proxy=unused) as mgr:
        for url in (https.url(), plain.url()):
            with pytest.raises(ProxyError, match="cannot connect to the proxy") as caught:
                await mgr.get(url, timeout=5)
            assert_no_credentials(caught.value)
            await settled(mgr, url)


@pytest.mark.parametrize(
    ("reply", "complaint"),
    [
        (b"HTTP/1.1 2x0 nonsense\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "incomplete"),
    ],
    ids=["malformed head", "short body"],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["read", "streamed"])
async def test_http_errors_through_a_proxy_never_show_its_credentials(
    reply: bytes, complaint: str, streamed: bool
) -> None:
    # aiohttp's ClientResponseError quotes the request headers (Proxy-Authorization included)
    # in its repr: such a cause is withheld, from __cause__ and __context__ alike.
    async with ScriptedProxy(answer(reply)) as proxy:
        async with ConnectionManager(proxy=proxy.url(f"{USER}:{PASSWORD}@")) as mgr:
            with pytest.raises(HttpError, match=complaint) as caught:
                if streamed:
                    async with mgr.request("GET", "http://origin.test/", timeout=5) as response:
                        await response.content.read()
                else:
                    await mgr.get("http://origin.test/", timeout=5)
    assert_no_credentials(caught.value)
    assert proxy.heads[0].startswith(b"GET http://origin.test/ HTTP/1.1\r\n")
    assert f"Proxy-Authorization: Basic {TOKEN}".encode() in proxy.heads[0]


async def test_through_proxy_service_points_keep_their_own_limit(
    https: WebServer, trusted: Trusted
) -> None:
    async with ScriptedProxy(tunnel()) as proxy:
        async with ConnectionManager(policy=trusted(), proxy=proxy.url()) as mgr:
            via = mgr.find_service_point(https.url())
            direct = mgr.find_service_point(https.url(), proxy=None)
            via.connection_limit = 2
            responses = await asyncio.gather(*(mgr.get(https.url("/work")) for _ in range(8)))
            assert {r.status for r in responses} == {200}
            assert {r.service_point for r in responses} == {via}
            assert via.stats.requests == 8 and 1 <= via.stats.connections_opened <= 2
            assert direct.stats.requests == 0 and direct.current_connections == 0
            assert f"via {proxy.url()}" in repr(via)
    assert proxy.sockets.peak <= 2 and https.seen.peak_open <= 2


async def test_closing_the_manager_ends_a_stalled_connect(
    https: WebServer, trusted: Trusted
) -> None:
    async with ScriptedProxy(stall) as proxy:
        mgr = ConnectionManager(policy=trusted(), proxy=proxy.url())
        request = asyncio.ensure_future(mgr.get(https.url(), timeout=30))
        await proxy.got_head.wait()
        started = time.monotonic()
        await mgr.aclose()
        with pytest.raises(ManagerClosedError):
            await request
        assert time.monotonic() - started < 5


def test_tunnel_under_uvloop(server_cert: trustme.LeafCert, trusted: Trusted) -> None:
    uvloop = pytest.importorskip("uvloop")
    policy = trusted()

    async def run() -> tuple[str | None, str]:
        async with (
            WebServer(server_context(server_cert)) as origin,
            ScriptedProxy(tunnel()) as proxy,
            ConnectionManager(policy=policy, proxy=proxy.url()) as mgr,
        ):
            response = await mgr.get(origin.url(), timeout=5)
            async with ScriptedProxy(tunnel(inject=b"x")) as bad:
                async with ConnectionManager(policy=policy, proxy=bad.url()) as other:
                    with pytest.raises(ProxyError) as caught:
                        await other.get(origin.url(), timeout=5)
            return (response.tls.version if response.tls else None), str(caught.value)

    version, refused = uvloop.run(run())
    assert version == "TLSv1.3" and "after its 200" in refused


def test_bytes_waiting_in_the_socket_are_seen_and_left_in_place() -> None:
    from asyncsp._http_tunnel import _bytes_waiting

    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        assert not _bytes_waiting(ours)
        theirs.sendall(b"injected")
        assert _bytes_waiting(ours)
        assert ours.recv(100) == b"injected"  # peeked, not taken


def test_the_aiohttp_hook_the_tunnel_uses_is_there() -> None:
    """The tunnel overrides the hook aiohttp's own Unix and named-pipe connectors override."""
    import inspect

    hook = inspect.signature(aiohttp.TCPConnector._create_connection)
    assert list(hook.parameters) == ["self", "req", "traces", "timeout"]
    assert "_create_connection" in vars(aiohttp.UnixConnector)


async def test_the_tunnel_reuses_the_proxy_addresses_until_a_connect_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proxy's addresses are resolved, cached and invalidated as a service point's are;
    every socket comes from the connector's factory."""
    from asyncsp._http_tunnel import Tunnel
    from asyncsp._proxy import ProxyRoute
    from asyncsp._sockets import SocketOptions

    target = [0]  # the port the proxy's name resolves to

    async def listen() -> asyncio.Server:
        server = await asyncio.start_server(lambda r, w: w.close(), LOCAL, 0)
        target[0] = server.sockets[0].getsockname()[1]
        return server

    lookups: list[str] = []

    async def getaddrinfo(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        lookups.append(host)
        if host != "proxy.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (LOCAL, target[0]))]

    made: list[socket.socket] = []

    def make_socket(addr_info: tuple[object, ...]) -> socket.socket:
        made.append(SocketOptions().create_socket(addr_info[0]))  # type: ignore[arg-type]
        return made[-1]

    def via(proxy: str) -> Tunnel:
        return Tunnel(
            route=ProxyRoute.parse(proxy),
            endpoint="https://origin.test:443",
            context=ssl.create_default_context(),
            make_socket=make_socket,
            dns_refresh_timeout=60,
        )

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    tunnel = via("http://proxy.test:3128")
    async with await listen():
        for _ in range(2):
            with await tunnel._connect(5) as sock:
                assert sock is made[-1]
        assert lookups == ["proxy.test"] and len(made) == 2
    # The proxy stops answering at the cached address and moves: one failure, then a lookup.
    with pytest.raises(ProxyError, match="cannot connect to the proxy http://proxy"):
        await tunnel._connect(5)
    assert len(lookups) == 1 and made[-1].fileno() == -1
    async with await listen():
        with await tunnel._connect(5):
            pass
    assert lookups == ["proxy.test"] * 2

    unknown = via("http://nowhere.test:3128")
    with pytest.raises(ProxyError, match="cannot resolve the proxy http://nowhere") as caught:
        await unknown._connect(5)
    assert isinstance(caught.value.__cause__, socket.gaierror)
