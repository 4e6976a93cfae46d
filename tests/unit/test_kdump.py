# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn_kvmwalk.kdump on kdump-compressed files written here in makedumpfile's
layout (diskdump_mod.h): pages by PFN, filtered pages, compression methods,
and a drgn Program reading physical memory through it."""

import struct
import zlib

import drgn
import pytest

from drgn_kvmwalk.kdump import KdumpError, KdumpFile, is_kdump, kdump_program

BLOCK = 4096
VMCOREINFO = (
    b"OSRELEASE=7.3-amd64\nPAGESIZE=4096\nKERNELOFFSET=0\n"
    b"SYMBOL(swapper_pg_dir)=ffffffff82000000\nNUMBER(phys_base)=0\n"
)


def write_kdump(path, pages, max_mapnr=64, flags=0x1, release=b"7.3-amd64", version=6):
    """pages: {pfn: 4096 bytes}; every other PFN is filtered out."""
    head = bytearray(BLOCK)
    head[:8] = b"KDUMP   "
    struct.pack_into("<i", head, 8, version)
    head[12 + 130 : 12 + 130 + len(release)] = release
    bitmap_blocks = 2
    struct.pack_into("<IiiII", head, 424, 0, BLOCK, 1, bitmap_blocks, max_mapnr)
    sub = bytearray(BLOCK)
    data_at = (1 + 1 + bitmap_blocks) * BLOCK + len(pages) * 24
    vmci_at = data_at
    body = bytearray(VMCOREINFO)
    descs = bytearray()
    for pfn in sorted(pages):
        raw = zlib.compress(pages[pfn]) if flags & 0x1 else pages[pfn]
        descs += struct.pack("<qIIQ", data_at + len(body), len(raw), flags, 0)
        body += raw
    struct.pack_into("<QiiQQqQ", sub, 0, 0, 31, 0, 0, max_mapnr, vmci_at, len(VMCOREINFO))
    struct.pack_into("<Q", sub, 96, max_mapnr)
    bitmap = bytearray(bitmap_blocks * BLOCK)
    for pfn in range(max_mapnr):  # 1st bitmap: every page exists
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    for pfn in pages:  # 2nd bitmap: the dumped ones
        bitmap[BLOCK + pfn // 8] |= 1 << (pfn % 8)
    path.write_bytes(bytes(head + sub + bitmap + descs + body))
    return path


def page(fill):
    return bytes([fill]) * 4096


def test_pages_come_back_by_pfn_and_filtered_ones_fault(tmp_path):
    dump = KdumpFile(
        str(write_kdump(tmp_path / "d", {3: page(0x33), 5: page(0x55), 40: page(0x40)}))
    )
    assert dump.release == "7.3-amd64" and dump.vmcoreinfo == VMCOREINFO
    assert dump.first_pfn() == 3
    assert dump.page(5) == page(0x55) and dump.page(40) == page(0x40)
    # A read across two dumped pages, and across into a filtered one.
    assert dump.read(3 * 4096 + 4090, 6) == b"\x33" * 6
    with pytest.raises(drgn.FaultError):
        dump.read(4 * 4096, 8)
    with pytest.raises(drgn.FaultError):
        dump.read(3 * 4096 + 4095, 2)
    with pytest.raises(drgn.FaultError):
        dump.page(64)  # beyond max_mapnr


def test_uncompressed_pages(tmp_path):
    dump = KdumpFile(str(write_kdump(tmp_path / "d", {1: page(7)}, flags=0)))
    assert dump.page(1) == page(7)


@pytest.mark.parametrize("flags,method", [(0x2, "lzo"), (0x4, "snappy"), (0x20, "zstd")])
def test_other_compressions_are_named(tmp_path, flags, method):
    dump = KdumpFile(str(write_kdump(tmp_path / "d", {1: page(7)}, flags=flags)))
    with pytest.raises(KdumpError, match=f"is {method}-compressed"):
        dump.page(1)


def test_not_a_kdump(tmp_path):
    (tmp_path / "elf").write_bytes(b"\x7fELF" + bytes(600))
    assert not is_kdump(str(tmp_path / "elf"))
    with pytest.raises(KdumpError, match="no KDUMP signature"):
        KdumpFile(str(tmp_path / "elf"))
    assert is_kdump(str(write_kdump(tmp_path / "d", {})))


def test_a_drgn_program_reads_physical_memory_through_it(tmp_path):
    prog = kdump_program(str(write_kdump(tmp_path / "d", {2: page(0xAB), 9: page(0xCD)})))
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    assert prog.read(2 * 4096 + 100, 4, True) == b"\xab" * 4
    assert prog.read(9 * 4096, 4096, True) == page(0xCD)
    with pytest.raises(drgn.FaultError):
        prog.read(3 * 4096, 8, True)


def test_open_core_falls_back_to_this_reader_when_libkdumpfile_refuses(tmp_path):
    """A release without a sublevel (7.3-amd64): libkdumpfile refuses the file
    or its first read (real dumps: the read; this small one: the open);
    open_core() then gives this reader's program."""
    from drgn_kvmwalk.console import open_core

    path = str(write_kdump(tmp_path / "d", {2: page(0xAB), 9: page(0xCD)}))
    plain = drgn.Program()
    # What the fallback is for: libkdumpfile refuses it (a plain Exception
    # when opened; drgn.FaultError when read).
    with pytest.raises(Exception, match="kdump|vmcoreinfo|read") as refused:  # noqa: B017
        plain.set_core_dump(path)
        plain.read(2 * 4096, 4, True)
    assert type(refused.value) in (Exception, drgn.FaultError)
    prog = open_core(path)
    assert prog.read(2 * 4096 + 100, 4, True) == b"\xab" * 4
    assert isinstance(prog.cache["drgn_kvmwalk.kdump_file"], KdumpFile)
