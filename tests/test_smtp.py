"""SMTP sessions against aiosmtpd on loopback and against scripted misbehaving servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import email.message
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.message import EmailMessage
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

import asyncsp
from asyncsp import (
    ConnectionClosedError,
    ConnectionManager,
    SmtpError,
    SmtpProtocolError,
    SmtpRecipientsRefused,
    SmtpReplyError,
    StartTlsUnavailableError,
    TlsPolicy,
)
from asyncsp._errors import SmtpArgumentError
from asyncsp._smtp import serialise_message
from asyncsp._smtp_protocol import Command, normalise_line_ends

from .servers import LOCAL, LineServer, fd_baseline, server_context

USER, PASSWORD, TOKEN = "alice", "s3cret-Pa55word", "ya29.token-value"

# -- aiosmtpd on loopback -----------------------------------------------------------------


@dataclasses.dataclass
class Mailbox:
    """What an aiosmtpd server saw (written from its thread)."""

    messages: list[tuple[str, list[str], bytes, list[str]]] = dataclasses.field(
        default_factory=list
    )
    connections: int = 0
    active: int = 0
    peak: int = 0
    quits: int = 0
    auths: list[str] = dataclasses.field(default_factory=list)
    quit_seen: threading.Event = dataclasses.field(default_factory=threading.Event)
    counting: bool = False  # off while aiosmtpd's controller checks it is up
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class Handler:
    """Accepts mail, refuses recipients named ``nobody*``, offers PIPELINING and XOAUTH2."""

    def __init__(self, box: Mailbox, *, pipelining: bool = True) -> None:
        self.box = box
        self.pipelining = pipelining

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extra = ["250-PIPELINING"] if self.pipelining else []
        return responses[:-1] + extra + responses[-1:]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.mail_from is not None and envelope.original_content is not None
        self.box.messages.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                list(envelope.mail_options),
            )
        )
        return "250 2.0.0 queued"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.box.lock:
            self.box.quits += 1
        self.box.quit_seen.set()
        return "221 bye"

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        self.box.auths.append("XOAUTH2")
        expected = f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01".encode()
        ok = len(args) == 2 and base64.b64decode(args[1]) == expected
        return AuthResult(success=ok, handled=False)


class RecordingController(Controller):
    def __init__(self, box: Mailbox, *args: Any, **kwargs: Any) -> None:
        self.box = box
        super().__init__(*args, **kwargs)

    def factory(self) -> SMTP:
        box = self.box

        class CountingSMTP(SMTP):
            counted = False

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                # STARTTLS calls this again for the same connection.
                if box.counting and not self.counted:
                    self.counted = True
                    with box.lock:
                        box.connections += 1
                        box.active += 1
                        box.peak = max(box.peak, box.active)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                if self.counted:
                    self.counted = False
                    with box.lock:
                        box.active -= 1
                super().connection_lost(error)

        return CountingSMTP(self.handler, **self.SMTP_kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class MailServer:
    port: int
    box: Mailbox


def authenticate(box: Mailbox, password: str = PASSWORD) -> Callable[..., AuthResult]:
    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        box.auths.append(mechanism)
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            password.encode(),
        )
        return AuthResult(success=ok, handled=False)

    return check


@contextlib.contextmanager
def mail_server(
    cert: trustme.LeafCert | None,
    *,
    implicit: bool = False,
    pipelining: bool = True,
    exclude: tuple[str, ...] = (),
    password: str = PASSWORD,
) -> Iterator[MailServer]:
    box = Mailbox()
    kwargs: dict[str, Any] = {}
    if cert is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        if implicit:
            # aiosmtpd counts only STARTTLS as encryption: let AUTH through under implicit TLS.
            kwargs.update(ssl_context=ctx, auth_require_tls=False)
        else:
            kwargs.update(tls_context=ctx, require_starttls=True)
    port = free_port()
    controller = RecordingController(
        box,
        Handler(box, pipelining=pipelining),
        hostname=LOCAL,
        server_hostname=LOCAL,
        port=port,
        authenticator=authenticate(box, password),
        auth_exclude_mechanism=list(exclude),
        **kwargs,
    )
    controller.start()
    box.counting = True
    try:
        yield MailServer(port, box)
    finally:
        controller.stop()


@pytest.fixture
def starttls_server(server_cert: trustme.LeafCert) -> Iterator[MailServer]:
    with mail_server(server_cert) as server:
        yield server


@pytest.fixture
def policy(trusted: Callable[..., TlsPolicy]) -> TlsPolicy:
    return trusted()


def message(**headers: str) -> EmailMessage:
    msg = EmailMessage()
    for name, value in {"From": "alice@example.org", "To": "bob@example.org", **headers}.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello.\n")
    return msg


# -- scripted servers ----------------------------------------------------------------------


class Peer:
    """One connection to a scripted server: reads lines, records every chunk it received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.chunks: list[bytes] = []
        self._buffer = b""

    async def line(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionResetError("client closed")
            self.chunks.append(chunk)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line + b"\n"

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Script = Callable[[Peer], Awaitable[None]]


class ScriptedSmtp(LineServer[Peer]):
    """A scripted server in the test's loop: each connection runs a `Script`."""

    @property
    def received(self) -> bytes:
        """Everything the clients sent, as it arrived."""
        return b"".join(c for p in self.peers for c in p.chunks)


@contextlib.asynccontextmanager
async def scripted(
    script: Script, context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[ScriptedSmtp, int]]:
    """A scripted server; with *context* it speaks TLS from the first byte (implicit TLS)."""
    server = ScriptedSmtp(Peer, script)
    server.context = context
    async with server:
        yield server, server.port


def ehlo_reply(*extensions: str) -> bytes:
    lines = ["mx.test", *extensions]
    return b"".join(
        f"250{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
        for i, line in enumerate(lines)
    )


def responder(*extensions: str, answers: dict[bytes, bytes] | None = None) -> Script:
    """A plain-text server offering *extensions*; *answers* overrides replies by verb."""

    async def script(peer: Peer) -> None:
        await peer.send(b"220 mx.test ESMTP\r\n")
        while True:
            line = await peer.line()
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
            if answers and verb in answers:
                await peer.send(answers[verb])
            elif verb == b"EHLO":
                await peer.send(ehlo_reply(*extensions))
            elif verb == b"DATA":
                await peer.send(b"354 go ahead\r\n")
                while await peer.line() != b".\r\n":
                    pass
                await peer.send(b"250 queued\r\n")
            elif verb == b"QUIT":
                await peer.send(b"221 bye\r\n")
                return
            else:
                await peer.send(b"250 ok\r\n")

    return script


PLAIN = {"security": "none", "timeout": 5}


# -- against aiosmtpd ---------------------------------------------------------------------


async def test_the_test_server_greets_by_a_given_name(starttls_server: MailServer) -> None:
    # Without a name aiosmtpd calls socket.getfqdn() for every connection, which takes
    # seconds on a machine whose own name is not in /etc/hosts.
    reader, writer = await asyncio.open_connection(LOCAL, starttls_server.port)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    assert greeting.startswith(f"220 {LOCAL} ".encode())


async def test_starttls_then_auth_then_send(starttls_server: MailServer, policy: TlsPolicy) -> None:
    port = starttls_server.port
    async with ConnectionManager(policy=policy) as mgr:
        async with mgr.smtp(LOCAL, port, username=USER, password=PASSWORD, timeout=5) as client:
            assert client.tls is not None and client.tls.version == "TLSv1.3"
            assert "STARTTLS" not in client.extensions  # the list from after the handshake
            assert set(client.extensions["AUTH"].split()) >= {"PLAIN", "LOGIN"}
            msg = message(Cc="carol@example.org", Bcc="dave@example.org", Subject="hi")
            result = await client.send_message(msg)
        assert result.accepted == ["bob@example.org", "carol@example.org", "dave@example.org"]
        assert result.refused == {} and result.reply.code == 250
        assert result.reply.enhanced_status == "2.0.0"
        sp = mgr.find_service_point(f"smtp://{LOCAL}:{port}")
        assert sp.stats.requests == 1 and sp.stats.tls_handshakes == 1
    (sender, rcpts, content, _), *_ = starttls_server.box.messages
    assert sender == "alice@example.org" and "dave@example.org" in rcpts
    assert b"Subject: hi\r\n" in content and b"Bcc" not in content and b"dave" not in content
    assert starttls_server.box.auths == ["PLAIN"]


async def test_auth_login_and_xoauth2(server_cert: trustme.LeafCert, policy: TlsPolicy) -> None:
    with mail_server(server_cert, exclude=("PLAIN",)) as server:
        async with ConnectionManager(policy=policy) as mgr:
            async with mgr.smtp(LOCAL, server.port, username=USER, password=PASSWORD, timeout=5):
                pass
            async with mgr.smtp(LOCAL, server.port, timeout=5) as client:
                await client.login(USER, oauth2_token=TOKEN)
                await client.sendmail("a@example.org", "b@example.org", b"Subject: x\r\n\r\nx\r\n")
            async with mgr.smtp(LOCAL, server.port, timeout=5) as client:
                with pytest.raises(SmtpReplyError) as info:
                    await client.login(USER, oauth2_token="wrong")
                assert info.value.code == 535
        assert server.box.auths == ["LOGIN", "XOAUTH2", "XOAUTH2"]


async def test_implicit_tls(server_cert: trustme.LeafCert, policy: TlsPolicy) -> None:
    with mail_server(server_cert, implicit=True) as server:
        async with ConnectionManager(policy=policy) as mgr:
            async with mgr.smtp(
                LOCAL, server.port, security="tls", username=USER, password=PASSWORD, timeout=5
            ) as client:
                assert client.tls is not None
                assert client.service_point.address == f"smtps://{LOCAL}:{server.port}"
                result = await client.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
                assert result.accepted == ["b@example.org"]
    assert server.box.auths == ["PLAIN"] and len(server.box.messages) == 1


async def test_untrusted_certificate_on_starttls(starttls_server: MailServer) -> None:
    async with ConnectionManager(policy=TlsPolicy()) as mgr:
        with pytest.raises(asyncsp.CertificateVerificationError):
            async with mgr.smtp(
                LOCAL, starttls_server.port, username=USER, password=PASSWORD, timeout=5
            ):
                pass
        sp = mgr.find_service_point(f"smtp://{LOCAL}:{starttls_server.port}")
        assert sp.current_connections == 0
    assert starttls_server.box.auths == []


async def test_sessions_are_reused_per_credentials(
    starttls_server: MailServer, policy: TlsPolicy
) -> None:
    port = starttls_server.port
    async with ConnectionManager(policy=policy) as mgr:
        for i in range(3):
            async with mgr.smtp(LOCAL, port, username=USER, password=PASSWORD, timeout=5) as c:
                await c.sendmail("a@example.org", ["b@example.org"], f"n: {i}\r\n\r\n".encode())
        sp = mgr.find_service_point(f"smtp://{LOCAL}:{port}")
        assert starttls_server.box.connections == 1 and sp.stats.connections_opened == 1
        assert sp.stats.requests == 3 and sp.current_connections == 1
        # Other credentials (or none) never get the authenticated session.
        async with mgr.smtp(LOCAL, port, timeout=5) as client:
            assert "AUTH" in client.extensions
        assert starttls_server.box.connections == 2
    assert len(starttls_server.box.messages) == 3 and starttls_server.box.auths == ["PLAIN"]
    starttls_server.box.quit_seen.wait(5)
    assert starttls_server.box.quits >= 1  # pooled sessions say goodbye when the manager closes


async def test_a_login_without_password_finds_its_pooled_session(
    server_cert: trustme.LeafCert, policy: TlsPolicy
) -> None:
    with mail_server(server_cert, password="") as server:
        async with ConnectionManager(policy=policy) as mgr:
            for password in (None, None, ""):  # no password and the empty one are the same login
                async with mgr.smtp(LOCAL, server.port, username=USER, password=password) as c:
                    await c.noop()
            sp = mgr.find_service_point(f"smtp://{LOCAL}:{server.port}")
            assert sp.stats.connections_opened == 1 and server.box.connections == 1
    assert server.box.auths == ["PLAIN"]


async def test_policy_change_retires_pooled_session(
    starttls_server: MailServer, trusted: Callable[..., TlsPolicy]
) -> None:
    async with ConnectionManager(policy=trusted()) as mgr:
        async with mgr.smtp(LOCAL, starttls_server.port, timeout=5) as client:
            assert client.tls is not None and client.tls.version == "TLSv1.3"
        mgr.security_protocol = asyncsp.SecurityProtocol.TLS12
        async with mgr.smtp(LOCAL, starttls_server.port, timeout=5) as client:
            assert client.tls is not None and client.tls.version == "TLSv1.2"
        assert await asyncio.to_thread(starttls_server.box.quit_seen.wait, 5)
        assert starttls_server.box.connections == 2


async def test_idle_session_is_closed_with_quit(
    starttls_server: MailServer, policy: TlsPolicy
) -> None:
    async with ConnectionManager(policy=policy) as mgr:
        sp = mgr.find_service_point(f"smtp://{LOCAL}:{starttls_server.port}")
        sp.max_idle_time = 0.05
        async with mgr.smtp(LOCAL, starttls_server.port, timeout=5):
            pass
        assert await asyncio.to_thread(starttls_server.box.quit_seen.wait, 5)
        assert starttls_server.box.quits == 1


async def test_partial_and_total_refusal(starttls_server: MailServer, policy: TlsPolicy) -> None:
    async with ConnectionManager(policy=policy) as mgr:
        async with mgr.smtp(LOCAL, starttls_server.port, timeout=5) as client:
            result = await client.sendmail(
                "a@example.org", ["nobody1@example.org", "b@example.org"], b"x\r\n"
            )
            assert result.accepted == ["b@example.org"]
            assert result.refused["nobody1@example.org"].code == 550
            assert result.refused["nobody1@example.org"].enhanced_status == "5.1.1"
            with pytest.raises(SmtpRecipientsRefused) as info:
                await client.sendmail("a@example.org", ["nobody2@x.org", "nobody3@x.org"], b"y\r\n")
            assert set(info.value.refused) == {"nobody2@x.org", "nobody3@x.org"}
            assert all(r.code == 550 for r in info.value.refused.values())
            # The transaction was reset: the session goes on.
            again = await client.sendmail("a@example.org", "c@example.org", b"z\r\n")
            assert again.accepted == ["c@example.org"]
    assert [m[1] for m in starttls_server.box.messages] == [["b@example.org"], ["c@example.org"]]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_bodies_arrive_intact(
    server_cert: trustme.LeafCert, policy: TlsPolicy, pipelining: bool
) -> None:
    bodies = [
        b"a\r\n.\r\nb\r\n",
        b".leading dot\r\n..two\r\n",
        b"bare\nLF\n.\nend",
        b"bare\rCR\r.\rend",
        b"mixed\r.\r\nx\n.\r\ny",
        b"",
    ]
    with mail_server(server_cert, pipelining=pipelining) as server:
        async with ConnectionManager(policy=policy) as mgr:
            async with mgr.smtp(LOCAL, server.port, timeout=5) as client:
                assert ("PIPELINING" in client.extensions) is pipelining
                for body in bodies:
                    await client.sendmail("a@example.org", ["b@example.org"], body)
    expected = [
        b"a\r\n.\r\nb\r\n",
        b".leading dot\r\n..two\r\n",
        b"bare\r\nLF\r\n.\r\nend\r\n",
        b"bare\r\nCR\r\n.\r\nend\r\n",
        b"mixed\r\n.\r\nx\r\n.\r\ny\r\n",
        b"",
    ]
    assert [m[2] for m in server.box.messages] == expected


async def test_eight_bit_and_utf8(starttls_server: MailServer, policy: TlsPolicy) -> None:
    async with ConnectionManager(policy=policy) as mgr:
        async with mgr.smtp(LOCAL, starttls_server.port, timeout=5) as client:
            msg = message(To="zoë@bücher.example", Subject="Grüße")
            msg.set_content("Grüße aus Köln\n")
            result = await client.send_message(msg)
            assert result.accepted == ["zoë@bücher.example"]
    _, rcpts, content, options = starttls_server.box.messages[0]
    assert rcpts == ["zoë@bücher.example"]
    assert (
        "SMTPUTF8" in options
        and "BODY=8BITMIME" in options
        and any(o.startswith("SIZE=") for o in options)
    )
    assert "Subject: Grüße\r\n".encode() in content


def injected_in_a_part() -> EmailMessage:
    msg = message(Subject="hi")
    msg.add_attachment(b"data", maintype="application", subtype="octet-stream", filename="x.bin")
    part = msg.get_payload()[1]
    part["X-Note"] = "=?utf-8?q?note=0A=0DContent-Type:=20text/html?="
    return msg


def injected_in_an_attached_message() -> EmailMessage:
    inner = message(Subject="=?utf-8?q?x=0D=0ABcc:=20evil@example.org?=")
    msg = message(Subject="fwd")
    msg.add_attachment(inner)
    return msg


@pytest.mark.parametrize(
    ("make", "injected"),
    [
        (lambda: message(Subject="=?utf-8?q?hello=0A=0DBcc:=20evil@example.org?="), b"bcc:"),
        (injected_in_a_part, b"content-type: text/html"),
        (injected_in_an_attached_message, b"bcc:"),
    ],
    ids=["top-level", "mime-part", "attached-message"],
)
async def test_header_injection_through_an_encoded_word_never_reaches_the_wire(
    starttls_server: MailServer,
    policy: TlsPolicy,
    make: Callable[[], EmailMessage],
    injected: bytes,
) -> None:
    # CVE-2024-6923: an unpatched email generator decodes the encoded word into a raw line
    # break, and asyncsp refuses the message; a patched one (CPython >= 3.12.5, Debian's
    # 3.11 and 3.13) keeps it encoded, and the message goes out as it is. Either is safe.
    msg = make()
    async with ConnectionManager(policy=policy) as mgr:
        async with mgr.smtp(LOCAL, starttls_server.port, timeout=5) as client:
            try:
                await client.send_message(msg)
            except SmtpArgumentError as exc:
                assert "refused before anything was sent" in str(exc)
                sent = False
            else:
                sent = True
            assert (await client.noop()).code == 250
    if not sent:
        assert starttls_server.box.messages == []
        return
    (_, _, content, _), *others = starttls_server.box.messages
    assert others == []
    # Every line as a server may split it (a lone CR or LF ends one too).
    lines = normalise_line_ends(content).split(b"\r\n")
    assert not [line for line in lines if line.lower().startswith(injected)]


def test_unsafe_headers_of_legacy_messages_are_refused() -> None:
    legacy = email.message.Message()  # the compat32 policy
    legacy["From"] = "a@example.org"
    legacy["Subject"] = "hello\n folded"
    legacy.set_payload("x")
    assert serialise_message(legacy, utf8=False).startswith(
        b"From: a@example.org\r\nSubject: hello\r\n folded\r\n\r\n"
    )
    legacy.replace_header("Subject", "hello\nBcc: evil@example.org")
    with pytest.raises(SmtpArgumentError, match="refused before anything was sent"):
        serialise_message(legacy, utf8=False)
    del legacy["Subject"]
    legacy["X-A:B"] = "a colon in a name makes it another field"
    with pytest.raises(SmtpArgumentError, match="X-A:B"):
        serialise_message(legacy, utf8=False)


async def test_connection_limit_bounds_concurrent_sessions(
    starttls_server: MailServer, policy: TlsPolicy
) -> None:
    async with ConnectionManager(policy=policy) as mgr:
        sp = mgr.find_service_point(f"smtp://{LOCAL}:{starttls_server.port}")
        sp.connection_limit = 2

        async def send(i: int) -> None:
            async with mgr.smtp(LOCAL, starttls_server.port, timeout=10) as client:
                await client.sendmail("a@example.org", ["b@example.org"], b"%d\r\n" % i)

        await asyncio.gather(*(send(i) for i in range(8)))
        assert sp.stats.connections_opened <= 2 and sp.stats.requests == 8
    assert starttls_server.box.peak <= 2 and len(starttls_server.box.messages) == 8


async def test_secrets_never_show(
    starttls_server: MailServer, policy: TlsPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncsp")
    secrets = [PASSWORD, base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()]
    async with ConnectionManager(policy=policy) as mgr:
        context = mgr.smtp(LOCAL, starttls_server.port, username=USER, password=PASSWORD, timeout=5)
        async with context as client:
            await client.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
            shown = [repr(context), repr(client), str(client.extensions)]
        with pytest.raises(SmtpReplyError) as info:
            async with mgr.smtp(
                LOCAL, starttls_server.port, username=USER, password="wrong-" + PASSWORD, timeout=5
            ):
                pass
        assert info.value.code == 535
        shown += [str(info.value), repr(info.value)]
        sp = mgr.find_service_point(f"smtp://{LOCAL}:{starttls_server.port}")
        shown.append(repr(sp._pool._idle))
    shown.append(caplog.text)
    assert "MAIL" in caplog.text and "credentials hidden" in caplog.text
    for text in shown:
        for secret in secrets:
            assert secret not in text


@pytest.mark.parametrize("pipelining", [True, False])
async def test_logs_hold_no_message_content_and_no_credentials(
    server_cert: trustme.LeafCert,
    policy: TlsPolicy,
    caplog: pytest.LogCaptureFixture,
    pipelining: bool,
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncsp")
    msg = message(Subject="subject-2c4e81")
    msg["X-Private"] = "header-7f3a9c"
    msg.set_content("body-e51d0b\n")
    raw = b"Subject: raw-subject-91ab\r\n\r\nraw-body-38cd\r\n"
    with mail_server(server_cert, pipelining=pipelining, exclude=("PLAIN",)) as server:
        async with ConnectionManager(policy=policy) as mgr:
            async with mgr.smtp(
                LOCAL, server.port, username=USER, password=PASSWORD, timeout=5
            ) as client:  # AUTH LOGIN: the user name and the password, each a line
                await client.send_message(msg)
                await client.sendmail("a@example.org", ["b@example.org"], raw)
            async with mgr.smtp(LOCAL, server.port, timeout=5) as client:
                await client.login(USER, oauth2_token=TOKEN)
    assert server.box.auths == ["LOGIN", "XOAUTH2"] and len(server.box.messages) == 2
    assert b"body-e51d0b" in server.box.messages[0][2]
    logged = [record.getMessage() for record in caplog.records]
    forbidden = [
        "subject-2c4e81",
        "header-7f3a9c",
        "X-Private",
        "body-e51d0b",
        "raw-subject-91ab",
        "raw-body-38cd",
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        TOKEN,
        base64.b64encode(f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01".encode()).decode(),
    ]
    for line in logged:
        for text in forbidden:
            assert text not in line, f"{text!r} logged: {line!r}"
    assert any("message content" in line for line in logged)  # its size, never its bytes
    assert any("RCPT" in line for line in logged)


async def test_plain_text_refuses_credentials_before_connecting() -> None:
    async with scripted(responder("AUTH PLAIN")) as (server, port):
        async with ConnectionManager() as mgr:
            with pytest.raises(SmtpError, match="never sent over an unencrypted"):
                async with mgr.smtp(LOCAL, port, security="none", username=USER, password=PASSWORD):
                    pass
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                assert client.tls is None
                with pytest.raises(SmtpError, match="never sent over an unencrypted"):
                    await client.login(USER, PASSWORD)
    assert len(server.peers) == 1
    assert b"AUTH" not in server.received and PASSWORD.encode() not in server.received


# -- against scripted servers -------------------------------------------------------------


def auth_script(after_cancel: bytes, *, max_lines: int = 200) -> Script:
    """Implicit TLS offering AUTH PLAIN, challenging AUTH once more than PLAIN answers, and
    answering each ``*`` cancel with *after_cancel*; otherwise a plain responder."""

    async def script(peer: Peer) -> None:
        await peer.send(b"220 mx.test ESMTP\r\n")
        for _ in range(max_lines):
            line = await peer.line()
            if line.startswith(b"EHLO"):
                await peer.send(ehlo_reply("AUTH PLAIN"))
            elif line.startswith(b"AUTH"):
                await peer.send(b"334 \r\n")  # a challenge PLAIN has no answer for
            elif line == b"*\r\n":
                await peer.send(after_cancel)
            elif line.startswith(b"QUIT"):
                await peer.send(b"221 bye\r\n")
                return
            else:
                await peer.send(b"250 ok\r\n")

    return script


@pytest.mark.parametrize(
    "after_cancel",
    [b"334 \r\n", b"334 more\r\n334 and more\r\n", b"235 2.7.0 ok anyway\r\n", b"535 no\r\n"],
    ids=["challenged-again", "two-challenges", "accepted", "not-501"],
)
@pytest.mark.parametrize("how", ["on-open", "login"])
async def test_a_cancelled_auth_exchange_must_end_in_501(
    server_cert: trustme.LeafCert, policy: TlsPolicy, after_cancel: bytes, how: str
) -> None:
    # RFC 4954 §4: the server MUST answer a "*" with 501. A server that challenges again
    # would otherwise keep the client cancelling forever, each reply well within its timeout.
    tls = {"security": "tls", "timeout": 3}
    async with scripted(auth_script(after_cancel), server_context(server_cert)) as (server, port):
        async with ConnectionManager(policy=policy) as mgr, asyncio.timeout(10):
            with pytest.raises(SmtpProtocolError, match="501"):
                if how == "on-open":
                    async with mgr.smtp(LOCAL, port, username=USER, password=PASSWORD, **tls):
                        pass
                else:
                    async with mgr.smtp(LOCAL, port, **tls) as client:
                        await client.login(USER, PASSWORD)
            sp = mgr.find_service_point(f"smtps://{LOCAL}:{port}")
            assert sp.current_connections == 0  # closed, never pooled
            await server.sockets.wait_closed(5)
    assert server.received.count(b"*\r\n") == 1
    assert server.received.endswith(b"*\r\n")  # nothing after it, not even QUIT


async def test_a_cancelled_auth_exchange_answered_with_501_keeps_the_session(
    server_cert: trustme.LeafCert, policy: TlsPolicy
) -> None:
    tls = {"security": "tls", "timeout": 3}
    script = auth_script(b"501 5.7.0 cancelled\r\n")
    async with scripted(script, server_context(server_cert)) as (server, port):
        async with ConnectionManager(policy=policy) as mgr:
            async with mgr.smtp(LOCAL, port, **tls) as client:
                with pytest.raises(SmtpReplyError) as info:
                    await client.login(USER, PASSWORD)
                assert info.value.code == 501
                assert (await client.noop()).code == 250
            async with mgr.smtp(LOCAL, port, **tls) as client:
                assert (await client.noop()).code == 250
            assert mgr.find_service_point(f"smtps://{LOCAL}:{port}").stats.connections_opened == 1
    assert server.received.count(b"*\r\n") == 1 and len(server.peers) == 1


async def test_the_whole_auth_exchange_ends_by_the_timeout(
    server_cert: trustme.LeafCert, policy: TlsPolicy
) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"220 mx.test ESMTP\r\n")
        await peer.line()
        await peer.send(ehlo_reply("AUTH LOGIN"))
        await peer.line()  # AUTH LOGIN
        for reply in (b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", b"334 \r\n", b"501 no\r\n"):
            await asyncio.sleep(0.6)  # each reply well within the timeout, all four far past it
            await peer.send(reply)
            await peer.line()

    async with scripted(script, server_context(server_cert)) as (server, port):
        async with ConnectionManager(policy=policy) as mgr:
            with pytest.raises(asyncsp.TimeoutError, match="AUTH exchange"):
                async with mgr.smtp(
                    LOCAL, port, security="tls", username=USER, password=PASSWORD, timeout=1.0
                ):
                    pass
            assert mgr.find_service_point(f"smtps://{LOCAL}:{port}").current_connections == 0
            await server.sockets.wait_closed(5)
    assert b"*\r\n" not in server.received  # the client gave up before its cancel was due


async def test_no_starttls_offered_sends_nothing_else() -> None:
    async with scripted(responder("AUTH PLAIN", "PIPELINING")) as (server, port):
        async with ConnectionManager() as mgr:
            with pytest.raises(StartTlsUnavailableError, match="does not offer STARTTLS") as info:
                async with mgr.smtp(LOCAL, port, username=USER, password=PASSWORD, timeout=5):
                    pass
            assert isinstance(info.value, asyncsp.TlsError)
            await server.sockets.wait_closed(5)
    assert server.received == b"EHLO [127.0.0.1]\r\n"


async def test_454_to_starttls_is_an_error() -> None:
    script = responder("STARTTLS", answers={b"STARTTLS": b"454 4.7.0 TLS not available\r\n"})
    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:
            with pytest.raises(StartTlsUnavailableError, match="454"):
                async with mgr.smtp(LOCAL, port, username=USER, password=PASSWORD, timeout=5):
                    pass
            await server.sockets.wait_closed(5)
    assert server.received == b"EHLO [127.0.0.1]\r\nSTARTTLS\r\n"


async def test_bytes_injected_after_the_220_to_starttls() -> None:
    injected = b"220 go ahead\r\n250-mx.test\r\n250 AUTH PLAIN\r\n"
    script = responder("STARTTLS", answers={b"STARTTLS": injected})
    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:
            with pytest.raises(SmtpProtocolError, match="injection"):
                async with mgr.smtp(LOCAL, port, username=USER, password=PASSWORD, timeout=5):
                    pass
            assert mgr.find_service_point(f"smtp://{LOCAL}:{port}").current_connections == 0
            await server.sockets.wait_closed(5)
    assert server.received == b"EHLO [127.0.0.1]\r\nSTARTTLS\r\n"


@pytest.mark.parametrize(
    ("greeting", "error"),
    [
        (b"220-" + b"x" * (4 * 2**20) + b"\r\n220 ok\r\n", "longer than 8192"),
        (b"220-x\r\n" * 2000 + b"220 ok\r\n", "more than 1000 lines"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "malformed"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", "malformed"),
        (b"220 ok\r\n250 unasked\r\n", None),
    ],
)
async def test_bad_replies_are_protocol_errors(greeting: bytes, error: str | None) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(greeting)
        await peer.line()
        await peer.send(ehlo_reply())

    async with scripted(script) as (_, port):
        async with ConnectionManager() as mgr:
            with pytest.raises(SmtpProtocolError, match=error or "nobody asked for|makes no sense"):
                async with mgr.smtp(LOCAL, port, **PLAIN):
                    pass
            assert mgr.find_service_point(f"smtp://{LOCAL}:{port}").current_connections == 0


@pytest.mark.parametrize(
    ("greeting", "error"),
    [
        (b"554 5.3.2 no service\r\n", SmtpReplyError),
        (b"421 4.3.2 busy\r\n", SmtpReplyError),
        (b"", ConnectionClosedError),
    ],
)
async def test_greeting_refusals(greeting: bytes, error: type[Exception]) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(greeting)
        peer.writer.close()

    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:
            with pytest.raises(error):
                async with mgr.smtp(LOCAL, port, **PLAIN):
                    pass
    assert server.received == b""


async def test_silent_server_times_out_and_closes() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"220 mx.test\r\n")
        await peer.line()  # EHLO, never answered

    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:
            with pytest.raises(asyncsp.TimeoutError, match="EHLO") as info:
                async with mgr.smtp(LOCAL, port, security="none", timeout=0.3):
                    pass
            assert isinstance(info.value, TimeoutError)
            assert mgr.find_service_point(f"smtp://{LOCAL}:{port}").current_connections == 0
            await server.sockets.wait_closed(5)  # the server saw the close


async def test_trickling_reply_still_ends_by_the_timeout() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"220 mx.test\r\n")
        await peer.line()
        for _ in range(2000):  # an endless, slow multi-line reply, one byte at a time
            for byte in b"250-still talking\r\n":
                await peer.send(bytes([byte]))
                await asyncio.sleep(0.002)

    async with scripted(script) as (_, port):
        async with ConnectionManager() as mgr:
            started = time.monotonic()
            with pytest.raises(asyncsp.TimeoutError):
                async with mgr.smtp(LOCAL, port, security="none", timeout=0.5):
                    pass
            assert time.monotonic() - started < 10


async def test_pipelined_batch_is_one_write() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"220 mx.test\r\n")
        await peer.line()
        await peer.send(ehlo_reply("PIPELINING", "SIZE 100000"))
        for _ in range(5):
            await peer.line()
        assert len(peer.chunks) == 2, "MAIL, RCPTs and DATA came in more than one read"
        await peer.send(b"250 sender ok\r\n250 r1\r\n550 5.1.1 r2 unknown\r\n250 r3\r\n354 go\r\n")
        while await peer.line() != b".\r\n":
            pass
        await peer.send(b"250 queued\r\n")
        assert await peer.line() == b"RSET\r\n"  # leaving `async with` pools a reset session
        await peer.send(b"250 reset\r\n")

    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                result = await client.sendmail(
                    "a@example.org", ["r1@x.org", "r2@x.org", "r3@x.org"], b"hi\r\n"
                )
    assert result.accepted == ["r1@x.org", "r3@x.org"]
    assert list(result.refused) == ["r2@x.org"] and result.reply.message == "queued"
    assert server.peers[0].chunks[1] == (
        b"MAIL FROM:<a@example.org> SIZE=7\r\nRCPT TO:<r1@x.org>\r\nRCPT TO:<r2@x.org>\r\n"
        b"RCPT TO:<r3@x.org>\r\nDATA\r\n"
    )


async def test_pipelined_data_accepted_after_every_recipient_failed() -> None:
    # RFC 2920 §3.1: such a server gets a lone dot, never the message.
    answers = {b"RCPT": b"550 no\r\n"}
    async with scripted(responder("PIPELINING", answers=answers)) as (server, port):
        async with ConnectionManager() as mgr:
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                with pytest.raises(SmtpRecipientsRefused):
                    await client.sendmail("a@example.org", ["b@example.org"], b"secret body\r\n")
                assert (await client.noop()).code == 250
    assert b"secret body" not in server.received
    assert b"DATA\r\n.\r\nNOOP\r\n" in server.received


async def test_addresses_with_line_breaks_are_refused_before_sending() -> None:
    async with scripted(responder("PIPELINING")) as (server, port):
        async with ConnectionManager() as mgr:
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                for sender, rcpt in [
                    ("a@example.org", "b@example.org>\r\nRCPT TO:<evil@example.org"),
                    ("a@example.org\r\nRSET", "b@example.org"),
                    ("a@example.org", "b@example.org\nDATA"),
                    ("a@example.org", "b\x00@example.org"),
                ]:
                    with pytest.raises(SmtpArgumentError):
                        await client.sendmail(sender, [rcpt], b"x")
                with pytest.raises(SmtpArgumentError):
                    await client.send_message(message(To="bob@example.org"), sender="a@b\r\nX")
                assert (await client.noop()).code == 250
    assert server.received == b"EHLO [127.0.0.1]\r\nNOOP\r\nRSET\r\nQUIT\r\n"


async def test_extensions_needed_and_not_offered() -> None:
    async with scripted(responder("SIZE 100")) as (server, port):
        async with ConnectionManager() as mgr:
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                with pytest.raises(SmtpError, match="SMTPUTF8"):
                    await client.sendmail("a@example.org", ["zoë@example.org"], b"x")
                with pytest.raises(SmtpError, match="8BITMIME"):
                    await client.sendmail("a@example.org", ["b@example.org"], "é".encode())
                with pytest.raises(SmtpError, match="at most 100"):
                    await client.sendmail("a@example.org", ["b@example.org"], b"x" * 200)
    assert b"MAIL" not in server.received


async def test_421_anywhere_closes_the_session() -> None:
    script = responder("PIPELINING", answers={b"MAIL": b"421 4.3.2 shutting down\r\n"})
    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:
            for _ in range(2):
                async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                    with pytest.raises(SmtpReplyError) as info:
                        await client.sendmail("a@example.org", ["b@example.org"], b"x")
                    assert info.value.code == 421
            sp = mgr.find_service_point(f"smtp://{LOCAL}:{port}")
            assert sp.stats.connections_opened == 2 and sp.current_connections == 0
    assert len(server.peers) == 2


async def test_cancelled_send_is_never_pooled() -> None:
    content_seen = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.send(b"220 mx.test\r\n")
        while True:
            line = await peer.line()
            if line.startswith(b"EHLO"):
                await peer.send(ehlo_reply("PIPELINING"))
            elif line.startswith(b"DATA"):
                await peer.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
            elif line == b".\r\n":
                content_seen.set()  # and never answer
            elif line.startswith(b"RSET"):
                await peer.send(b"250 reset\r\n")
            elif line.startswith(b"QUIT"):
                await peer.send(b"221 bye\r\n")
                return

    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:

            async def send() -> None:
                async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                    await client.sendmail("a@example.org", ["b@example.org"], b"x")

            task = asyncio.create_task(send())
            await asyncio.wait_for(content_seen.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            sp = mgr.find_service_point(f"smtp://{LOCAL}:{port}")
            assert sp.current_connections == 0
            async with mgr.smtp(LOCAL, port, **PLAIN):
                pass
            assert sp.stats.connections_opened == 2
    assert len(server.peers) == 2


async def test_session_used_outside_its_block_is_refused() -> None:
    async with scripted(responder()) as (_, port):
        async with ConnectionManager() as mgr:
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                pass
            with pytest.raises(SmtpError, match="outside its 'async with'"):
                await client.sendmail("a@example.org", ["b@example.org"], b"x")


async def test_helo_fallback_and_bad_arguments() -> None:
    script = responder(answers={b"EHLO": b"502 5.5.1 what?\r\n", b"HELO": b"250 mx.test\r\n"})
    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:
            async with mgr.smtp(LOCAL, port, local_hostname="client.test", **PLAIN) as client:
                assert client.extensions == {}
                await client.sendmail("a@example.org", ["b@example.org"], b"x")
            with pytest.raises(ValueError, match="security"):
                mgr.smtp(LOCAL, port, security="ssl")
            with pytest.raises(SmtpArgumentError):
                mgr.smtp(LOCAL, port, local_hostname="x\r\nMAIL FROM:<a@b>")
    assert server.received.startswith(
        b"EHLO client.test\r\nHELO client.test\r\nMAIL FROM:<a@example.org>"
    )


async def test_no_descriptor_leaks(server_cert: trustme.LeafCert, policy: TlsPolicy) -> None:
    with mail_server(server_cert) as good, fd_baseline():
        async with scripted(responder("AUTH PLAIN")) as (_, plain_port):
            async with ConnectionManager(policy=policy) as mgr:
                for _ in range(3):
                    async with mgr.smtp(
                        LOCAL, good.port, username=USER, password=PASSWORD, timeout=5
                    ) as c:
                        await c.sendmail("a@example.org", ["b@example.org"], b"x")
                with pytest.raises(StartTlsUnavailableError):
                    async with mgr.smtp(LOCAL, plain_port, timeout=5):
                        pass
            async with ConnectionManager(policy=TlsPolicy()) as untrusting:
                with pytest.raises(asyncsp.CertificateVerificationError):
                    async with untrusting.smtp(LOCAL, good.port, timeout=5):
                        pass


async def test_non_ascii_headers_without_smtputf8_become_encoded_words() -> None:
    async with scripted(responder("8BITMIME", "PIPELINING")) as (server, port):
        async with ConnectionManager() as mgr:
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                msg = message(Subject="Grüße")
                msg.add_header("Resent-Date", "Mon, 1 Jan 2024 00:00:00 +0000")
                msg.add_header("Resent-From", "relay@example.org")
                msg.add_header("Resent-To", "eve@example.org")
                msg.add_header("Resent-Bcc", "frank@example.org")
                result = await client.send_message(msg)
    assert result.accepted == ["eve@example.org", "frank@example.org"]
    assert b"MAIL FROM:<relay@example.org>" in server.received
    assert b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" in server.received
    assert b"SMTPUTF8" not in server.received and b"frank" not in server.received.split(b"DATA")[1]


async def test_manager_closed_during_a_session() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"220 mx.test\r\n")
        await peer.line()
        await peer.send(ehlo_reply())
        await peer.line()  # MAIL, never answered

    async with scripted(script) as (_, port):
        with fd_baseline():
            mgr = ConnectionManager()
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                send = asyncio.create_task(
                    client.sendmail("a@example.org", ["b@example.org"], b"x")
                )
                await asyncio.sleep(0)  # one turn: the task writes MAIL and waits for its reply
                await mgr.aclose()
                with pytest.raises(asyncsp.ManagerClosedError):
                    await send
            with pytest.raises(asyncsp.ManagerClosedError):
                async with mgr.smtp(LOCAL, port, **PLAIN):
                    pass


async def test_session_closed_by_the_server_while_pooled_is_not_reused() -> None:
    pooled = asyncio.Event()

    async def script(peer: Peer) -> None:
        if len(server.peers) > 1:
            await responder()(peer)
            return
        await peer.send(b"220 mx.test\r\n")
        await peer.line()
        await peer.send(ehlo_reply())
        await peer.line()  # NOOP
        await peer.send(b"250 ok\r\n")
        await peer.line()  # RSET before the session is pooled
        await peer.send(b"250 reset\r\n")
        await pooled.wait()
        await peer.send(b"421 4.4.2 idle too long\r\n")
        peer.writer.close()

    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                await client.noop()
            sp = mgr.find_service_point(f"smtp://{LOCAL}:{port}")
            idle = sp._pool._idle[0].conn
            assert idle.is_reusable()
            pooled.set()
            await server.sockets.wait_closed(5)
            for _ in range(500):  # no event tells when the loop has read the server's FIN
                if not idle.is_reusable():
                    break
                await asyncio.sleep(0.01)
            assert not idle.is_reusable()
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                assert (await client.noop()).code == 250
            assert sp.stats.connections_opened == 2


@pytest.mark.parametrize("when", ["before the handshake", "during the handshake"])
async def test_plain_text_after_the_220_to_starttls_is_one_error(when: str) -> None:
    """RFC 3207 §4.2: whatever arrives in clear after the 220 and before TLS is an injection,
    whether it comes at once or a moment later, once the client's handshake has begun."""

    async def script(peer: Peer) -> None:
        await peer.send(b"220 mx.test ESMTP\r\n")
        await peer.line()
        await peer.send(ehlo_reply("STARTTLS"))
        await peer.line()
        if when == "before the handshake":
            await peer.send(b"220 go ahead\r\n250 injected\r\n")
        else:
            await peer.send(b"220 go ahead\r\n")
            assert (await peer.reader.read(5))[:1] == b"\x16"  # the ClientHello has begun
            await peer.send(b"250-mx.test\r\n250 AUTH PLAIN\r\n")
        await peer.reader.read(65536)

    async with scripted(script) as (server, port):
        async with ConnectionManager() as mgr:
            with pytest.raises(SmtpProtocolError, match="injection"):
                async with mgr.smtp(LOCAL, port, username=USER, password=PASSWORD, timeout=5):
                    pass
            assert mgr.find_service_point(f"smtp://{LOCAL}:{port}").current_connections == 0
            await server.sockets.wait_closed(5)
    assert PASSWORD.encode() not in server.received


async def test_a_session_closed_at_checkin_says_quit_without_rset() -> None:
    # Its lease is over when the block ends: the pool closes it, so no RSET goes first.
    async with scripted(responder("PIPELINING")) as (server, port):
        async with ConnectionManager(connection_lease_timeout=0) as mgr:
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                await client.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
    assert server.received.endswith(b"\r\n.\r\nQUIT\r\n")
    assert b"RSET" not in server.received


async def test_a_session_left_mid_transaction_is_reset_before_its_quit() -> None:
    # Not between transactions: RSET first even though it is closed, as before.
    async with scripted(responder("PIPELINING")) as (server, port):
        async with ConnectionManager(connection_lease_timeout=0) as mgr:
            async with mgr.smtp(LOCAL, port, **PLAIN) as client:
                conn = client._live()
                await conn.exchange(Command.MAIL, "FROM:<a@example.org>")
    assert server.received.endswith(b"MAIL FROM:<a@example.org>\r\nRSET\r\nQUIT\r\n")
