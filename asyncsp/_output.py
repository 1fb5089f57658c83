"""What the command line prints: rich on a terminal, plain aligned text otherwise.

Only the command line imports this module; `rich` is imported when a terminal asks for it,
so piped output (and the tests) need nothing beyond the standard library here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

__all__ = ["Output", "printable", "progress"]

_STYLES = {"ok": "green", "bad": "bold red", "warn": "yellow", "dim": "dim", "head": "bold"}
_PLAIN_MARKS = {"bad": "! "}
"""Without colour, a finding still stands out."""


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0 and C1 controls, DEL and the bidirectional overrides: what a peer could use to move the
cursor, retitle or clear a terminal (ESC sequences; 0x9b is a one-byte CSI) or reorder text."""


def printable(text: str, *, keep: str = "") -> str:
    """*text* with every control character but those in *keep* shown as an escape (``\\x1b``).

    Whatever a peer sent (replies, certificate names, error messages quoting either) goes
    through this before it reaches a terminal.
    """
    return _UNSAFE.sub(lambda m: m[0] if m[0] in keep else _escape(m[0]), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class Output:
    """Lines, headings and tables for one stream, styled only when it is a terminal.

    Text is never parsed as rich markup: host names such as ``[::1]`` print as they are.
    Control characters are shown as escapes (`printable`): tabs and line breaks stay in a
    line, nothing stays in a table cell.
    """

    def __init__(self, stream: TextIO, *, styled: bool | None = None) -> None:
        self.stream = stream
        self.styled = _is_terminal(stream) if styled is None else styled
        self._console: Any = None
        if self.styled:
            from rich.console import Console

            self._console = Console(file=stream, highlight=False, soft_wrap=True)

    def line(self, text: str = "", style: str | None = None) -> None:
        """Print one line; *style* is ``ok``, ``bad``, ``warn``, ``dim`` or ``head``."""
        text = printable(text, keep="\t\n")
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(text, style=_STYLES.get(style or "", "")))
        else:
            print(_PLAIN_MARKS.get(style or "", "") + text, file=self.stream, flush=True)

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        title: str | None = None,
        styles: Sequence[str | None] | None = None,
    ) -> None:
        """Print a table; *styles* gives one optional style per row."""
        rows = [[printable(cell) for cell in row] for row in rows]
        title = None if title is None else printable(title)
        if self._console is not None:
            from rich.table import Table
            from rich.text import Text

            table = Table(title=title, title_justify="left", header_style="bold")
            for column in columns:
                table.add_column(column)
            for index, row in enumerate(rows):
                style = _STYLES.get((styles[index] if styles else None) or "", "")
                table.add_row(*(Text(cell) for cell in row), style=style)
            self._console.print(table)
            return
        if title:
            print(title, file=self.stream)
        widths = [len(c) for c in columns]
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        for row in (columns, *rows):
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            print("  ".join(cells).rstrip(), file=self.stream)
        self.stream.flush()

    def field(self, name: str, value: str, width: int = 10) -> None:
        """Print ``name  value`` with the names aligned."""
        self.line(f"  {name.ljust(width)}  {value}")


@contextlib.contextmanager
def progress(stream: TextIO, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on *stream* when it is a terminal; yields the function that advances it.

    Nothing is drawn when *stream* is not a terminal (piped output stays clean).
    """
    if not _is_terminal(stream):
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(file=stream),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
