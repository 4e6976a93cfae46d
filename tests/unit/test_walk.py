# SPDX-License-Identifier: LGPL-2.1-or-later
"""The shadow walk and SPTE decoding on synthetic tables (no kernel needed)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_kvmwalk.spte import (
    FROZEN_SPTE_VALUES,
    decode_spte,
    ept_format,
    x86_format,
)
from drgn_kvmwalk.walk import AddressError, Root, TableCache, check_addr, walk_addr

from .tables import MMU_PRESENT, FakeMem, Tables

X86 = x86_format(phys_bits=48)
EPT = ept_format(phys_bits=46)
HOST_W = 1 << 9
MMU_W = 1 << 10
# make_nonleaf_spte(): P W U A + MMU-present; leaves also D and the writable bits.
X86_TABLE = MMU_PRESENT | 0x27
X86_LEAF = MMU_PRESENT | HOST_W | MMU_W | 0x67
EPT_TABLE = MMU_PRESENT | 0x107
EPT_LEAF = MMU_PRESENT | (1 << 57) | (1 << 58) | 0x337  # RWX, MT=WB, A, D


def npt(level=4, fill=0):
    mem = FakeMem()
    t = Tables(mem, level, X86_TABLE, X86_LEAF, fill)
    return mem, t, Root(t.root, level, True, level)


@pytest.mark.parametrize("level", [4, 5])
@pytest.mark.parametrize("leaf_level,size", [(1, 1 << 12), (2, 1 << 21), (3, 1 << 30)])
def test_leaf_sizes(level, leaf_level, size):
    mem, t, root = npt(level)
    gpa = (0x1234 << 30) + 0x12345678 if level == 5 else 0x7F12345678
    page = 0x2_0000_0000 + (1 << 30) * 3
    t.map(gpa, page, leaf_level)
    w = walk_addr(TableCache(mem), X86, root, gpa)
    assert w.stop is None
    assert w.page_size == size
    assert w.hpa == page + (gpa & (size - 1))
    assert [s.level for s in w.steps] == list(range(level, leaf_level - 1, -1))
    assert w.steps[-1].leaf and all(not s.leaf for s in w.steps[:-1])
    assert w.steps[-1].info.flags[:6] == ["P", "W", "U", "A", "D"] + (
        ["PS"] if leaf_level > 1 else ["mmu-present"]
    )


def test_indices_and_sptep():
    mem, t, root = npt(4)
    gpa = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0xABC
    sptep = t.map(gpa, 0x5000_0000)
    w = walk_addr(TableCache(mem), X86, root, gpa)
    assert [s.index for s in w.steps] == [3, 5, 7, 9]
    assert w.steps[0].table == t.root and w.steps[0].sptep == t.root + 8 * 3
    assert w.steps[-1].sptep == sptep
    assert w.hpa == 0x5000_0ABC


def test_one_read_per_table_page():
    mem, t, root = npt(4)
    for i in range(16):
        t.map(0x4000_0000 + i * 4096, 0x9000_0000 + i * 4096)
    cache = TableCache(mem)
    mem.reads = 0
    for i in range(16):
        walk_addr(cache, X86, root, 0x4000_0000 + i * 4096)
    assert mem.reads == 4  # four table pages, each read whole, once


@pytest.mark.parametrize("fill", [0, 1 << 63])  # 6.10+ fills empty SPTEs with bit 63
def test_not_present_stops_at_that_level(fill):
    mem, t, root = npt(4, fill)
    t.map(0x4000_0000, 0x9000_0000)
    w = walk_addr(TableCache(mem), X86, root, 0x4000_0000 + (1 << 21))
    assert w.hpa is None and w.page_size is None
    assert w.stop == "SPTE not present" and w.stop_level == 2
    assert len(w.steps) == 3 and not w.steps[-1].present
    w = walk_addr(TableCache(mem), X86, root, 1 << 40)
    assert w.stop_level == 4 and len(w.steps) == 1


def test_non_present_entry_is_never_followed():
    # A stale address in an SPTE without the MMU-present bit must not be walked
    # into (__shadow_walk_next() checks is_shadow_present_pte() since v5.16).
    mem, t, root = npt(4)
    child = mem.alloc()
    t.put(0, 4, child | 0x27)  # hardware bits but no bit 11
    w = walk_addr(TableCache(mem), X86, root, 0)
    assert w.stop_level == 4 and w.hpa is None


def test_mmio_spte():
    fmt = x86_format(phys_bits=46, l1tf=True)  # MMIO caching on: bit 51 | P
    mem, t, root = npt(4)
    gfn = 0xFEE00
    gen = 0x5A5A5 & ((1 << 19) - 1)
    gpa = gfn << 12
    low = fmt.nonpresent_or_rsvd_lower_gfn_mask
    spte = fmt.mmio_value | (gpa & low) | ((gpa & ~low) << 5)
    spte |= (gen & 0xFF) << 3 | (gen >> 8) << 52
    assert fmt.mmio_gfn(spte) == gfn
    t.put(gpa, 1, spte)
    w = walk_addr(TableCache(mem), fmt, root, gpa)
    assert w.hpa is None and w.stop_level == 1
    info = w.steps[-1].info
    assert info.kind == "mmio" and info.mmio_gfn == gfn and info.mmio_gen == gen
    assert w.stop.startswith("MMIO SPTE (gfn 0xfee00")


def test_mmio_not_recognised_when_caching_is_off():
    fmt = x86_format(phys_bits=52)  # MAXPHYADDR 52: no reserved bit, no MMIO caching
    spte = (1 << 51) | 1
    assert decode_spte(fmt, spte, 1).kind == "none"


@pytest.mark.parametrize("frozen", sorted(FROZEN_SPTE_VALUES))
def test_frozen_spte(frozen):
    mem, t, root = npt(4)
    t.put(0x1000, 1, frozen)
    w = walk_addr(TableCache(mem), X86, root, 0x1000)
    assert w.steps[-1].info.kind == "frozen" and w.hpa is None
    assert "frozen" in w.stop


def test_x86_nx_and_readonly():
    mem, t, root = npt(4)
    t.map(0x2000, 0x7000, extra=1 << 63)
    sptep = t.map(0x3000, 0x8000)
    mem.set(sptep, (0x8000 | X86_LEAF) & ~0x2 & ~MMU_W)
    w1 = walk_addr(TableCache(mem), X86, root, 0x2000)
    w2 = walk_addr(TableCache(mem), X86, root, 0x3000)
    assert "NX" in w1.steps[-1].info.flags and w1.hpa == 0x7000
    assert "W" not in w2.steps[-1].info.flags and "mmu-writable" not in w2.steps[-1].info.flags
    assert "host-writable" in w2.steps[-1].info.flags


def test_ept_decoding_and_exec_only():
    mem = FakeMem()
    t = Tables(mem, 4, EPT_TABLE, EPT_LEAF)
    root = Root(t.root, 4, True, 4)
    t.map(0x1000, 0xA000)
    # Execute-only: X without R is present (shadow_present_mask is 0 with
    # exec-only support); KVM's bit 11 says so.
    t.put(0x2000, 1, MMU_PRESENT | 0xB000 | 0x4 | (6 << 3))
    t.map(0x20_0000, 0x4000_0000, level=2, extra=1 << 6)  # 2M with IPAT
    w = walk_addr(TableCache(mem), EPT, root, 0x1234)
    assert w.hpa == 0xA234
    assert w.steps[-1].info.flags == [
        "R",
        "W",
        "X",
        "MT=WB",
        "A",
        "D",
        "mmu-present",
        "host-writable",
        "mmu-writable",
    ]
    w = walk_addr(TableCache(mem), EPT, root, 0x2008)
    assert w.hpa == 0xB008 and w.steps[-1].info.flags[:2] == ["X", "MT=WB"]
    w = walk_addr(TableCache(mem), EPT, root, 0x20_0010)
    assert w.page_size == 1 << 21 and "IPAT" in w.steps[-1].info.flags
    # Empty EPT SPTEs since v6.10 hold bit 63 (suppress #VE).
    info = decode_spte(ept_format(suppress_ve=True), 1 << 63, 1)
    assert info.kind == "none" and info.flags == ["SVE"]


def test_ept_misconfig_mmio():
    fmt = ept_format(phys_bits=46)
    spte = 0x6 | (0xFEB00 << 12)
    info = decode_spte(fmt, spte, 1)
    assert info.kind == "mmio" and info.mmio_gfn == 0xFEB00


def test_ept_access_tracked():
    fmt = ept_format(ad_bits=False)
    spte = MMU_PRESENT | 0x1000 | (1 << 52) | (0x5 << 54)  # RWX cleared, R/X saved
    flags = decode_spte(fmt, spte, 1).flags
    assert "ad-disabled" in flags and "access-tracked" in flags


def pae_setup(root_level, cpu_level):
    """A shadow MMU for a 32-bit/PAE guest: four pae_root entries, each to a
    level-2 shadow page; with root_level 4/5 the root is pml4_root/pml5_root."""
    mem = FakeMem()
    pae_root = mem.alloc()
    l2 = Tables(mem, 2, X86_TABLE, X86_LEAF)
    mem.set(pae_root + 8 * 2, l2.root | 1)  # PT_PRESENT_MASK, never bit 11
    top = pae_root
    for _ in range(root_level - 3):
        page = mem.alloc()
        mem.set(page, top | 0x27)
        top = page
    root = Root(top, root_level, False, cpu_level, pae_root)
    return mem, l2, root, pae_root


@pytest.mark.parametrize("root_level", [3, 4, 5])
def test_pae_roots(root_level):
    mem, l2, root, pae_root = pae_setup(root_level, 3)
    gva = (2 << 30) | (5 << 21) | (6 << 12) | 0x10
    l2.map(gva, 0x77000)
    w = walk_addr(TableCache(mem), X86, root, gva)
    assert w.hpa == 0x77010
    assert w.steps[0].pae_root and w.steps[0].sptep == pae_root + 16
    assert [s.level for s in w.steps] == [3, 2, 1]
    empty = walk_addr(TableCache(mem), X86, root, 1 << 30)
    assert empty.stop == "PAE root entry 1 is empty" and empty.stop_level == 3
    with pytest.raises(AddressError):
        walk_addr(TableCache(mem), X86, root, 1 << 32)


def test_32bit_guest_uses_pae_root_too():
    # A 32-bit non-PAE guest (cpu level 2) is shadowed with PAE roots as well.
    mem, l2, root, pae_root = pae_setup(3, 2)
    l2.map(0x80001000, 0x99000)
    assert walk_addr(TableCache(mem), X86, root, 0x80001234).hpa == 0x99234


def test_64bit_shadow_root_is_not_special():
    mem, t, root = npt(4)
    root = root._replace(direct=False, cpu_level=4, pae_root_hpa=None)
    t.map(0xFFFF_8000_0000_0000, 0x5000)
    assert walk_addr(TableCache(mem), X86, root, 0xFFFF_8000_0000_0123).hpa == 0x5123


@pytest.mark.parametrize(
    "root,addr,ok",
    [
        (Root(0x1000, 4, True, 4), (1 << 48) - 1, True),
        (Root(0x1000, 4, True, 4), 1 << 48, False),
        (Root(0x1000, 5, True, 5), (1 << 57) - 1, True),
        (Root(0x1000, 5, True, 5), 1 << 57, False),
        (Root(0x1000, 4, False, 4), 0xFFFF_8000_0000_0000, True),
        (Root(0x1000, 4, False, 4), 0x0000_8000_0000_0000, False),
        (Root(0x1000, 5, False, 5), 0xFF00_0000_0000_0000, True),
        (Root(0x1000, 3, False, 3, 0x2000), 0xFFFF_FFFF, True),
        (Root(0x1000, 3, False, 3, 0x2000), 1 << 32, False),
    ],
)
def test_check_addr(root, addr, ok):
    if ok:
        check_addr(root, addr)
    else:
        with pytest.raises(AddressError):
            check_addr(root, addr)


def test_unreadable_table_page_is_reported():
    mem, t, root = npt(4)
    mem.set(t.root, 0xDEAD000 | X86_TABLE)  # child page not in memory
    w = walk_addr(TableCache(mem), X86, root, 0)
    assert w.hpa is None and w.stop == "table page at 0xdead000 not accessible"
    assert w.stop_level == 3


@settings(max_examples=300, deadline=None)
@given(
    level=st.sampled_from([4, 5]),
    sptes=st.lists(st.integers(0, (1 << 64) - 1), min_size=5, max_size=5),
    addr=st.integers(0, (1 << 48) - 1),
    ept=st.booleans(),
)
def test_random_tables_terminate(level, sptes, addr, ept):
    """Arbitrary SPTE values, pointing anywhere (even at the same page): the
    walk ends within ``level`` steps and raises nothing."""
    mem = FakeMem()
    pages = [mem.alloc() for _ in range(level)]
    for i, page in enumerate(pages):
        # Every entry of every page holds that level's random value, with a
        # pointer into one of the pages to make loops possible.
        value = (sptes[i] & ~((1 << 52) - 1 & ~0xFFF)) | pages[sptes[i] % level]
        for j in range(512):
            mem.set(page + 8 * j, value)
    fmt = EPT if ept else X86
    root = Root(pages[0], level, True, level)
    w = walk_addr(TableCache(mem), fmt, root, addr)
    assert 1 <= len(w.steps) <= level
    assert (w.hpa is None) == (w.stop is not None)
    assert [s.level for s in w.steps] == list(range(level, level - len(w.steps), -1))


def old_layout(**kw):
    """v5.8 to v5.12: no MMU-present bit, MMIO = bits 52-53, writable bits 10/11."""
    import dataclasses

    from drgn_kvmwalk.spte import MMIO_GEN_LAYOUT_5_6, REMOVED_SPTE_5_12, SPTE_MMIO_MASK_5_8

    return dataclasses.replace(
        x86_format(phys_bits=46, **kw),
        mmu_present_mask=0,
        mmio_mask=SPTE_MMIO_MASK_5_8,
        mmio_value=SPTE_MMIO_MASK_5_8,
        mmio_caching=True,
        host_writable_mask=1 << 10,
        mmu_writable_mask=1 << 11,
        mmio_gen=MMIO_GEN_LAYOUT_5_6,
        frozen_values=REMOVED_SPTE_5_12,
    )


def test_5_10_layout_walk():
    fmt = old_layout()
    mem = FakeMem()
    t = Tables(mem, 4, 0x27, 0xC67)  # no bit-11 "present"; bits 10/11 writable
    root = Root(t.root, 4, True, 4)
    t.map(0x4000_1000, 0x8_0000)
    w = walk_addr(TableCache(mem), fmt, root, 0x4000_1008)
    assert w.hpa == 0x8_0008
    assert w.steps[-1].info.flags == ["P", "W", "U", "A", "D", "host-writable", "mmu-writable"]
    # MMIO SPTE of v5.8-5.12: bits 52-53 set, GFN in the address bits,
    # generation in bits 3-11 and 54-62.
    gen = (0x1AB << 9) | 0x155
    spte = (3 << 52) | (0xFEE00 << 12) | (0x155 << 3) | (0x1AB << 54)
    t.put(0x5000_0000, 1, spte)
    w = walk_addr(TableCache(mem), fmt, root, 0x5000_0000)
    info = w.steps[-1].info
    assert info.kind == "mmio" and info.mmio_gfn == 0xFEE00 and info.mmio_gen == gen
    # v5.12's REMOVED_SPTE is not present and not followed.
    t.put(0x6000_0000, 2, 1 << 59)
    w = walk_addr(TableCache(mem), fmt, root, 0x6000_0000)
    assert w.steps[-1].info.kind == "frozen" and w.stop_level == 2


def test_7_2_layout():
    """v7.2: EPT user-execute at bit 10, A/D type at bits 60-61, MMIO
    generation in bits 3-9 and 52-62, frozen SPTE 0x1a0 | bit 63."""
    import dataclasses

    from drgn_kvmwalk.spte import MMIO_GEN_LAYOUT_7_2, SPTE_TDP_AD_SHIFT_7_2

    fmt = dataclasses.replace(
        ept_format(suppress_ve=True, ad_bits=False),
        xu_mask=1 << 10,
        host_writable_mask=1 << 53,
        mmu_writable_mask=1 << 55,
        mmio_gen=MMIO_GEN_LAYOUT_7_2,
        tdp_ad_shift=SPTE_TDP_AD_SHIFT_7_2,
    )
    spte = MMU_PRESENT | (1 << 63) | 0x1000 | 0x5 | (1 << 10) | (1 << 53) | (1 << 60)
    flags = decode_spte(fmt, spte, 1).flags
    assert flags[:3] == ["R", "X", "XU"] and "ad-disabled" in flags and "host-writable" in flags
    assert "mmu-writable" not in flags
    assert decode_spte(fmt, (1 << 63) | 0x1A0, 1).kind == "frozen"
    gen = (0x7FF << 7) | 0x55
    mmio = 0x6 | (0x55 << 3) | (0x7FF << 52)
    assert decode_spte(fmt, mmio, 1).mmio_gen == gen
