"""Lines of a data file read in linear time and bounded memory, whatever the file holds.

A file is read in blocks; each block is split at its newlines once, and a line that spans blocks is kept as a
list of its pieces and joined once, when its newline arrives. A line longer than a cap is not kept at all:
its bytes are counted as they pass and it comes out as an `Overlong` marker with its size. So each byte is
looked at a fixed number of times, and what is held at once is one block, its pieces and one line of at most
`cap` bytes, whether the file is a 512 MB line, 2 GB of zeros or a binary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 4 * 2**20  # bytes read and split into lines at once


@dataclass(frozen=True)
class Overlong:
    """A line longer than the cap: only its size in bytes (without the newline) is known."""

    size: int


def iter_lines(
    f: BinaryIO, start: int = 0, end: int | None = None, cap: int = 2**62, block: int = BLOCK
) -> Iterator[bytes | Overlong]:
    """The lines that start in [start, end) of a file opened in binary mode, without their newline; a line
    over `cap` bytes comes out as `Overlong(size)`. A last line without a newline is a line.

    >>> import io
    >>> list(iter_lines(io.BytesIO(b"ab\\n\\ncdefgh\\nij"), cap=4, block=3))
    [b'ab', b'', Overlong(size=6), b'ij']
    """
    f.seek(start)
    remaining = end - start if end is not None else 2**63
    pending: list[bytes] = []  # pieces of the line that the next block continues
    held = 0  # bytes in pending
    over = -1  # the size so far of an overlong line being skipped; -1 when none is
    while remaining > 0:
        data = f.read(min(remaining, block))
        if not data:
            break
        remaining -= len(data)
        pieces = data.split(b"\n")
        last = pieces.pop()  # the start of a line that a later block ends (b"" when data ends in \n)
        for i, piece in enumerate(pieces):
            if i == 0 and over >= 0:
                yield Overlong(over + len(piece))
                over = -1
            elif i == 0 and pending:
                size = held + len(piece)
                if size > cap:
                    yield Overlong(size)
                else:
                    pending.append(piece)
                    yield b"".join(pending)
                pending, held = [], 0
            elif len(piece) > cap:
                yield Overlong(len(piece))
            else:
                yield piece
        if over >= 0:  # no newline in this block: still inside the overlong line
            over += len(last)
        elif last:
            pending.append(last)
            held += len(last)
            if held > cap:
                over, pending, held = held, [], 0
    if over >= 0:
        yield Overlong(over)
    elif pending:
        yield b"".join(pending)


def next_line_start(f: BinaryIO, offset: int, block: int = BLOCK) -> int:
    """The offset just after the first newline at or after `offset`, or the file's size when there is none;
    read in blocks, so a file without newlines costs one pass and one block of memory."""
    f.seek(offset)
    position = offset
    while True:
        data = f.read(block)
        if not data:
            return position
        found = data.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(data)


__all__ = ["BLOCK", "Overlong", "iter_lines", "next_line_start"]
