"""What TLS session resumption saves a Python client here: its handshake CPU, full and resumed.

No sockets and no event loop: a client and a server `ssl.SSLObject` run their handshakes in
this process over memory BIOs (ECDSA P-256 certificates from trustme), and only the client's
calls are timed. Printed for TLS 1.2 and TLS 1.3, medians over interleaved rounds, in µs of
client time per connection:

- making the client's SSL object (``wrap_bio``), without and with a session to offer: the
  standard library's ``session`` setter copies the session through DER (``i2d``/``d2i``),
  which on OpenSSL 3.0 decodes the certificate inside it again;
- the client's handshake, full and resumed (TLS 1.3 also reads the server's ticket);
- what resumption saves in all: the floor of any client that resumes through ``ssl``, asyncsp
  included. A full connection costs more (connect, HTTP, the event loop); the ratio a resuming
  client can reach against one that does not resume is at most (full connection) / (full
  connection - saving).

    python benchmarks/tls_resumption.py [--connections 400] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import ssl
import statistics
import sys
import time

import trustme

MAX_FLIGHTS = 8
"""A handshake takes at most a few flights each way; more means it is stuck."""


def contexts(version: ssl.TLSVersion) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", key_type=trustme.KeyType.ECDSA).configure_cert(server)
    server.minimum_version = server.maximum_version = version
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.minimum_version = client.maximum_version = version
    return client, server


def connect(
    client: ssl.SSLContext, server: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[float, float, ssl.SSLSession | None, bool]:
    """One handshake over memory BIOs: (client object's creation, client's handshake) in
    seconds, the session to offer next time, and whether this one was resumed."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    started = time.perf_counter()
    tls = client.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
    made = time.perf_counter() - started
    peer = server.wrap_bio(s_in, s_out, server_side=True)
    spent = 0.0
    client_done = server_done = False
    for _ in range(MAX_FLIGHTS):
        if not client_done:
            started = time.perf_counter()
            try:
                tls.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.perf_counter() - started
        s_in.write(c_out.read())
        if not server_done:
            try:
                peer.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
        c_in.write(s_out.read())
        if client_done and server_done:
            break
    else:
        raise RuntimeError("the handshake did not finish")
    # TLS 1.3 tickets come after the handshake: the client reads them with the first data.
    peer.write(b"x")
    c_in.write(s_out.read())
    started = time.perf_counter()
    tls.read(1)
    spent += time.perf_counter() - started
    return made, spent, tls.session, tls.session_reused


def measure(version: ssl.TLSVersion, n: int, rounds: int) -> dict[str, float]:
    client, server = contexts(version)
    _, _, session, _ = connect(client, server, None)
    samples: dict[str, list[float]] = {"make": [], "make+session": [], "full": [], "resumed": []}
    for _ in range(rounds):
        for resume in (False, True):
            makes, handshakes = [], []
            for _ in range(n):
                made, spent, new_session, reused = connect(
                    client, server, session if resume else None
                )
                if reused != resume:
                    raise RuntimeError(f"resumed={reused}, expected {resume}")
                if resume and new_session is not None:
                    session = new_session
                makes.append(made)
                handshakes.append(spent)
            samples["make+session" if resume else "make"].append(statistics.median(makes))
            samples["resumed" if resume else "full"].append(statistics.median(handshakes))
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=400, help="per kind per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()} ({sys.executable}), {ssl.OPENSSL_VERSION}; "
        f"{args.connections} connections per kind, {args.rounds} rounds, medians"
    )
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        r = measure(version, args.connections, args.rounds)
        setter = r["make+session"] - r["make"]
        handshake_saving = r["full"] - r["resumed"]
        print(
            f"{version.name}: client µs per connection\n"
            f"  SSL object {r['make']:7.1f}, with a session to offer {r['make+session']:7.1f} "
            f"(the session setter: {setter:.1f})\n"
            f"  handshake  {r['full']:7.1f} full, {r['resumed']:7.1f} resumed "
            f"(saves {handshake_saving:.1f})\n"
            f"  resumption saves {handshake_saving - setter:.1f} µs per connection in all"
        )


if __name__ == "__main__":
    main()
