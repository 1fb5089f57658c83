"""Connecting a socket to the first address that answers (`asyncsp._resolve`)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from asyncsp._resolve import Address, connect_socket
from asyncsp._sockets import SocketOptions

LOCAL = "127.0.0.1"


def unused_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


async def test_connect_socket_takes_each_socket_from_the_caller_s_factory() -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), LOCAL, 0)
    port = listener.sockets[0].getsockname()[1]
    refused: Address = (socket.AF_INET, (LOCAL, unused_port()))
    answers: Address = (socket.AF_INET, (LOCAL, port))
    made: list[tuple[int, socket.socket]] = []

    def make_socket(family: int) -> socket.socket:
        made.append((family, SocketOptions().create_socket(family)))
        return made[-1][1]

    async with listener:
        with await connect_socket([refused, answers], make_socket) as sock:
            assert [family for family, _ in made] == [socket.AF_INET, socket.AF_INET]
            assert made[0][1].fileno() == -1  # the refused address's socket is closed
            assert sock is made[1][1] and sock.getpeername() == (LOCAL, port)
        with pytest.raises(ConnectionRefusedError):
            await connect_socket([refused], make_socket)
        assert made[-1][1].fileno() == -1
