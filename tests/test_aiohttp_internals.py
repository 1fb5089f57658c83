"""Every private aiohttp member asyncsp relies on, named once, with the shape it relies on.

CI runs this file against the oldest and the newest aiohttp release pyproject allows. A release
that renames, moves or reshapes one of these fails here, by name, before anything subtler
breaks; and a new reach into aiohttp's private members from asyncsp fails here until it is
added to `PRIVATE_MEMBERS` with a check of its shape.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import functools
import importlib
import inspect
import pkgutil
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import aiohttp.client_proto
import aiohttp.client_reqrep
import aiohttp.connector
import aiohttp.http
import pytest
from aiohttp import web

import asyncsp

PRIVATE_MEMBERS = {
    "_request": "ClientSession._request: the request coroutine without its context-manager "
    "wrapper (asyncsp/_http.py)",
    "_retry_connection": "ClientSession._retry_connection: turned off, asyncsp retries stale "
    "connections itself (asyncsp/_http_connector.py)",
    "_conns": "BaseConnector._conns: the idle pool, read to close idle connections "
    "(asyncsp/_http_connector.py) and by the _get override",
    "_keepalive_timeout": "BaseConnector._keepalive_timeout: read by the _get override",
    "_get": "BaseConnector._get: the pool lookup, overridden (asyncsp/_http_pool_connector.py)",
    "_cleanup": "BaseConnector._cleanup: the keep-alive expiry, overridden "
    "(asyncsp/_http_pool_connector.py)",
    "_factory": "BaseConnector._factory: makes each connection's protocol, replaced to count "
    "what it receives (asyncsp/_http_pool_connector.py)",
    "_create_connection": "TCPConnector._create_connection: the hook the CONNECT tunnel "
    "overrides (asyncsp/_http_tunnel.py), and the pool connector wraps to report each new "
    "connection (asyncsp/_http_pool_connector.py)",
}
"""Private member name -> what it is and where asyncsp uses it."""

SUBMODULE_NAMES = {
    ("aiohttp.client_proto", "ResponseHandler"),  # the pooled connection's protocol
    ("aiohttp.client_reqrep", "ClientRequest"),  # the tunnel hook's argument (type only)
    ("aiohttp.connector", "Connection"),  # what _get and ClientResponse.start see
    ("aiohttp.http", "RawResponseMessage"),  # ServerDisconnectedError.message after a start
}
"""Names asyncsp takes from aiohttp's submodules rather than from the ``aiohttp`` package."""

_CLASSES = (
    aiohttp.ClientSession,
    aiohttp.TCPConnector,
    aiohttp.ClientResponse,
    aiohttp.ClientTimeout,
    aiohttp.StreamReader,
    aiohttp.client_proto.ResponseHandler,
    aiohttp.client_reqrep.ClientRequest,
    aiohttp.connector.Connection,
)
"""The aiohttp classes whose objects asyncsp holds."""

_KEEPALIVE = 0.3


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _aiohttp_private_names() -> set[str]:
    names = {
        name
        for cls in _CLASSES
        for klass in inspect.getmro(cls)
        if klass.__module__.startswith("aiohttp")
        for name in vars(klass)
        if _private(name)
    }

    async def instance_names() -> set[str]:
        async with aiohttp.ClientSession() as session:
            assert session.connector is not None
            return {n for n in (*vars(session), *vars(session.connector)) if _private(n)}

    return names | asyncio.run(instance_names())


def _subclasses_aiohttp(cls: object) -> bool:
    return isinstance(cls, type) and any(
        klass.__module__.startswith("aiohttp") for klass in cls.__mro__[1:]
    )


def _asyncsp_modules() -> list[tuple[Any, Path, ast.Module]]:
    root = Path(asyncsp.__file__).parent
    found = []
    for info in pkgutil.iter_modules([str(root)]):
        path = root / f"{info.name}.py"
        if path.exists():
            module = importlib.import_module(f"asyncsp.{info.name}")
            found.append((module, path, ast.parse(path.read_text(encoding="utf-8"))))
    return found


def _own_names(cls: ast.ClassDef) -> set[str]:
    """Private names an asyncsp class (not an aiohttp subclass) defines for itself: its
    methods, class attributes, ``__slots__`` and ``self.`` assignments."""
    own: set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            own.add(node.name)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                own.add(target.id)
            elif (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                own.add(target.attr)
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)
            and isinstance(node.value, ast.Tuple | ast.List)
        ):
            own.update(str(e.value) for e in node.value.elts if isinstance(e, ast.Constant))
    return own


def _named_private(node: ast.AST) -> str | None:
    """The private name an expression reads or writes: ``x._name`` or ``getattr(x, "_name")``."""
    if isinstance(node, ast.Attribute) and _private(node.attr):
        return node.attr
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "setattr", "hasattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
        and _private(node.args[1].value)
    ):
        return node.args[1].value
    return None


def _submodule_name(node: ast.AST) -> list[tuple[str, str]]:
    """``from aiohttp.sub import Name`` and ``aiohttp.sub.Name`` as (module, name) pairs."""
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiohttp."):
        return [(node.module or "", alias.name) for alias in node.names]
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "aiohttp"
        and inspect.ismodule(getattr(aiohttp, node.value.attr, None))
    ):
        return [(f"aiohttp.{node.value.attr}", node.attr)]
    return []


def _private_aiohttp_uses() -> tuple[dict[str, list[str]], dict[tuple[str, str], list[str]]]:
    """Private aiohttp members asyncsp reads, writes or overrides, and the names it takes from
    aiohttp's submodules; each with where (file:line)."""
    own: set[str] = set()
    uses: dict[str, list[str]] = collections.defaultdict(list)
    imports: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for module, path, tree in _asyncsp_modules():
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ClassDef):
                if not _subclasses_aiohttp(getattr(module, node.name, None)):
                    own |= _own_names(node)
                    continue
                for item in node.body:  # an override of aiohttp's own method is a use
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and _private(
                        item.name
                    ):
                        uses[item.name].append(f"{path.name}:{item.lineno}")
            name = _named_private(node)
            if name is not None:
                uses[name].append(where)
            for pair in _submodule_name(node):
                imports[pair].append(where)
    aiohttp_names = _aiohttp_private_names()
    private = {
        name: sorted(set(where))
        for name, where in uses.items()
        if name in aiohttp_names and name not in own
    }
    return private, dict(imports)


# -- the list is complete ------------------------------------------------------------------


def test_asyncsp_uses_only_the_private_aiohttp_members_named_here() -> None:
    private, _ = _private_aiohttp_uses()
    unlisted = {name: where for name, where in private.items() if name not in PRIVATE_MEMBERS}
    unused = set(PRIVATE_MEMBERS) - set(private)
    assert not unlisted, f"private aiohttp members used but not listed here: {unlisted}"
    assert not unused, f"listed here but no longer used by asyncsp (drop them): {unused}"


def test_asyncsp_takes_only_these_names_from_aiohttp_submodules() -> None:
    _, imports = _private_aiohttp_uses()
    web_server = {key for key in imports if key[0] == "aiohttp.web"}  # the demo's server
    assert set(imports) - web_server == SUBMODULE_NAMES
    for module, name in SUBMODULE_NAMES:
        assert isinstance(getattr(importlib.import_module(module), name), type), (module, name)


# -- each member's shape -------------------------------------------------------------------


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_hooks_asyncsp_overrides_have_the_signatures_it_overrides_them_with() -> None:
    connector = aiohttp.TCPConnector
    assert inspect.iscoroutinefunction(connector._get)
    assert _parameters(connector._get) == ["self", "key", "traces"]
    assert not inspect.iscoroutinefunction(connector._cleanup)
    assert _parameters(connector._cleanup) == ["self"]
    assert inspect.iscoroutinefunction(connector._create_connection)
    assert _parameters(connector._create_connection) == ["self", "req", "traces", "timeout"]
    # aiohttp's own Unix-socket connector overrides the same hook.
    assert "_create_connection" in vars(aiohttp.UnixConnector)
    # Public, but overridden: TrackedResponse reads the connection before aiohttp releases it.
    assert inspect.iscoroutinefunction(aiohttp.ClientResponse.start)
    assert _parameters(aiohttp.ClientResponse.start) == ["self", "connection"]


def test_the_request_coroutine_takes_what_asyncsp_passes() -> None:
    request = aiohttp.ClientSession._request
    assert inspect.iscoroutinefunction(request)
    parameters = _parameters(request)
    assert parameters[:3] == ["self", "method", "str_or_url"]
    for option in ("allow_redirects", "headers", "data", "json", "params", "auth", "timeout"):
        assert option in parameters, option
    # The switch asyncsp turns off is the one this coroutine reads.
    assert "self._retry_connection" in inspect.getsource(request)


def test_the_constructor_options_asyncsp_passes_exist() -> None:
    """Public options, but not in every aiohttp: `socket_factory` came with 3.12."""
    connector = _parameters(aiohttp.TCPConnector.__init__)
    for option in (
        "ssl",
        "limit",
        "limit_per_host",
        "keepalive_timeout",
        "use_dns_cache",
        "ttl_dns_cache",
        "happy_eyeballs_delay",
        "socket_factory",
    ):
        assert option in connector, option
    session = _parameters(aiohttp.ClientSession.__init__)
    for option in ("connector", "connector_owner", "cookie_jar", "response_class", "trust_env"):
        assert option in session, option


async def test_the_protocol_factory_is_a_partial_of_the_response_handler() -> None:
    connector = aiohttp.TCPConnector()
    try:
        factory = connector._factory
        assert isinstance(factory, functools.partial)
        assert factory.func is aiohttp.client_proto.ResponseHandler
        assert factory.keywords == {"loop": asyncio.get_running_loop()} and not factory.args
    finally:
        await connector.close()
    # What the counting subclass overrides is aiohttp's own protocol method.
    assert "data_received" in vars(aiohttp.client_proto.ResponseHandler)


def test_response_handler_has_what_asyncsp_calls() -> None:
    handler = aiohttp.client_proto.ResponseHandler
    assert "loop" in _parameters(handler.__init__)  # the tunnel makes one: ResponseHandler(loop=)
    for method in ("is_connected", "force_close", "close", "connection_made"):
        assert callable(getattr(handler, method)), method
    assert isinstance(inspect.getattr_static(handler, "should_close"), property)


# -- and at work, against a loopback server -------------------------------------------------


class _Recorder(aiohttp.TCPConnector):
    """Counts the hooks asyncsp's connectors override, as aiohttp calls them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gets: list[aiohttp.client_proto.ResponseHandler | None] = []  # what each took
        self.created: list[tuple[Any, Any]] = []
        self.cleanups = 0
        self.cleaned = asyncio.Event()

    async def _get(self, key: Any, traces: list[Any]) -> aiohttp.connector.Connection | None:
        connection = await super()._get(key, traces)
        self.gets.append(connection.protocol if connection is not None else None)
        return connection

    async def _create_connection(
        self, req: Any, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.client_proto.ResponseHandler:
        self.created.append((req, timeout))
        return await super()._create_connection(req, traces, timeout)

    def _cleanup(self) -> None:
        self.cleanups += 1
        super()._cleanup()
        self.cleaned.set()


class _Response(aiohttp.ClientResponse):
    protocols: ClassVar[list[aiohttp.client_proto.ResponseHandler | None]] = []

    def start(self, connection: aiohttp.connector.Connection) -> Any:
        assert connection.transport is not None
        self.protocols.append(connection.protocol)
        return super().start(connection)


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def server_port() -> Any:
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    try:
        yield server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()


async def test_the_pool_and_its_hooks_at_work(server_port: int) -> None:
    _Response.protocols.clear()
    connector = _Recorder(keepalive_timeout=_KEEPALIVE, limit_per_host=0)
    assert connector._keepalive_timeout == _KEEPALIVE
    session = aiohttp.ClientSession(connector=connector, response_class=_Response)
    assert session._retry_connection is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an attribute ClientSession does not know warns
        session._retry_connection = False
    url = f"http://127.0.0.1:{server_port}/"
    try:
        before = time.monotonic()
        response = await session._request("GET", url, allow_redirects=False)
        assert await response.text() == "hello"
        response.release()
        after = time.monotonic()

        # A new connection: the lookup found nothing, the hook made one for the request.
        assert connector.gets == [None]
        [(req, timeout)] = connector.created
        assert req.url.raw_host == "127.0.0.1" and req.port == server_port
        assert hasattr(timeout, "sock_connect")
        [protocol] = _Response.protocols
        assert isinstance(protocol, aiohttp.client_proto.ResponseHandler)

        # The idle pool: a dict of deques of (protocol, monotonic release time), oldest first.
        pool = connector._conns
        assert isinstance(pool, dict) and len(pool) == 1
        [entries] = pool.values()
        assert isinstance(entries, collections.deque)
        [(pooled, released_at)] = entries
        assert pooled is protocol and isinstance(released_at, float)
        assert before <= released_at <= after
        assert pooled.is_connected() and not pooled.should_close
        assert pooled.transport is not None

        # Reused: the lookup hands out the pooled protocol, no new connection is made.
        response = await session._request("GET", url, allow_redirects=False)
        await response.read()
        response.release()
        assert connector.gets[-1] is protocol
        assert len(connector.created) == 1

        # aiohttp's keep-alive expiry runs through _cleanup and closes the idle connection.
        async with asyncio.timeout(10):
            while protocol.is_connected():
                connector.cleaned.clear()
                await connector.cleaned.wait()
        assert connector.cleanups >= 1
        assert not protocol.is_connected()
        assert not any(connector._conns.values())
    finally:
        await session.close()


async def test_the_pool_hands_out_its_oldest_open_connection_first(server_port: int) -> None:
    """asyncsp's pool lookup knows which connection a request takes before aiohttp's
    ``_get`` runs: the first entry of the deque, when it is open and not expiring."""
    _Response.protocols.clear()
    connector = _Recorder(keepalive_timeout=30, limit_per_host=0)
    session = aiohttp.ClientSession(connector=connector, response_class=_Response)
    url = f"http://127.0.0.1:{server_port}/"
    try:
        # Two requests in flight at once: two connections.
        first, second = await asyncio.gather(
            session._request("GET", url, allow_redirects=False),
            session._request("GET", url, allow_redirects=False),
        )
        assert len(connector.created) == 2
        for response in (second, first):  # pooled in this order: second is the oldest
            await response.read()
            response.release()
        [entries] = connector._conns.values()
        oldest, newest = (protocol for protocol, _ in entries)
        assert {oldest, newest} == set(_Response.protocols) and oldest is not newest
        for expected in (oldest, newest):
            response = await session._request("GET", url, allow_redirects=False)
            assert connector.gets[-1] is expected
            await response.read()  # pooled again, now behind the other one
        assert len(connector.created) == 2
    finally:
        await session.close()


async def test_the_pool_lookup_runs_before_the_request_first_waits(server_port: int) -> None:
    """asyncsp hands a request's claim to its pool lookup through the connector (no context
    variable on the hot path): that holds only while nothing in ``_request`` before the
    lookup waits (trace hooks aside, which asyncsp handles apart)."""
    connector = _Recorder(limit_per_host=0)
    session = aiohttp.ClientSession(connector=connector)
    url = f"http://127.0.0.1:{server_port}/"
    try:
        for pooled in (False, True):
            task = asyncio.create_task(session._request("GET", url, allow_redirects=False))
            await asyncio.sleep(0)  # the task's first step, up to its first wait
            assert len(connector.gets) == 1 + pooled
            response = await task
            await response.read()
            response.release()
        assert connector.gets[-1] is not None  # the second took the pooled connection
    finally:
        await session.close()
