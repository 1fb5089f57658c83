"""asyncsp: async service points with one TLS policy for HTTP, SMTP, FTPS and raw streams.

.NET's ``ServicePointManager`` model for await-based Python: a process-wide (or per-manager,
or per-endpoint) `TlsPolicy` is snapshotted into an `ssl.SSLContext` for each new
connection, and every TLS connection reports and verifies what it actually negotiated.

Every change to the public surface (a name users import) belongs in this file and nowhere
else; the layers below it, and the rule that their imports go one way, are in
``tests/test_layers.py``.
"""

from ._contexts import set_context_cache_size
from ._defaults import Defaults, defaults
from ._endpoint import Endpoint
from ._errors import (
    AsyncspError,
    BodyTooLargeError,
    CertificateVerificationError,
    ConnectError,
    ConnectionClosedError,
    FtpArgumentError,
    FtpError,
    FtpProtocolError,
    FtpReplyError,
    HttpArgumentError,
    HttpError,
    InsecurePolicyWarning,
    InvalidHostNameError,
    InvalidSecurityProtocolError,
    ManagerClosedError,
    PinMismatchError,
    PolicyError,
    ProtocolNotAllowedError,
    ProxyError,
    ReadLimitError,
    SmtpArgumentError,
    SmtpError,
    SmtpProtocolError,
    SmtpRecipientsRefused,
    SmtpReplyError,
    StartTlsUnavailableError,
    TimeoutError,
    TlsError,
    UnexpectedPlaintextError,
)
from ._events import (
    ConnectionClosed,
    ConnectionOpened,
    HandshakeFailed,
    HandshakeFinished,
    PolicySwapped,
    SlotWaited,
    TraceEvent,
)
from ._ftp import FtpClient, FtpEntry
from ._http import Response, ResponseContent
from ._manager import ConnectionManager, ServicePointLimitError
from ._policy import TlsPolicy
from ._protocols import SecurityProtocol
from ._servicepoint import ServicePoint, ServicePointStats
from ._smtp import SendResult, SmtpClient, SmtpReply
from ._sockets import SocketOptions
from ._streams import Stream
from ._system import SystemTlsConfig, system_tls_config
from ._tls import TlsInfo

__version__ = "0.1.0"

__all__ = [
    "AsyncspError",
    "BodyTooLargeError",
    "CertificateVerificationError",
    "ConnectError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionManager",
    "ConnectionOpened",
    "Defaults",
    "Endpoint",
    "FtpArgumentError",
    "FtpClient",
    "FtpEntry",
    "FtpError",
    "FtpProtocolError",
    "FtpReplyError",
    "HandshakeFailed",
    "HandshakeFinished",
    "HttpArgumentError",
    "HttpError",
    "InsecurePolicyWarning",
    "InvalidHostNameError",
    "InvalidSecurityProtocolError",
    "ManagerClosedError",
    "PinMismatchError",
    "PolicyError",
    "PolicySwapped",
    "ProtocolNotAllowedError",
    "ProxyError",
    "ReadLimitError",
    "Response",
    "ResponseContent",
    "SecurityProtocol",
    "SendResult",
    "ServicePoint",
    "ServicePointLimitError",
    "ServicePointStats",
    "SlotWaited",
    "SmtpArgumentError",
    "SmtpClient",
    "SmtpError",
    "SmtpProtocolError",
    "SmtpRecipientsRefused",
    "SmtpReply",
    "SmtpReplyError",
    "SocketOptions",
    "StartTlsUnavailableError",
    "Stream",
    "SystemTlsConfig",
    "TimeoutError",
    "TlsError",
    "TlsInfo",
    "TlsPolicy",
    "TraceEvent",
    "UnexpectedPlaintextError",
    "__version__",
    "defaults",
    "set_context_cache_size",
    "system_tls_config",
]
