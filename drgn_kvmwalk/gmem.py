# SPDX-License-Identifier: LGPL-2.1-or-later
"""Guest memory read through a walk, page by page (pure: no drgn).

A guest address range is cut at 4 KiB boundaries of the guest address: every
page size of every dimension (guest page, SPTE, host page) is a multiple of
4 KiB and aligned to it, so each 4 KiB piece of the range lies in one page of
each and has one host physical address range.  Each piece is translated with
the caller's ``translate`` (the SPTE walk of a GPA, the shadow root's walk of
a GVA, or the guest's walk of a GVA and then KVM's) and read from host
physical memory.  A piece that no walk maps, or whose host page the target
does not hold (a filtered dump drops guest memory), is kept with the reason
and without bytes: nothing is made up.  Neighbouring pieces that continue
each other (contiguous in host memory, or failing for the same reason) are
merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Tuple

from .gwalk import GuestAddressError
from .walk import AddressError, PhysMem, PhysMemError

__all__ = [
    "MAX_READ",
    "GuestRead",
    "ReadPiece",
    "Translation",
    "hexdump_lines",
    "read_guest_memory",
]

PIECE = 4096
# One read's limit: a hexdump of 1 MiB is 64 Ki lines already.
MAX_READ = 1 << 20


class Translation(NamedTuple):
    """Where one guest address lands: ``hpa`` (None when it does not, then
    ``error`` says why) and, when the walk goes through one, the ``gpa``."""

    gpa: Optional[int]
    hpa: Optional[int]
    error: Optional[str]


@dataclass(frozen=True)
class ReadPiece:
    """``length`` bytes from guest address ``addr``: contiguous in guest
    physical (``gpa``, None when the walk has none: the shadow root's walk)
    and host physical memory (``hpa``); ``data`` None when they could not be
    read, and ``error`` says why."""

    addr: int
    length: int
    gpa: Optional[int]
    hpa: Optional[int]
    data: Optional[bytes]
    error: Optional[str]


@dataclass(frozen=True)
class GuestRead:
    """``length`` bytes of guest memory from ``addr`` (a GPA or a GVA: ``space``),
    in the order of the range."""

    addr: int
    length: int
    space: str  # "GPA" or "GVA"
    pieces: Tuple[ReadPiece, ...]

    @property
    def data(self) -> Optional[bytes]:
        """All the bytes, or None when a piece could not be read."""
        if any(p.data is None for p in self.pieces):
            return None
        return b"".join(p.data for p in self.pieces if p.data is not None)

    @property
    def missing(self) -> int:
        """How many of the bytes could not be read."""
        return sum(p.length for p in self.pieces if p.data is None)


def _continues(a: ReadPiece, b: ReadPiece) -> bool:
    if (a.data is None) != (b.data is None):
        return False
    if a.data is None:
        return a.error == b.error
    assert a.hpa is not None and b.hpa is not None
    if a.hpa + a.length != b.hpa:
        return False
    if a.gpa is None or b.gpa is None:
        return a.gpa is None and b.gpa is None
    return a.gpa + a.length == b.gpa


def _merge(a: ReadPiece, b: ReadPiece) -> ReadPiece:
    data = None if a.data is None or b.data is None else a.data + b.data
    return ReadPiece(a.addr, a.length + b.length, a.gpa, a.hpa, data, a.error)


def read_guest_memory(
    translate: Callable[[int], Translation],
    mem: PhysMem,
    addr: int,
    length: int,
    space: str,
    unreadable: str = "cannot be read",
) -> GuestRead:
    """Read ``length`` bytes of guest memory from ``addr``.

    :param translate: guest address -> :class:`Translation`; may raise
        :class:`AddressError` or :class:`GuestAddressError` for an address
        the root or the guest's mode cannot translate
    :param mem: host physical memory
    :param space: "GPA" or "GVA", for messages and renderers
    :param unreadable: what to say of host memory the target does not hold
    :raises AddressError, GuestAddressError: ``addr`` itself cannot be
        translated (a bad argument); past it, such pages become pieces
        with the reason
    :raises ValueError: ``length`` is not in 1..MAX_READ, or the range
        passes the end of the 64-bit address space
    """
    if not 0 < length <= MAX_READ:
        raise ValueError(f"length {length} is not in 1..{MAX_READ}")
    if addr + length > 1 << 64:
        raise ValueError(f"{length} bytes from {addr:#x} pass the end of the address space")
    pieces: List[ReadPiece] = []
    pos, end = addr, addr + length
    while pos < end:
        n = min(end, (pos | (PIECE - 1)) + 1) - pos
        try:
            t = translate(pos)
        except (AddressError, GuestAddressError) as e:
            if pos == addr:
                raise
            t = Translation(None, None, str(e))
        data: Optional[bytes] = None
        error = t.error
        if t.hpa is not None:
            try:
                data = mem.read(t.hpa, n)
            except PhysMemError:
                error = f"HPA {t.hpa:#x} {unreadable}"
        elif error is None:
            error = "not mapped"
        piece = ReadPiece(pos, n, t.gpa, t.hpa, data, None if data is not None else error)
        if pieces and _continues(pieces[-1], piece):
            pieces[-1] = _merge(pieces[-1], piece)
        else:
            pieces.append(piece)
        pos += n
    return GuestRead(addr, length, space, tuple(pieces))


def _printable(data: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data)


def hexdump_lines(r: GuestRead) -> List[str]:
    """``xxd``-like lines: 16 bytes a line at 16-byte aligned guest addresses
    (the first and last may be partial), in groups of two bytes, then the
    printable characters; before each piece where it lands, and for a piece
    that could not be read, why."""
    width = max(8, len(f"{r.addr + r.length - 1:x}"))
    lines: List[str] = []
    for p in r.pieces:
        last = p.addr + p.length - 1
        span = f"{r.space} {p.addr:#x}-{last:#x}"
        if p.data is None:
            lines.append(f"# {span}: {p.error}")
            continue
        where = [f"GPA {p.gpa:#x}"] if p.gpa is not None and r.space != "GPA" else []
        where.append(f"HPA {p.hpa:#x}")
        lines.append(f"# {span}: " + ", ".join(where))
        line_start = p.addr & ~15
        while line_start <= last:
            lo = max(line_start, p.addr)
            hi = min(line_start + 16, p.addr + p.length)
            chunk = p.data[lo - p.addr : hi - p.addr]
            cells = ["  "] * (lo - line_start) + [f"{b:02x}" for b in chunk]
            cells += ["  "] * (16 - len(cells))
            hexes = " ".join("".join(cells[i : i + 2]) for i in range(0, 16, 2))
            text = " " * (lo - line_start) + _printable(chunk)
            lines.append(f"{line_start:0{width}x}: {hexes}  {text}")
            line_start += 16
    return lines
