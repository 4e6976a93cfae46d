# SPDX-License-Identifier: LGPL-2.1-or-later
"""Lines of numbers made for many rows at once: the --dump renderer's engine.

A line is a :data:`Layout`: constant text, and numbers taken from uint64
columns, in decimal (JSON) or in hex with a minimum width (text columns).
:func:`format_lines` makes the lines of every row of the columns the way
Python's own formatting would (``f"{v}"``, ``f"{v:#0{w}x}"``), without a
Python operation per row: each number column becomes a matrix of digit
characters in a few numpy passes, and the rows are cut into segments in
which every number has the same width, so that each segment is one character
matrix written out at once.  Rows in address order change widths rarely
(addresses grow; host pages come in long runs), so segments are long; when
they are not, the lines are made one by one.

Nothing here knows about SPTEs.  Needs numpy, like the whole-table views.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["Dec", "Hex", "Layout", "format_lines", "format_lines_slowly"]

_U64 = np.dtype("<u8")


class Dec:
    """Column ``col`` in decimal, as ``str(int)`` writes it; with ``pad``,
    right-aligned in ``pad`` characters as ``f"{v:>{pad}}"`` does."""

    __slots__ = ("col", "pad")

    def __init__(self, col: int, pad: int = 0) -> None:
        self.col = col
        self.pad = pad


class Hex:
    """Column ``col`` as ``f"{v:#0{width + 2}x}"``: "0x" and at least ``width``
    lowercase hex digits (more when the value needs them)."""

    __slots__ = ("col", "width")

    def __init__(self, col: int, width: int) -> None:
        self.col = col
        self.width = width


# Constant text, a number, or the row's own text (an index into the texts
# given to format_lines, one per row: the flags).
Piece = Union[str, Dec, Hex, "Text"]


class Text:
    """The row's own text: ``texts[which[row]]``."""

    __slots__ = ()


Layout = Sequence[Piece]

# Four decimal digits per table entry; two hex digits per byte.
_DEC4 = np.frombuffer(b"".join(b"%04d" % i for i in range(10000)), dtype="<u4")
_HEX2 = np.frombuffer(b"".join(b"%02x" % i for i in range(256)), dtype="<u2")
_POW10 = np.array([10**k for k in range(1, 20)], dtype=_U64)
_POW10_0 = np.array([10**k for k in range(20)], dtype=_U64)
_POW16 = np.array([16**k for k in range(1, 16)], dtype=_U64)


def _dec_digits(v: "np.ndarray[Any, Any]") -> Tuple["np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]:
    """(N x 20 digit characters with leading zeros, number of digits)."""
    n = len(v)
    digits = _dec_width(v)
    groups = (int(digits.max()) + 3) // 4 if n else 1  # of 4 digits, from the right
    out = np.empty((n, 5), dtype="<u4")
    out[:, : 5 - groups] = _DEC4[0]
    x = v
    for col in range(4, 4 - groups, -1):
        q = x // np.uint64(10000)
        out[:, col] = _DEC4.take((x - q * np.uint64(10000)).astype(np.intp))
        x = q
    return out.view(np.uint8), digits


def _dec_width(v: "np.ndarray[Any, Any]") -> "np.ndarray[Any, Any]":
    """The number of decimal digits of each value (1 for 0)."""
    # The bit length from the float's exponent: exact below 2**53, and at
    # most one too large above (rounding up to a power of two).  Then
    # floor(log10(2) * bits) (1233 / 4096 is just under log10(2)) is the
    # digit count or one less; two comparisons with powers of ten settle it.
    exp = (v.astype(np.float64).view(np.int64) >> 52) - 1022  # bit length, for v > 0
    t = np.clip((exp * 1233) >> 12, 0, 19)
    digits = t + (v >= _POW10_0.take(t))
    digits -= (digits > 1) & (v < _POW10_0.take(np.maximum(digits - 1, 0)))
    result: "np.ndarray[Any, Any]" = np.maximum(digits, 1)
    return result


def _hex_digits(v: "np.ndarray[Any, Any]") -> Tuple["np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]:
    """(N x 16 hex digit characters with leading zeros, digits needed)."""
    big = v.astype(">u8").view(np.uint8).reshape(len(v), 8)
    out = _HEX2[big].view(np.uint8).reshape(len(v), 16)
    digits = 1 + np.searchsorted(_POW16, v, side="right")
    return out, digits


def _rows(
    array: "np.ndarray[Any, Any]", offset: int, count: int, stride: int, width: int
) -> "np.ndarray[Any, Any]":
    """``count`` byte strings of ``width`` bytes in ``array``'s buffer, from
    ``offset`` on, ``stride`` bytes apart: one element per row, so that a
    copy is one memcpy per row."""
    return np.ndarray((count,), dtype=f"V{width}", buffer=array, offset=offset, strides=(stride,))


def _digits_key(piece: Union[Dec, Hex]) -> Tuple[type, int, bool]:
    return type(piece), piece.col, isinstance(piece, Dec) and piece.pad > 0


def format_lines(
    layout: Layout,
    columns: Sequence["np.ndarray[Any, Any]"],
    texts: Sequence[str] = (),
    which: "np.ndarray[Any, Any] | None" = None,
) -> str:
    """The lines of ``layout`` for every row of ``columns`` (uint64 arrays
    of one length), each ended by a newline.  :class:`Text` pieces write
    ``texts[which[row]]``."""
    n = len(columns[0]) if columns else len(which if which is not None else ())
    if not n:
        return ""
    digits = {}
    width_keys: List["np.ndarray[Any, Any]"] = []
    for piece in layout:
        if isinstance(piece, (Dec, Hex)):
            key = _digits_key(piece)
            if key not in digits:
                v = columns[piece.col].astype(_U64, copy=False)
                if isinstance(piece, Hex):
                    digits[key] = _hex_digits(v)
                else:
                    chars, need = _dec_digits(v)
                    if piece.pad:  # leading zeros become the padding spaces
                        lead = np.arange(chars.shape[1]) < (chars.shape[1] - need)[:, None]
                        chars = np.where(lead, np.uint8(32), chars)
                    digits[key] = chars, need
            chars, need = digits[key]
            pad = piece.width if isinstance(piece, Hex) else piece.pad
            width_keys.append(np.maximum(need, pad) if pad else need)
    if which is not None:
        width_keys.append(np.asarray(which))
    # Where any width (or the row's text) changes: one number per row, from
    # widths of at most 20 and text indexes that fit beside them.
    packed = np.zeros(n, dtype=np.int64)
    for widths in width_keys[: len(width_keys) - (which is not None)]:
        packed = packed * 32 + widths
    if which is not None:
        packed = packed * (len(texts) + 1) + width_keys[-1]
    change = np.flatnonzero(packed[1:] != packed[:-1]) + 1
    bounds = [0, *change.tolist(), n]
    encoded = [t.encode() for t in texts]
    # A segment of many rows: a template line (the constant text, zeros where
    # the numbers go) and where each number goes, copied row by row.  A
    # segment of a few rows: its lines formatted one by one (cheaper than
    # planning a matrix).  One buffer for all segments, in order.
    # (first row, end row, offset in the buffer, the lines themselves or the
    # template line, the numbers' places in it: None for lines)
    plans: List[
        Tuple[int, int, int, bytes, Optional[List[Tuple[int, "np.ndarray[Any, Any]", int]]]]
    ] = []
    total = 0
    # Neighbouring short segments are formatted together, as one span.
    spans: List[Tuple[int, int, bool]] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        short = b - a < _FEW
        if short and spans and spans[-1][2]:
            spans[-1] = (spans[-1][0], b, True)
        else:
            spans.append((a, b, short))
    for a, b, short in spans:
        if short:
            part = None if which is None else which[a:b]
            text = format_lines_slowly(layout, [c[a:b] for c in columns], texts, part).encode()
            plans.append((a, b, total, text, None))
            total += len(text)
            continue
        at_a = [int(w[a]) for w in width_keys]  # the widths (and text) of this segment
        k = 0
        line = b""
        fields: List[Tuple[int, "np.ndarray[Any, Any]", int]] = []  # (offset, digits, width)
        for piece in layout:
            if isinstance(piece, str):
                line += piece.encode()
            elif isinstance(piece, Text):
                line += encoded[at_a[-1]]
            else:
                if isinstance(piece, Hex):
                    line += b"0x"
                fields.append((len(line), digits[_digits_key(piece)][0], at_a[k]))
                line += bytes(at_a[k])
                k += 1
        line += b"\n"
        plans.append((a, b, total, line, fields))
        total += (b - a) * len(line)
    buf = np.empty(total, dtype=np.uint8)
    for a, b, at, line, places in plans:
        if places is None:  # lines made one by one
            buf[at : at + len(line)] = np.frombuffer(line, np.uint8)
            continue
        m, width = b - a, len(line)
        # One copy per row of the template, then one per row and number.
        _rows(buf, at, m, width, width)[...] = np.void(line)
        for x, chars, w in places:
            src = _rows(chars, a * chars.shape[1] + chars.shape[1] - w, m, chars.shape[1], w)
            _rows(buf, at + x, m, width, w)[...] = src
    return str(buf.data, "utf-8")  # the text pieces were encoded so


_FEW = 24  # rows below which a segment's lines are formatted one by one


def _spec(layout: Layout, ncols: int) -> str:
    """A str.format() template of one line: the columns by number, then the
    row's text."""
    spec = ""
    for piece in layout:
        if isinstance(piece, str):
            spec += piece.replace("{", "{{").replace("}", "}}")
        elif isinstance(piece, Text):
            spec += f"{{{ncols}}}"
        elif isinstance(piece, Dec):
            spec += f"{{{piece.col}:>{piece.pad}}}" if piece.pad else f"{{{piece.col}}}"
        else:
            spec += f"{{{piece.col}:#0{piece.width + 2}x}}"
    return spec + "\n"


def format_lines_slowly(
    layout: Layout,
    columns: Sequence["np.ndarray[Any, Any]"],
    texts: Sequence[str] = (),
    which: "np.ndarray[Any, Any] | None" = None,
) -> str:
    """What :func:`format_lines` makes, one row at a time with Python's own
    formatting: its reference, and its way for segments of a few rows."""
    spec = _spec(layout, len(columns))
    cols: List[Sequence[Any]] = [c.tolist() for c in columns]
    if which is not None:
        cols.append([texts[i] for i in which.tolist()])
    return "".join(spec.format(*row) for row in zip(*cols))
