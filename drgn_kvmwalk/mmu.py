# SPDX-License-Identifier: LGPL-2.1-or-later
"""A vCPU's MMU roots and KVM's shadow pages, read from the kernel.

Reads ``struct kvm_mmu`` (arch/x86/include/asm/kvm_host.h) and ``struct
kvm_mmu_page`` (arch/x86/kvm/mmu/mmu_internal.h), with helpers under KVM's
own names (``to_shadow_page``, ``is_tdp_mmu_page``, ``for_each_tdp_mmu_root``,
...), and gives the pure walk of :mod:`drgn_kvmwalk.walk` what it starts
from: a :class:`~drgn_kvmwalk.walk.Root` and host physical memory
(:class:`DrgnPhysMem`); the SPTE format is :mod:`drgn_kvmwalk.sptefmt`'s.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional, Sequence, Tuple, cast

from drgn import FaultError, Object, Program, Type, offsetof, sizeof
from drgn.helpers.linux.mm import pfn_to_page, virt_to_phys

from .errors import BadKernelValue, NoRoot, UnknownLayout
from .lists import list_entries
from .sptefmt import spte_format
from .walk import ROOT_LEVELS, PhysMem, PhysMemError, Root, TableCache, Walk, walk_addr

__all__ = [
    "DrgnPhysMem",
    "INVALID_PAGE",
    "MmuInfo",
    "ShadowPage",
    "for_each_active_mmu_page",
    "for_each_prev_root",
    "for_each_tdp_mmu_root",
    "for_each_vm_root_page",
    "is_tdp_enabled",
    "is_tdp_mmu_page",
    "mmu_info",
    "mmu_root",
    "root_of_shadow_page",
    "to_shadow_page",
    "vcpu_mmu",
    "vcpu_walk",
]

INVALID_PAGE = (1 << 64) - 1


class DrgnPhysMem:
    """Host physical memory of a drgn :class:`~drgn.Program` (live, vmcore or QMP)."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog

    def read(self, address: int, size: int) -> bytes:
        try:
            return bytes(self.prog.read(address, size, True))
        except FaultError:
            raise PhysMemError(address) from None


class MmuInfo(NamedTuple):
    """A vCPU's current MMU: ``mmu`` is the ``struct kvm_mmu *``.

    ``kind`` is "tdp" when the root translates GPAs with EPT/NPT, "shadow" when
    it shadows the guest's own page tables (GVAs); ``tdp_mmu`` tells whether
    the root belongs to the TDP MMU (else to the legacy shadow MMU).
    """

    mmu: Object
    root: Root
    kind: str
    tdp_mmu: bool


def vcpu_mmu(vcpu: Object) -> Object:
    """``vcpu->arch.mmu`` as a ``struct kvm_mmu *``.

    :param vcpu: ``struct kvm_vcpu *``
    """
    mmu = vcpu.arch.mmu
    # Since Linux kernel commit 44dd3ffa7bb3 ("x86/kvm/mmu: make vcpu->mmu a
    # pointer to the current MMU") (in v4.20), arch.mmu points at root_mmu or
    # guest_mmu; before, it was the one embedded struct kvm_mmu.
    if mmu.type_.kind.name == "STRUCT":
        return mmu.address_of_()
    return mmu


def _int(obj: Object) -> int:
    return int(obj.value_())


class _MmuLayout(NamedTuple):
    """Where ``struct kvm_mmu`` keeps what the walk starts from: one member
    path per value, each chosen by its own probe (see :func:`_mmu_layout`)."""

    root_hpa: Tuple[str, ...]
    root_level: Tuple[str, ...]
    direct: Tuple[str, ...]
    cpu_level: Tuple[str, ...]


def _choose(
    struct: Type, what: str, choices: Sequence[Tuple[str, Tuple[str, ...]]]
) -> Tuple[str, ...]:
    """The path of the first of ``choices`` (newest layout first) whose first
    member ``struct`` has.

    :raises UnknownLayout: it has none of them
    """
    for member, path in choices:
        if struct.has_member(member):
            return path
    raise UnknownLayout(f"struct {struct.tag}", [m for m, _ in choices], what)


def _mmu_layout(mmu: Object) -> _MmuLayout:
    """Probe ``struct kvm_mmu`` once per program: each kernel change on its own,
    so that a kernel with only some of them (a distribution backport) still
    reads every value from where it is.

    :param mmu: ``struct kvm_mmu *``
    :raises UnknownLayout: a value is in none of the places known
    """
    prog = mmu.prog_
    key = "drgn_kvmwalk.kvm_mmu_layout"
    layout = prog.cache.get(key)
    if layout is not None:
        return cast(_MmuLayout, layout)
    struct = mmu.type_.type.unqualified()
    layout = _MmuLayout(
        # Since Linux kernel commit b9e5603c2a3a ("KVM: x86: use struct
        # kvm_mmu_root_info for mmu->root") (in v5.18), the root is
        # mmu->root.hpa.
        root_hpa=_choose(
            struct, "the root HPA", [("root", ("root", "hpa")), ("root_hpa", ("root_hpa",))]
        ),
        # Since Linux kernel commit a972e29c1d6c ("KVM: x86/mmu: replace
        # shadow_root_level with root_role.level") (in v5.19).  root_role
        # came a few commits earlier in the same series, and while both
        # existed they held the same level.
        root_level=_choose(
            struct,
            "the root level",
            [("root_role", ("root_role", "level")), ("shadow_root_level", ("shadow_root_level",))],
        ),
        # Since Linux kernel commit 347a0d0ded16 ("KVM: x86/mmu: replace
        # direct_map with root_role.direct") (in v5.19).
        direct=_choose(
            struct,
            "whether the root is direct",
            [("root_role", ("root_role", "direct")), ("direct_map", ("direct_map",))],
        ),
        # The guest's paging level.  Since the series "KVM: apply chainsaw to
        # struct kvm_mmu" (commits "KVM: x86/mmu: move CPU-related fields to
        # struct kvm_pagewalk" and "KVM: x86/mmu: pull struct kvm_pagewalk out
        # of struct kvm_mmu") (in v7.3; cited by title, their ids were
        # rebased), it is mmu->w->cpu_role.  Since Linux kernel commit
        # 4d25502aa12e ("KVM: x86/mmu: replace root_level with
        # cpu_role.base.level") (in v5.19), mmu->cpu_role.
        cpu_level=_choose(
            struct,
            "the guest's paging level",
            [
                ("w", ("w", "cpu_role", "base", "level")),
                ("cpu_role", ("cpu_role", "base", "level")),
                ("root_level", ("root_level",)),
            ],
        ),
    )
    prog.cache[key] = layout
    return layout


def _read_path(obj: Object, path: Tuple[str, ...]) -> int:
    for name in path:
        obj = obj.member_(name)
    return int(obj.value_())


def mmu_root(mmu: Object) -> Root:
    """The current root of ``mmu`` as ``shadow_walk_init_using_root()`` sees it.

    :param mmu: ``struct kvm_mmu *``
    :raises NoRoot: the MMU has no valid root
    :raises UnknownLayout: ``struct kvm_mmu`` is laid out as no known kernel
    """
    prog = mmu.prog_
    layout = _mmu_layout(mmu)
    hpa = _read_path(mmu, layout.root_hpa)
    level = _read_path(mmu, layout.root_level)
    direct = bool(_read_path(mmu, layout.direct))
    cpu_level = _read_path(mmu, layout.cpu_level)
    if hpa == INVALID_PAGE or level == 0:
        raise NoRoot(
            "the vCPU's MMU has no valid root (the vCPU has not run, or its root is being reloaded)"
        )
    if hpa == _zero_page_hpa(prog):
        # Since Linux kernel commit 0e3223d8d00a ("KVM: x86/mmu: Use dummy
        # root, backed by zero page, for !visible guest roots") (in v6.6).
        raise NoRoot(
            "the vCPU's root is KVM's dummy root (the zero page): the guest's "
            "page-table root is not in any memslot, so nothing is mapped"
        )
    if level not in ROOT_LEVELS:
        raise BadKernelValue("mmu->" + ".".join(layout.root_level), level, "a root level (2-5)")
    pae_root = mmu.pae_root.value_()
    pae_root_hpa = int(virt_to_phys(prog, pae_root)) if pae_root else None
    return Root(hpa, level, direct, cpu_level, pae_root_hpa)


def _zero_page_hpa(prog: Program) -> Optional[int]:
    """The zero page's HPA (KVM's dummy root), once per program; None when the
    kernel has no ``empty_zero_page`` symbol."""
    key = "drgn_kvmwalk.zero_page_hpa"
    if key not in prog.cache:
        try:
            address = prog.symbol("empty_zero_page").address
        except LookupError:
            prog.cache[key] = None
        else:
            prog.cache[key] = int(virt_to_phys(prog, address))
    return cast(Optional[int], prog.cache[key])


def is_tdp_enabled(prog: Program) -> bool:
    """KVM's ``tdp_enabled``: EPT or NPT in use (else shadow paging)."""
    return bool(prog["tdp_enabled"].value_())


def is_tdp_mmu_page(prog: Program, hpa: int) -> bool:
    """Whether the table page at ``hpa`` is the TDP MMU's: KVM's
    ``is_tdp_mmu_page(to_shadow_page(hpa))``.  PAE-style special roots have no
    shadow page."""
    sp = to_shadow_page(prog, hpa)
    return sp is not None and sp.tdp_mmu


def mmu_info(vcpu: Object) -> MmuInfo:
    """The vCPU's current MMU, its root, and what kind of MMU it is.

    :param vcpu: ``struct kvm_vcpu *``
    :raises NoRoot: no valid root
    """
    mmu = vcpu_mmu(vcpu)
    root = mmu_root(mmu)
    prog = vcpu.prog_
    kind = "tdp" if root.direct and is_tdp_enabled(prog) else "shadow"
    return MmuInfo(mmu, root, kind, is_tdp_mmu_page(prog, root.hpa))


class ShadowPage(NamedTuple):
    """The ``struct kvm_mmu_page`` that owns a table page (``sp->spt``).

    ``sp`` is the ``struct kvm_mmu_page *`` itself; the other fields are its
    role and state as read when the record was made."""

    sp: Object  # struct kvm_mmu_page *
    level: int  # role.level
    direct: bool  # role.direct: maps GFNs directly (TDP, or a guest large page)
    access: int  # role.access: ACC_EXEC_MASK 1 | ACC_WRITE_MASK 2 | ACC_USER_MASK 4
    as_id: int  # role.smm: address space (1 = SMM)
    guest_mode: bool  # role.guest_mode: a page of a nested (L2) guest
    invalid: bool  # role.invalid: obsolete, waiting to be freed
    quadrant: int  # role.quadrant: which part of a 32-bit guest table it shadows
    gfn: int  # direct: first GFN it maps; shadow: GFN of the guest table
    root_count: int  # references as a root (root_count / tdp_mmu_root_count)
    tdp_mmu: bool

    @property
    def address(self) -> int:
        """Address of the ``struct kvm_mmu_page``."""
        return int(self.sp.value_())


def _has_tdp_mmu_page(prog: Program) -> bool:
    """Whether ``struct kvm_mmu_page`` has ``tdp_mmu_page``: since Linux kernel
    commit 02c00b3a2f7e ("kvm: x86/mmu: Allocate and free TDP MMU roots") (in
    v5.10).  Decided once per program."""
    key = "drgn_kvmwalk.has_tdp_mmu_page"
    found = prog.cache.get(key)
    if found is None:
        found = prog.type("struct kvm_mmu_page").has_member("tdp_mmu_page")
        prog.cache[key] = found
    return bool(found)


class _PageLayout(NamedTuple):
    """Where a PFN's ``page->private`` lies."""

    vmemmap: int  # address of the struct page of PFN 0
    page_size: int  # sizeof(struct page)
    private: int  # offsetof(struct page, private)


def _page_layout(prog: Program) -> _PageLayout:
    key = "drgn_kvmwalk.page_layout"
    layout = prog.cache.get(key)
    if layout is None:
        page = prog.type("struct page")
        layout = _PageLayout(
            int(pfn_to_page(prog, 0).value_()), sizeof(page), offsetof(page, "private")
        )
        prog.cache[key] = layout
    return cast(_PageLayout, layout)


class _SpLayout(NamedTuple):
    """Where the members of ``struct kvm_mmu_page`` that :class:`ShadowPage`
    holds lie, so that a table page's shadow page is two reads and no member
    lookups (:func:`to_shadow_page` runs once per table page of a
    whole-table view)."""

    sp_pointer: Type  # struct kvm_mmu_page *
    size: int  # sizeof(struct kvm_mmu_page)
    spt: int
    gfn: int
    root_count: int  # an int (on newer kernels in a union with tdp_mmu_root_count)
    tdp_mmu: Optional[int]  # bool tdp_mmu_page (since v5.10: _has_tdp_mmu_page)
    role: int  # of the 32-bit role word
    bits: Tuple[Tuple[int, int], ...]  # (bit, width) in it: ROLE_FIELDS


# The role bits ShadowPage keeps, in its order.
_ROLE_FIELDS = ("level", "direct", "access", "smm", "guest_mode", "invalid", "quadrant")


def _member_bits(t: Type, name: str, base: int = 0) -> Optional[Tuple[int, int]]:
    """(bit offset, width) of member ``name`` of struct or union ``t``,
    looked for in its anonymous members too."""
    for m in t.members or ():
        off = base + m.bit_offset
        if m.name == name:
            return off, m.bit_field_size or 8 * sizeof(m.type)
        if m.name is None:
            found = _member_bits(m.type.unaliased(), name, off)
            if found is not None:
                return found
    return None


def _sp_layout(prog: Program) -> _SpLayout:
    key = "drgn_kvmwalk.sp_layout"
    layout = prog.cache.get(key)
    if layout is None:
        sp_type = prog.type("struct kvm_mmu_page")
        role_type = sp_type.member("role").type.unaliased()
        bits = []
        for name in _ROLE_FIELDS:
            found = _member_bits(role_type, name)
            if found is None:
                raise UnknownLayout("union kvm_mmu_page_role", [name])
            bits.append(found)
        layout = _SpLayout(
            prog.pointer_type(sp_type),
            sizeof(sp_type),
            offsetof(sp_type, "spt"),
            offsetof(sp_type, "gfn"),
            offsetof(sp_type, "root_count"),
            offsetof(sp_type, "tdp_mmu_page") if _has_tdp_mmu_page(prog) else None,
            offsetof(sp_type, "role"),
            tuple(bits),
        )
        prog.cache[key] = layout
    return cast(_SpLayout, layout)


def to_shadow_page(prog: Program, table_hpa: int) -> Optional[ShadowPage]:
    """The ``struct kvm_mmu_page`` of the table page at ``table_hpa``: KVM keeps
    it in ``page->private`` of the table's page (``to_shadow_page()``).  None
    for pages that are not shadow pages (``pae_root``, ``pml4_root``), whose
    ``private`` does not point back at them, or whose ``struct page`` or
    ``struct kvm_mmu_page`` the target does not hold (a filtered dump).

    :raises LookupError: no ``struct kvm_mmu_page`` type (kvm.ko's debug info)
    """
    pl = _page_layout(prog)
    page = pl.vmemmap + (table_hpa >> 12) * pl.page_size
    if page + pl.private + 8 > 1 << 64:
        return None  # an HPA no struct page is for (a corrupt SPTE's)
    try:
        private = int.from_bytes(prog.read(page + pl.private, 8), "little")
        if not private:
            return None
        lay = _sp_layout(prog)
        raw = prog.read(private, lay.size)
    except FaultError:
        return None  # private is not a pointer to memory the target has
    spt = int.from_bytes(raw[lay.spt : lay.spt + 8], "little")
    try:
        if int(virt_to_phys(prog, spt)) != table_hpa & ~0xFFF:
            return None
    except ValueError:
        return None  # spt is no direct-map address: not a shadow page
    word = int.from_bytes(raw[lay.role : lay.role + 4], "little")
    level, direct, access, smm, guest_mode, invalid, quadrant = (
        word >> bit & ((1 << width) - 1) for bit, width in lay.bits
    )
    return ShadowPage(
        Object(prog, lay.sp_pointer, private),
        level,
        bool(direct),
        access,
        smm,
        bool(guest_mode),
        bool(invalid),
        quadrant,
        int.from_bytes(raw[lay.gfn : lay.gfn + 8], "little"),
        int.from_bytes(raw[lay.root_count : lay.root_count + 4], "little", signed=True),
        lay.tdp_mmu is not None and bool(raw[lay.tdp_mmu]),
    )


def _mmu_page_list(kvm: Object, name: str) -> Iterator[Object]:
    """The ``struct kvm_mmu_page``s on ``kvm->arch.<name>``, linked by
    ``sp->link``.  A zeroed list head is an empty list: a VM without the TDP
    MMU never initialises ``tdp_mmu_roots`` (``kvm_mmu_init_tdp_mmu()``
    returns early); a 32-bit host has no such member."""
    try:
        head = kvm.arch.member_(name)
    except LookupError:
        return
    if not head.next.value_():
        return
    yield from list_entries(head.address_of_(), "struct kvm_mmu_page", "link", f"kvm->arch.{name}")


def for_each_tdp_mmu_root(kvm: Object) -> Iterator[Object]:
    """The TDP MMU's roots (``kvm->arch.tdp_mmu_roots``, as
    ``for_each_tdp_mmu_root()`` walks it), invalid ones included.

    :param kvm: ``struct kvm *``
    :return: ``struct kvm_mmu_page *`` objects
    """
    return _mmu_page_list(kvm, "tdp_mmu_roots")


def for_each_active_mmu_page(kvm: Object) -> Iterator[Object]:
    """The legacy (shadow) MMU's pages (``kvm->arch.active_mmu_pages``, as
    ``for_each_sp()`` walks it): every table page, roots and the rest.

    :param kvm: ``struct kvm *``
    :return: ``struct kvm_mmu_page *`` objects
    """
    return _mmu_page_list(kvm, "active_mmu_pages")


def root_of_shadow_page(hpa: int, sp: ShadowPage, cpu_level: int) -> Root:
    """A root known only by its page (a cached or another vCPU's root): its
    level and directness come from its own struct kvm_mmu_page; a shadow
    root keeps the vCPU's guest paging level.  PAE roots are never such."""
    return Root(hpa, sp.level, sp.direct, sp.level if sp.direct else cpu_level)


def for_each_prev_root(mmu: Object, cpu_level: int) -> Iterator[Tuple[int, Root]]:
    """The MMU's cache of previous roots (``mmu->prev_roots[]``, since v4.19):
    roots KVM keeps for a fast switch back (guest CR3 changes, nested
    transitions), as (index, root).  Empty and invalid slots are left out;
    PAE roots are never cached (``shadow_walk_init_using_root()`` BUG()s on
    them).

    :param mmu: ``struct kvm_mmu *``
    :param cpu_level: the guest's paging level, for shadow roots
    """
    prog = mmu.prog_
    for i in range(mmu.prev_roots.type_.length or 0):
        hpa = _int(mmu.prev_roots[i].hpa)
        if hpa in (INVALID_PAGE, 0):
            continue
        sp = to_shadow_page(prog, hpa)
        if sp is not None:
            yield i, root_of_shadow_page(hpa, sp, cpu_level)


def for_each_vm_root_page(kvm: Object) -> Iterator[Tuple[int, ShadowPage]]:
    """The VM's top-level pages, as (HPA, shadow page): TDP MMU roots, and
    legacy shadow pages in use as roots (``root_count``).

    :param kvm: ``struct kvm *``
    """
    prog = kvm.prog_
    pages = list(for_each_tdp_mmu_root(kvm))
    pages += [sp for sp in for_each_active_mmu_page(kvm) if int(sp.root_count)]
    for page in pages:
        hpa = int(virt_to_phys(prog, page.spt))
        sp = to_shadow_page(prog, hpa)
        if sp is not None:
            yield hpa, sp


def vcpu_walk(vcpu: Object, addr: int, mem: Optional[PhysMem] = None) -> Walk:
    """Walk ``addr`` through the vCPU's current root, as KVM's
    ``for_each_shadow_entry()`` does: drgn's ``follow_phys()`` for KVM's own
    tables.

    >>> walk = vcpu_walk(find_vcpu(find_vm(prog, 4242), 0), 0x4007B000)
    >>> [hex(step.spte) for step in walk.steps]
    ['0x6ea4d827', '0x6ea66827', '0x6e9f7827', '0x6e9f6827', '0x52f0e67']
    >>> hex(walk.hpa), walk.page_size
    ('0x52f0000', 4096)

    :param vcpu: ``struct kvm_vcpu *``
    :param addr: what the root translates: a GPA under TDP (EPT/NPT), a GVA
        under shadow paging
    :param mem: host physical memory to read the tables from (any
        :class:`~drgn_kvmwalk.walk.PhysMem`); by default the vCPU's program's
    :raises NoRoot: the vCPU has no valid root
    :raises AddressError: ``addr`` is beyond what the root translates
    :raises UnknownLayout: ``struct kvm_mmu`` is laid out as no known kernel
    :raises MissingDebugInfo: kvm.ko's SPTE mask variables are missing
    """
    root = mmu_info(vcpu).root
    fmt = spte_format(vcpu.kvm)
    return walk_addr(TableCache(mem or DrgnPhysMem(vcpu.prog_)), fmt, root, addr)
