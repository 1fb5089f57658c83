"""`Response` and its `ResponseContent`: aiohttp's response behind the asyncsp error boundary."""

from __future__ import annotations

import codecs
import json as jsonlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import AsyncspError, BodyTooLargeError, HttpError
from ._http_errors import cause_for, raise_from, translate_http_error
from ._sockets import reset_on_close
from ._tls import received_close_notify

if TYPE_CHECKING:
    from types import TracebackType

    from multidict import CIMultiDictProxy
    from yarl import URL

    from ._http import _Call
    from ._http_connector import Connector, TrackedResponse
    from ._http_pool import HttpEndpoint
    from ._servicepoint import ServicePoint
    from ._tls import TlsInfo

__all__ = ["Response", "ResponseContent"]

T = TypeVar("T")

_DEFAULT_CHARSET = "utf-8"
"""What a text body without a charset is decoded as (RFC 8259 §8.1 for JSON; aiohttp's default)."""


class Response:
    """An HTTP response from `ConnectionManager.request` or `get`/`post`/....

    Its status line and headers have arrived; the body is read with `read`, `text`, `json`
    or streamed from `content`. Every error while reading is an asyncsp error (`HttpError`,
    `BodyTooLargeError`, `TimeoutError`, `ManagerClosedError`). ``tls`` describes the
    connection that carried it (``None`` over plain HTTP), ``service_point`` its endpoint.
    """

    __slots__ = (
        "_aio",
        "_body",
        "_call",
        "_connector",
        "_content",
        "_done",
        "_endpoint",
        "history",
    )

    def __init__(
        self,
        aio: TrackedResponse,
        endpoint: HttpEndpoint,
        connector: Connector,
        call: _Call,
    ) -> None:
        self._aio = aio
        self._endpoint = endpoint
        self._connector = connector
        self._call = call
        self._body: bytes | None = None
        self._content: ResponseContent | None = None
        self._done = False
        self.history: tuple[Response, ...] = ()
        """The redirect responses that led here, oldest first (their bodies are discarded)."""
        if aio.connection is None:
            self._end()  # empty body: aiohttp has already given the connection back

    # -- what arrived ----------------------------------------------------------------------

    @property
    def status(self) -> int:
        """The status code, e.g. ``200``."""
        return self._aio.status

    @property
    def reason(self) -> str | None:
        """The reason phrase, e.g. ``"OK"``."""
        return self._aio.reason

    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self._aio.status < 400

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The response headers (case-insensitive)."""
        return self._aio.headers

    @property
    def url(self) -> URL:
        """The URL this response answered (after redirects)."""
        return self._aio.url

    @property
    def tls(self) -> TlsInfo | None:
        """What the connection that carried this response negotiated (``None`` for HTTP)."""
        state = self._aio.asyncsp_state
        return state.tls if state is not None else None

    @property
    def service_point(self) -> ServicePoint:
        """The service point of the endpoint that answered."""
        return self._endpoint.sp

    @property
    def content(self) -> ResponseContent:
        """The body as a stream (aiohttp's ``StreamReader`` methods, asyncsp's errors)."""
        if self._content is None:
            self._content = ResponseContent(self)
        return self._content

    # -- the body --------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The whole body, decoded (gzip, deflate...), at most the manager's ``max_body_size``."""
        if self._body is None and not self._read_buffered():
            self._body = await self._read_body()
        return self._body  # type: ignore[return-value]  # set by _read_buffered or the loop

    def _read_buffered(self) -> bool:
        """Take the body if all of it has arrived already (the common small response)."""
        if self._body is not None:
            return True
        content = self._aio.content
        if not content.is_eof():
            return False
        try:
            data = content.read_nowait()
        except Exception:
            return False  # let the reading loop meet (and translate) the error
        limit = self._call.max_body_size
        if limit is not None and len(data) > limit:
            self.close()
            raise self._too_large(limit)
        aio = self._aio
        state = aio.asyncsp_state
        if (
            state is not None
            and state.tls_object is not None
            and "Content-Length" not in aio.headers  # (`_check_whole`'s first test, inlined)
        ):
            self._check_whole()
        if not self._done:  # (often ended already: aiohttp releases a body read in one go)
            self._end()
        self._body = data
        return True

    async def text(self, encoding: str | None = None, errors: str = "strict") -> str:
        """The body as text: *encoding*, else the charset of Content-Type, else UTF-8."""
        body = await self.read()
        if encoding is None:
            encoding = self._aio.charset or _DEFAULT_CHARSET
            try:
                codecs.lookup(encoding)
            except LookupError:
                encoding = _DEFAULT_CHARSET
        try:
            return body.decode(encoding, errors)
        except (UnicodeDecodeError, LookupError) as exc:
            raise HttpError(
                f"{self._endpoint.sp.address}: {self._what()}: the body is not valid "
                f"{encoding} ({exc})",
                endpoint=self._endpoint.sp.address,
            ) from exc

    async def json(
        self,
        *,
        encoding: str | None = None,
        loads: Callable[[str], Any] = jsonlib.loads,
        content_type: str | None = "application/json",
    ) -> Any:
        """The body parsed as JSON (``None`` if empty); ``content_type=None`` skips the check."""
        body = await self.read()
        if content_type is not None and not _is_content_type(self._aio.content_type, content_type):
            raise HttpError(
                f"{self._endpoint.sp.address}: {self._what()}: expected {content_type}, got "
                f"{self._aio.content_type!r}; pass content_type=None to parse it anyway",
                endpoint=self._endpoint.sp.address,
            )
        if not body.strip():
            return None
        text = await self.text(encoding)
        try:
            return loads(text)
        except ValueError as exc:
            raise HttpError(
                f"{self._endpoint.sp.address}: {self._what()}: the body is not valid JSON ({exc})",
                endpoint=self._endpoint.sp.address,
            ) from exc

    async def _read_body(self) -> bytes:
        limit = self._call.max_body_size
        aio = self._aio
        if limit is not None and "Content-Encoding" not in aio.headers:
            announced = aio.content_length
            if announced is not None and announced > limit:
                self.close()
                raise self._too_large(limit)
        reader = aio.content
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = await reader.readany()
                if not chunk:
                    break
                size += len(chunk)
                if limit is not None and size > limit:
                    self.close()
                    raise self._too_large(limit)
                chunks.append(chunk)
        except AsyncspError:
            raise
        except Exception as exc:
            error = self._failed(exc)
            raise_from(error, cause_for(error, exc, self._endpoint.route))
        except BaseException:
            self.close()  # cancelled half-way: the connection cannot be reused
            raise
        self._check_whole()
        self._end()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, limit: int) -> BodyTooLargeError:
        address = self._endpoint.sp.address
        return BodyTooLargeError(
            f"{address}: {self._what()}: the response body is larger than max_body_size="
            f"{limit} bytes (counted after decoding); stream it from Response.content or "
            "raise the limit",
            endpoint=address,
        )

    def _check_whole(self) -> None:
        """At the end of the body: refuse a close-delimited TLS body cut without close_notify.

        Without Content-Length or chunked coding the connection's close ends the body, and
        under TLS only close_notify tells that close from an attacker's TCP FIN (RFC 9112 §9.8).
        """
        aio = self._aio
        state = aio.asyncsp_state
        if state is None or state.tls_object is None or "Content-Length" in aio.headers:
            return
        coding = aio.headers.get("Transfer-Encoding")
        if (
            (coding is not None and coding.rsplit(",", 1)[-1].strip().lower() == "chunked")
            or aio.method == "HEAD"
            or aio.status in (204, 304)
            or aio.status < 200
            or received_close_notify(state.tls_object)
        ):
            return
        self.close()
        address = self._endpoint.sp.address
        raise HttpError(
            f"{address}: {self._what()}: the connection ended without TLS close_notify before "
            "the body was known to be whole (no Content-Length, not chunked); it may have been "
            "cut short",
            endpoint=address,
        )

    # -- the end of the exchange -----------------------------------------------------------

    def release(self) -> None:
        """Give the connection back: pooled when the body was read to its end, else closed
        (with a TCP reset while the body is still arriving)."""
        if not self._done:
            self._cut_short()
            self._aio.release()
            self._end()

    def close(self) -> None:
        """Close the connection (it is never reused) and end the exchange; a body still
        arriving is cut off with a TCP reset."""
        if not self._done:
            self._cut_short()
            self._aio.close()
            self._end()

    def _cut_short(self) -> None:
        """If the body is still arriving, end its connection with a TCP reset (no TLS
        close_notify, no FIN): the peer must not take the cut-off exchange for a finished one,
        nor stay blocked sending the rest (see `reset_on_close`)."""
        aio = self._aio
        connection = aio.connection
        if connection is None or aio.content.is_eof():
            return  # released already, or all of the body has arrived: an ordinary close
        transport = connection.transport
        if transport is not None:
            reset_on_close(transport.get_extra_info("socket"))
            transport.abort()

    @property
    def closed(self) -> bool:
        """Whether the exchange has ended (the body was read, or the response released)."""
        return self._done

    async def _discard(self, limit: int) -> None:
        """Drop a redirect's body: read a small one so its connection is reused, else close."""
        reader = self._aio.content
        size = 0
        try:
            while not reader.at_eof() and size <= limit:
                size += len(await reader.readany())
        except Exception:  # its body is of no interest; the connection just is not reused
            self.close()
            return
        except BaseException:
            self.close()
            raise
        if reader.at_eof():
            self.release()
        else:
            self.close()

    def _end(self) -> None:
        if not self._done:
            self._done = True
            self._endpoint.request_ended(self._connector, self._aio)

    def _failed(self, exc: Exception) -> AsyncspError:
        """End the exchange after *exc* while reading; the asyncsp error to raise."""
        self.close()
        return translate_http_error(
            exc,
            endpoint=self._endpoint.sp.address,
            what=self._what(),
            timeout=self._call.total,
            manager_closed=self._endpoint.layer.manager.closed,  # set before its layers close
            route=self._endpoint.route,
        )

    def _what(self) -> str:
        return f"{self._aio.method} {self._aio.url.raw_path}"

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        tls = self.tls
        via = f" {tls.version}" if tls is not None else ""
        return f"<Response {self.status} {self.reason} {self._endpoint.sp.address}{via}>"


class ResponseContent:
    """A response body as a stream: aiohttp's reader methods behind the asyncsp error boundary.

    Not bounded by ``max_body_size`` (the caller reads at its own pace); the end of the body
    gives the connection back.
    """

    __slots__ = ("_response",)

    def __init__(self, response: Response) -> None:
        self._response = response

    async def read(self, n: int = -1) -> bytes:
        """Up to *n* bytes (all that is left with ``-1``); ``b""`` at the end."""
        return await self._call(self._response._aio.content.read(n))

    async def readany(self) -> bytes:
        """Whatever is buffered, waiting for at least one byte; ``b""`` at the end."""
        return await self._call(self._response._aio.content.readany())

    async def readchunk(self) -> tuple[bytes, bool]:
        """The next chunk and whether it ended an HTTP chunk (aiohttp's ``readchunk``)."""
        return await self._call(self._response._aio.content.readchunk())

    async def readline(self) -> bytes:
        """One line, separator included; ``b""`` at the end."""
        return await self._call(self._response._aio.content.readline())

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Up to and including *separator*; ``b""`` at the end."""
        return await self._call(self._response._aio.content.readuntil(separator))

    async def readexactly(self, n: int) -> bytes:
        """Exactly *n* bytes; a body that ends first is an `HttpError`."""
        return await self._call(self._response._aio.content.readexactly(n))

    async def _call(self, operation: Awaitable[T]) -> T:
        # A cancelled read passes through untouched: the caller may read on, or release.
        response = self._response
        try:
            data = await operation
        except Exception as exc:
            error = response._failed(exc)
            raise_from(error, cause_for(error, exc, response._endpoint.route))
        if response._aio.content.at_eof():
            response._check_whole()
            response._end()
        return data

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        """Chunks of at most *n* bytes until the end."""
        while chunk := await self.read(n):
            yield chunk

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Chunks as they arrive until the end."""
        while chunk := await self.readany():
            yield chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        while line := await self.readline():
            yield line

    def at_eof(self) -> bool:
        """Whether the whole body has been read."""
        return self._response._aio.content.at_eof()


def _is_content_type(actual: str, expected: str) -> bool:
    actual = actual.lower()
    if expected == "application/json":
        # application/json and the structured-syntax suffix +json (RFC 6839 §3.1).
        return actual == expected or (
            actual.startswith("application/") and actual.endswith("+json")
        )
    return expected in actual
