# SPDX-License-Identifier: LGPL-2.1-or-later
"""A reader of makedumpfile's kdump-compressed dumps, for the dumps drgn's own
reader (libkdumpfile) refuses.

libkdumpfile (0.5.x, the one drgn's wheels bundle) parses the kernel release
as VERSION.PATCHLEVEL.SUBLEVEL before it reads any page
(``linux_ver_revalidate()`` in src/kdumpfile/util.c), so it cannot read a
dump of a kernel whose release has no sublevel: Debian experimental's release
candidates are ``7.3-amd64``.  This module reads the format itself and hands
the pages to drgn as physical memory of a custom Linux kernel program
(:meth:`drgn.Program.set_linux_kernel_custom`); drgn then translates virtual
addresses with the kernel's own page tables, as for any dump.

The format is makedumpfile's (diskdump_mod.h): block 0 ``struct
disk_dump_header``, then ``sub_hdr_size`` blocks of ``struct
kdump_sub_header`` (with the VMCOREINFO note's offset), ``bitmap_blocks``
blocks of two bitmaps (pages that exist, pages that were dumped), then one
``struct page_desc`` per dumped page in PFN order, then the page data.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Dict, NamedTuple, Optional, Union

from drgn import FaultError, Platform, Program, host_platform

__all__ = ["KDUMP_SIGNATURE", "KdumpError", "KdumpFile", "is_kdump", "kdump_program"]

KDUMP_SIGNATURE = b"KDUMP   "
_PAGE_DESC = struct.Struct("<qIIQ")  # offset, size, flags, page_flags
# page_desc.flags (diskdump_mod.h)
_ZLIB, _LZO, _SNAPPY, _ZSTD = 0x1, 0x2, 0x4, 0x20
_METHODS = {_LZO: "lzo", _SNAPPY: "snappy", _ZSTD: "zstd"}


class KdumpError(Exception):
    """The file is not a kdump-compressed dump this reader can read."""


class _Header(NamedTuple):
    version: int
    release: str
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    vmcoreinfo: bytes


def is_kdump(path: str) -> bool:
    """Whether ``path`` starts with makedumpfile's kdump signature."""
    try:
        with open(path, "rb") as f:
            return f.read(len(KDUMP_SIGNATURE)) == KDUMP_SIGNATURE
    except OSError:
        return False


def _read_header(f: BinaryIO) -> _Header:
    head = f.read(464)
    if len(head) < 464 or head[:8] != KDUMP_SIGNATURE:
        raise KdumpError("not a kdump-compressed dump (no KDUMP signature)")
    (version,) = struct.unpack_from("<i", head, 8)
    # struct new_utsname: six 65-byte strings from offset 12; release is the third.
    release = head[12 + 2 * 65 : 12 + 3 * 65].split(b"\0", 1)[0].decode(errors="replace")
    # After the utsname (ends at 402) comes a struct timeval (8-aligned: 408..424).
    (_status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr) = struct.unpack_from(
        "<IiiII", head, 424
    )
    if version < 1 or block_size <= 0 or block_size & (block_size - 1) or sub_hdr_size < 0:
        raise KdumpError(
            f"kdump header version {version}, block size {block_size}: "
            "not a layout this reader knows"
        )
    f.seek(block_size)
    sub = f.read(104)
    if len(sub) < 48:
        raise KdumpError("kdump sub-header is cut short")
    offset_vmcoreinfo, size_vmcoreinfo = struct.unpack_from("<qQ", sub, 32)
    if version >= 6 and len(sub) >= 104:
        (max_mapnr,) = struct.unpack_from("<Q", sub, 96)  # max_mapnr_64
    vmcoreinfo = b""
    if version >= 3 and size_vmcoreinfo:
        f.seek(offset_vmcoreinfo)
        vmcoreinfo = f.read(size_vmcoreinfo)
    return _Header(version, release, block_size, sub_hdr_size, bitmap_blocks, max_mapnr, vmcoreinfo)


class KdumpFile:
    """The pages of a kdump-compressed dump by PFN.

    :param path: the dump
    :raises KdumpError: not a dump this reader can read
    :raises OSError: the file cannot be read
    """

    def __init__(self, path: str) -> None:
        import numpy as np  # only for dumps: a walk of a live kernel never needs it

        self.path = path
        self.f = open(path, "rb")
        h = _read_header(self.f)
        self.header = h
        self.page_size = h.block_size
        bitmap_at = (1 + h.sub_hdr_size) * h.block_size
        half = h.bitmap_blocks * h.block_size // 2
        self.f.seek(bitmap_at + half)  # the 2nd bitmap: pages in the dump
        raw = np.frombuffer(self.f.read(half), dtype=np.uint8)
        dumped = np.unpackbits(raw, bitorder="little")[: h.max_mapnr].astype(bool)
        self.dumped = dumped
        # rank[pfn]: how many dumped pages come before it = its page_desc index.
        self.rank = np.cumsum(dumped, dtype=np.int64) - dumped
        self.desc_at = (1 + h.sub_hdr_size + h.bitmap_blocks) * h.block_size
        self.cache: Dict[int, bytes] = {}

    @property
    def release(self) -> str:
        return self.header.release

    @property
    def vmcoreinfo(self) -> bytes:
        return self.header.vmcoreinfo

    def first_pfn(self) -> Optional[int]:
        """The lowest PFN the dump holds, if any."""
        first = int(self.dumped.argmax())
        return first if self.dumped[first] else None

    def page(self, pfn: int) -> bytes:
        """The page at ``pfn``.

        :raises FaultError: the dump does not hold it (filtered or beyond memory)
        """
        data = self.cache.get(pfn)
        if data is not None:
            return data
        if pfn >= len(self.dumped) or not self.dumped[pfn]:
            raise FaultError("page not in the kdump-compressed dump", pfn * self.page_size)
        self.f.seek(self.desc_at + int(self.rank[pfn]) * _PAGE_DESC.size)
        offset, size, flags, _ = _PAGE_DESC.unpack(self.f.read(_PAGE_DESC.size))
        self.f.seek(offset)
        raw = self.f.read(size)
        if flags & _ZLIB:
            data = zlib.decompress(raw)
        elif any(flags & bit for bit in _METHODS):
            method = next(name for bit, name in _METHODS.items() if flags & bit)
            raise KdumpError(
                f"{self.path}: page {pfn:#x} is {method}-compressed; this reader "
                "reads zlib (makedumpfile -c) and uncompressed pages"
            )
        else:
            data = raw
        if len(data) != self.page_size:
            raise FaultError(
                f"page {pfn:#x} of the dump is {len(data)} bytes", pfn * self.page_size
            )
        if len(self.cache) >= 4096:
            self.cache.clear()
        self.cache[pfn] = data
        return data

    def read(self, address: int, count: int) -> bytes:
        """``count`` bytes of physical memory from ``address``."""
        out = bytearray()
        while count > 0:
            pfn, off = divmod(address, self.page_size)
            n = min(count, self.page_size - off)
            out += self.page(pfn)[off : off + n]
            address += n
            count -= n
        return bytes(out)

    def close(self) -> None:
        self.f.close()


def kdump_program(dump: Union[str, KdumpFile], platform: Optional[Platform] = None) -> Program:
    """A drgn Program of the Linux kernel in a kdump-compressed dump (its path,
    or the :class:`KdumpFile` already open on it, which the program then
    keeps open), no debug info loaded yet.

    :raises KdumpError: not a dump this reader can read, or without VMCOREINFO
    :raises OSError: the file cannot be read
    """
    if isinstance(dump, str):
        dump = KdumpFile(dump)
    if not dump.vmcoreinfo:
        raise KdumpError(f"{dump.path} has no VMCOREINFO note")
    prog = Program(platform or host_platform)

    def read(address: int, count: int, offset: int, physical: bool) -> bytes:
        return dump.read(address, count)

    prog.add_memory_segment(0, len(dump.dumped) * dump.page_size, read, physical=True)
    prog.set_linux_kernel_custom(dump.vmcoreinfo, False)
    prog.cache["drgn_kvmwalk.kdump_file"] = dump  # keeps the file open with the program
    return prog
