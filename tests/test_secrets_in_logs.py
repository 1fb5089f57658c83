"""No secret reaches a log record or a trace event, at any level, in any scenario that uses one.

Each scenario runs with every asyncsp logger at DEBUG and a hook that keeps every event; then
each record's message, arguments and exception text, and each event's repr, are searched for
the secrets the scenario used (and the encodings they travel in: AUTH PLAIN, LOGIN and Basic
are base64). Failures are part of the scenarios: a refused password is logged too, and the
error it raises is searched with its whole chain (str, repr, args, cause and context, as a
traceback shows them). A message's subject and body are secrets of the same kind.
"""

from __future__ import annotations

import base64
import logging
import pathlib
import traceback
from collections.abc import Iterator

import pytest
import trustme
from OpenSSL import SSL

import asyncsp
from asyncsp import ConnectionManager, TraceEvent

from . import test_ftp, test_http_proxy, test_smtp
from .servers import LOCAL
from .test_http_proxy import Tinyproxy
from .test_http_support import Trusted, WebServer

AUTHORIZATION = "Bearer http-T0ken-4f9a2c"
COOKIE = "c00kie-9d3e71"
SET_BY_CALLER = "sess10n-77be0a"
SUBJECT = "subj3ct-5be21c"
BODY = "b0dy-line-0a77e3"

tinyproxy_with_auth = test_http_proxy.tinyproxy_with_auth  # the fixture, used here too


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Watched:
    """Every asyncsp record at DEBUG and every trace event of the managers made through it."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.events: list[TraceEvent] = []
        self.errors: list[BaseException] = []

    def manager(self, **kwargs: object) -> ConnectionManager:
        return ConnectionManager(trace=[self.events.append], **kwargs)  # type: ignore[arg-type]

    def texts(self) -> Iterator[str]:
        formatter = logging.Formatter()
        for record in self.caplog.records:
            yield record.getMessage()
            yield repr(record.args)
            if record.exc_info:
                yield formatter.formatException(record.exc_info)
            if record.exc_text:
                yield record.exc_text
        for event in self.events:
            yield repr(event)
        for error in self.errors:
            yield "".join(traceback.format_exception(error))  # cause and context included
            seen: BaseException | None = error
            while seen is not None:
                yield repr(seen)
                yield repr(seen.args)
                seen = seen.__cause__ or seen.__context__

    def assert_clean(self, *secrets: str) -> None:
        assert self.caplog.records and self.events, "the scenario logged nothing to search"
        for text in self.texts():
            for secret in secrets:
                assert secret not in text, f"{secret!r} in {text!r}"

    def loggers(self) -> set[str]:
        return {record.name for record in self.caplog.records}


@pytest.fixture
def watched(caplog: pytest.LogCaptureFixture) -> Iterator[Watched]:
    with caplog.at_level(logging.DEBUG, logger="asyncsp"):
        yield Watched(caplog)


async def test_smtp_auth(watched: Watched, server_cert: trustme.LeafCert, trusted: Trusted) -> None:
    user, password = test_smtp.USER, test_smtp.PASSWORD
    for exclude in ((), ("PLAIN",)):  # AUTH PLAIN, then AUTH LOGIN
        # The manager (and its pooled session) closes before the server: from Python 3.12 on,
        # aiosmtpd's stop waits for every connection to end.
        with test_smtp.mail_server(server_cert, exclude=exclude) as server:
            async with watched.manager(policy=trusted()) as mgr:
                async with mgr.smtp(
                    LOCAL, server.port, username=user, password=password, timeout=5
                ) as client:
                    mail = test_smtp.message(Subject=SUBJECT)
                    mail.set_content(BODY)
                    await client.send_message(mail)
                with pytest.raises(asyncsp.SmtpError) as refused:
                    async with mgr.smtp(
                        LOCAL, server.port, username=user, password="wrong-" + password, timeout=5
                    ):
                        pass
                watched.errors.append(refused.value)
        assert server.box.auths[-2:] == ["LOGIN" if exclude else "PLAIN"] * 2
    assert "asyncsp.smtp" in watched.loggers()
    content = server.box.messages[0][2]  # the message reached the server whole
    assert SUBJECT.encode() in content and BODY.encode() in content
    watched.assert_clean(
        SUBJECT,
        BODY,
        password,
        b64(f"\0{user}\0{password}"),
        b64(password),
        b64(f"\0{user}\0wrong-{password}"),
        b64(f"wrong-{password}"),
    )


async def test_ftp_login(
    watched: Watched, tmp_path: pathlib.Path, server_cert: trustme.LeafCert, trusted: Trusted
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "payload.bin").write_bytes(b"data")
    password = test_ftp.PASSWORD
    with test_ftp.PyFtpd(root, server_cert, SSL.TLS1_3_VERSION) as ftpd:
        async with watched.manager(policy=trusted()) as mgr:
            async with mgr.ftp(
                "localhost", ftpd.port, username="alice", password=password, timeout=5
            ) as ftp:
                assert await ftp.retrieve("payload.bin") == b"data"
            with pytest.raises(asyncsp.FtpError) as refused:
                async with mgr.ftp(
                    "localhost", ftpd.port, username="alice", password="x" + password, timeout=5
                ):
                    pass
            watched.errors.append(refused.value)
    assert {"asyncsp.ftp", "asyncsp.tls", "asyncsp.pool"} <= watched.loggers()
    assert any("PASS" in record.getMessage() for record in watched.caplog.records)
    watched.assert_clean(password)


async def test_http_authorization_and_cookies(
    watched: Watched, https: WebServer, plain: WebServer, trusted: Trusted
) -> None:
    headers = {"Authorization": AUTHORIZATION, "Cookie": f"sid={COOKIE}"}
    async with watched.manager(policy=trusted()) as mgr:
        response = await mgr.get(
            https.url("/headers"), headers=headers, cookies={"s": SET_BY_CALLER}
        )
        assert response.status == 200 and AUTHORIZATION in await response.text()
        # A redirect to another origin (the same server by name) drops them; its new
        # connection is logged too.
        to = f"https://localhost:{https.port}/headers"
        redirected = await mgr.get(https.url(f"/redirect?to={to}&status=307"), headers=headers)
        assert redirected.status == 200 and AUTHORIZATION not in await redirected.text()
        assert (await mgr.get(plain.url("/headers"), headers=headers)).status == 200
    assert {"asyncsp.http", "asyncsp.tls"} <= watched.loggers()
    watched.assert_clean(AUTHORIZATION, "http-T0ken-4f9a2c", COOKIE, SET_BY_CALLER)


async def test_a_proxy_with_credentials(
    watched: Watched,
    tinyproxy_with_auth: Tinyproxy,
    https: WebServer,
    plain: WebServer,
    trusted: Trusted,
) -> None:
    user, password = test_http_proxy.USER, test_http_proxy.PASSWORD
    good = tinyproxy_with_auth.url(f"{user}:{password}@")
    async with watched.manager(policy=trusted(), proxy=good) as mgr:
        assert (await mgr.get(https.url())).status == 200
        assert (await mgr.get(plain.url())).status == 200
    wrong = tinyproxy_with_auth.url(f"{user}:{password}-not@")
    async with watched.manager(policy=trusted(), proxy=wrong) as mgr:
        with pytest.raises(asyncsp.ProxyError) as refused:
            await mgr.get(https.url())
        watched.errors.append(refused.value)
    assert {"asyncsp.proxy", "asyncsp.http"} <= watched.loggers()
    assert any("with credentials" in record.getMessage() for record in watched.caplog.records)
    watched.assert_clean(
        password, b64(f"{user}:{password}"), b64(f"{user}:{password}-not"), f"{user}:{password}"
    )


async def test_the_proxy_log_stands_alone(
    caplog: pytest.LogCaptureFixture, tinyproxy_with_auth: Tinyproxy, plain: WebServer
) -> None:
    """asyncsp.proxy at DEBUG, nothing else listening: a plain-HTTP request still says which
    proxy it went through (and not the credentials in its URL)."""
    user, password = test_http_proxy.USER, test_http_proxy.PASSWORD
    proxy = tinyproxy_with_auth.url(f"{user}:{password}@")
    with caplog.at_level(logging.DEBUG, logger="asyncsp.proxy"):
        async with ConnectionManager(proxy=proxy) as mgr:
            assert (await mgr.get(plain.url())).status == 200
    said = [r.getMessage() for r in caplog.records if r.name == "asyncsp.proxy"]
    assert any(tinyproxy_with_auth.url() in text for text in said), said
    assert not any(password in text for text in said)
