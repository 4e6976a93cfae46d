# SPDX-License-Identifier: LGPL-2.1-or-later
"""Text and JSON renderings of walks: records in, text or JSON out, one
renderer per view and format (the whole-table views make their lines many at
once with :mod:`drgn_kvmwalk.columns`).  Nothing here reads the kernel."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from .gmem import GuestRead, hexdump_lines
from .gwalk import GUEST_LEVEL_NAMES, GuestStep
from .spte import SpteFormat, decode_spte, describe_flags, level_shift, level_size
from .walk import Root, Step, Walk, root_start_level

if TYPE_CHECKING:
    import numpy as np

    from .guest import GuestRegs, GvaWalk

    # Only for annotations: rendering a walk needs neither numpy (leaves.py)
    # nor drgn (mmu.py), and a one-address run should not import them.
    from .leaves import LeafColumns, LeafRun, MapRange, MapRanges, Unreadable
    from .mmu import ShadowPage
    from .stats import VmStats
    from .vcpustate import VcpuState
    from .verify import HpaMapping, HpaTable, VerifySummary
    from .verify import Problem as VerifyProblem
    from .views import VmSummary

__all__ = [
    "LEVEL_NAMES",
    "FlagCache",
    "dump_header",
    "dump_block",
    "dump_lines",
    "guest_regs_text",
    "hpa_json",
    "hpa_none_json",
    "hpa_none_text",
    "hpa_table_json",
    "hpa_table_text",
    "hpa_text",
    "problem_json",
    "problem_text",
    "verify_summary_json",
    "verify_summary_text",
    "gva_json",
    "gva_text",
    "steps_json",
    "table_line",
    "header_text",
    "list_json",
    "list_text",
    "map_block",
    "map_header",
    "map_line",
    "page_size_name",
    "read_json",
    "read_text",
    "sp_json",
    "sp_text",
    "stats_json",
    "stats_text",
    "unreadable_line",
    "walk_json",
    "walk_text",
]

# The x86 names of each level's entry; EPT calls them the same way in the SDM
# ("EPT PML4E" ...), shadow pages of a PAE guest have PDPTEs in pae_root.
LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}


def page_size_name(size: Optional[int]) -> str:
    if size is None:
        return "-"
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def header_text(
    vm_pid: int, vcpu_id: int, kind: str, tdp_mmu: bool, fmt: SpteFormat, root: Root
) -> str:
    flavour = "TDP MMU" if tdp_mmu else "legacy MMU"
    hw = ("EPT" if fmt.ept else "NPT") if kind == "tdp" else "shadow paging"
    # pae_root is allocated for most shadow MMUs; name it only when the walk enters it.
    pae = (
        f", enters pae_root {root.pae_root_hpa:#x}"
        if root.pae_root_hpa is not None and root_start_level(root) == 3
        else ""
    )
    return (
        f"VM {vm_pid} vCPU {vcpu_id}: {hw}, {flavour}, {fmt.name} SPTEs, "
        f"root {root.hpa:#x} level {root.level}"
        f"{'' if root.direct else f' (guest paging level {root.cpu_level})'}{pae}"
    )


def _step_line(step: Step) -> str:
    name = LEVEL_NAMES.get(step.level, f"L{step.level}")
    if step.pae_root:
        name += "*"
    return (
        f"  {name:<6} [{step.index:3d}]  sptep {step.sptep:#014x}  "
        f"spte {step.spte:#018x}  {describe_flags(step.info.flags)}"
    )


def walk_text(w: Walk, sps: Optional[Dict[int, Optional[ShadowPage]]] = None) -> List[str]:
    """Text lines of one walk; with ``sps`` (table HPA -> its shadow page, for
    --annotate) each table's struct kvm_mmu_page goes under its entry."""
    what = "GPA" if w.root.direct else "GVA"
    lines = [f"{what} {w.addr:#x}"]
    for s in w.steps:
        lines.append(_step_line(s))
        if sps is not None and not s.pae_root:
            sp = sps.get(s.table)
            lines.append("           in " + sp_text(sp) + _level_note(sp, s.level))
    if w.hpa is not None:
        lines.append(f"  => HPA {w.hpa:#x} ({page_size_name(w.page_size)} page)")
    else:
        name = LEVEL_NAMES.get(w.stop_level or 0, f"level {w.stop_level}")
        lines.append(f"  => not mapped: {w.stop} at level {w.stop_level} ({name})")
    if any(s.pae_root for s in w.steps):
        lines.append("  (* entry of mmu->pae_root, the PAE root KVM enters directly)")
    return lines


def _walk_head(
    vm_pid: int, vcpu_id: int, kind: str, tdp_mmu: bool, fmt: SpteFormat, root: Root
) -> Dict[str, Any]:
    """The keys every walk's JSON object starts with: which vCPU, which MMU."""
    return {
        "vm": vm_pid,
        "vcpu": vcpu_id,
        "mmu": kind,
        "tdp_mmu": tdp_mmu,
        "format": fmt.name,
        "root_hpa": root.hpa,
        "root_level": root.level,
    }


def walk_json(
    w: Walk,
    vm_pid: int,
    vcpu_id: int,
    kind: str,
    tdp_mmu: bool,
    fmt: SpteFormat,
    sps: Optional[Dict[int, Optional[ShadowPage]]] = None,
) -> Dict[str, Any]:
    return {
        **_walk_head(vm_pid, vcpu_id, kind, tdp_mmu, fmt, w.root),
        "direct": w.root.direct,
        "addr": w.addr,
        "steps": steps_json(w.steps, sps),
        "hpa": w.hpa,
        "page_size": w.page_size,
        "stop": w.stop,
        "stop_level": w.stop_level,
    }


def steps_json(
    steps: Sequence[Step], sps: Optional[Dict[int, Optional[ShadowPage]]] = None
) -> List[Dict[str, Any]]:
    """The SPTE walk's steps as JSON objects (``--addr``'s ``steps``)."""
    return [
        {
            "level": s.level,
            "index": s.index,
            "sptep": s.sptep,
            "spte": s.spte,
            "present": s.present,
            "leaf": s.leaf,
            "kind": "pae_root" if s.pae_root else s.info.kind,
            "flags": s.info.flags,
            **(
                {"mmio_gfn": s.info.mmio_gfn, "mmio_gen": s.info.mmio_gen}
                if s.info.kind == "mmio"
                else {}
            ),
            **(
                {"sp": None if s.pae_root else sp_json(sps.get(s.table))} if sps is not None else {}
            ),
        }
        for s in steps
    ]


# -- --gva: the guest's walk, then KVM's ---------------------------------------


def _hex(value: Optional[int]) -> str:
    return "?" if value is None else f"{value:#x}"


def guest_regs_text(regs: GuestRegs, cr3: int, cr3_given: bool) -> str:
    """One line: the guest's paging mode and registers, and where CR3 came from."""
    source = "--cr3" if cr3_given else regs.sources.get("cr3", "?")
    line = (
        f"guest: {regs.mode().name}, CR3 {cr3:#x} ({source}), CR0 {_hex(regs.cr0)} "
        f"CR4 {_hex(regs.cr4)} EFER {_hex(regs.efer)} RIP {_hex(regs.rip)}"
    )
    return "\n".join([line] + [f"  note: {n}" for n in regs.notes])


def _guest_step_line(s: GuestStep, width: int) -> str:
    name = GUEST_LEVEL_NAMES.get(s.level, f"L{s.level}")
    where = f"hpa {s.hpa:#014x}" if s.hpa is not None else f"({s.source})".ljust(18)
    return (
        f"  {name:<6} [{s.index:4d}]  gpa {s.gpa:#014x}  {where}  "
        f"pte {s.pte:#0{width + 2}x}  {' '.join(s.flags) or '-'}"
    )


def gva_text(w: GvaWalk, sps: Optional[Dict[int, Optional[ShadowPage]]] = None) -> List[str]:
    """Text lines of one GVA: the guest's levels, its GPA, KVM's SPTE walk
    (as ``--addr`` prints it) and the HPA."""
    g = w.guest
    width = 2 * g.mode.entry_size
    lines = [f"GVA {w.addr:#x}"]
    lines += [_guest_step_line(s, width) for s in g.steps]
    if g.gpa is None:
        lines.append(f"  => not mapped by the guest: {g.stop} (level {g.stop_level})")
    else:
        size = page_size_name(g.page_size) + " guest page" if g.page_size else "paging off"
        lines.append(f"  => GPA {g.gpa:#x} ({size})")
    if w.spte is not None:
        what = "shadow root's walk of the GVA" if not w.spte.root.direct else "SPTE walk of the GPA"
        lines.append(f"  {what}:")
        lines += ["  " + line for line in walk_text(w.spte, sps)[1:]]
    if w.hpa is not None:
        via = (
            "through the SPTEs"
            if w.hpa_source == "spte"
            else "through the memslot and the VMM's page tables"
        )
        lines.append(f"  => HPA {w.hpa:#x} ({page_size_name(w.page_size)}, {via})")
    elif w.stop_in != "guest":
        lines.append(f"  => no HPA: {w.stop}")
    if w.mismatch:
        lines.append(f"  !! mismatch: {w.mismatch}")
    return lines


def gva_json(
    w: GvaWalk,
    vm_pid: int,
    vcpu_id: int,
    kind: str,
    tdp_mmu: bool,
    fmt: SpteFormat,
    root: Root,
    regs: GuestRegs,
    cr3_given: bool,
) -> Dict[str, Any]:
    g = w.guest
    return {
        **_walk_head(vm_pid, vcpu_id, kind, tdp_mmu, fmt, root),
        "addr": w.addr,
        "cr3": w.cr3,
        "cr3_source": "--cr3" if cr3_given else regs.sources.get("cr3"),
        "guest_level": g.mode.level,
        "guest_steps": [
            {
                "level": s.level,
                "index": s.index,
                "gpa": s.gpa,
                "hpa": s.hpa,
                "pte": s.pte,
                "present": s.present,
                "leaf": s.leaf,
                "flags": s.flags,
                "source": s.source,
            }
            for s in g.steps
        ],
        "gpa": g.gpa,
        "guest_page_size": g.page_size,
        "steps": steps_json(w.spte.steps) if w.spte is not None else [],
        "spte_hpa": w.spte.hpa if w.spte is not None else None,
        "hpa": w.hpa,
        "page_size": w.page_size,
        "hpa_source": w.hpa_source,
        "stop": w.stop,
        "stop_level": w.stop_level,
        "stop_in": w.stop_in,
        "mismatch": w.mismatch,
    }


def read_text(r: GuestRead) -> List[str]:
    """--read: a line naming the read, then the hexdump (each piece's GPA
    and HPA, or why it could not be read)."""
    missing = f", {r.missing} of them could not be read" if r.missing else ""
    head = f"{r.length} bytes at {r.space} {r.addr:#x}{missing}"
    return [head] + hexdump_lines(r)


def read_json(r: GuestRead, vm_pid: int, vcpu_id: int) -> Dict[str, Any]:
    """--read --json: ``bytes`` is the hex string of all ``length`` bytes, or
    None when a piece could not be read; ``pieces`` says where each part of
    the range lands (``gpa``, ``hpa``) and, for a part that could not be read,
    ``error`` (its ``bytes`` then None)."""
    data = r.data
    return {
        "vm": vm_pid,
        "vcpu": vcpu_id,
        "addr": r.addr,
        "length": r.length,
        "space": r.space.lower(),
        "bytes": data.hex() if data is not None else None,
        "missing": r.missing,
        "pieces": [
            {
                "addr": p.addr,
                "length": p.length,
                "gpa": p.gpa,
                "hpa": p.hpa,
                "bytes": p.data.hex() if p.data is not None else None,
                "error": p.error,
            }
            for p in r.pieces
        ],
    }


# -- whole-table views: --dump (every leaf) and --map (merged ranges) ---------


class FlagCache:
    """The decoded flags of a leaf depend only on its level and on the SPTE
    bits outside the page address; a table holds few distinct ones, so each is
    decoded once (decode_spte) and reused as text and as JSON."""

    def __init__(self, fmt: SpteFormat) -> None:
        self.fmt = fmt
        self.attr_mask = ((1 << 64) - 1) ^ fmt.base_addr_mask
        self._flags: Dict[Tuple[int, int], Tuple[str, str]] = {}

    def get(self, level: int, spte: int) -> Tuple[str, str]:
        """(text, JSON list) of the flags of the leaf ``spte`` at ``level``."""
        key = (level, spte & self.attr_mask)
        got = self._flags.get(key)
        if got is None:
            flags = decode_spte(self.fmt, spte, level).flags
            got = (describe_flags(flags), json.dumps(flags))
            self._flags[key] = got
        return got

    def texts(
        self, level: int, sptes: "np.ndarray[Any, Any]", as_json: bool
    ) -> Tuple[List[str], "np.ndarray[Any, Any]"]:
        """The flags of each of ``sptes`` (numpy, leaves at ``level``) as
        distinct texts (or JSON lists) and, per SPTE, the index of its own.
        The attribute bits change rarely along leaves in address order: one
        lookup per change."""
        import numpy as np  # the caller has numpy arrays

        attrs = sptes & np.uint64(self.attr_mask)
        starts = np.concatenate(([0], np.flatnonzero(attrs[1:] != attrs[:-1]) + 1))
        pick = 1 if as_json else 0
        ids: Dict[int, int] = {}
        texts: List[str] = []
        seq = []
        for attr, spte in zip(attrs[starts].tolist(), sptes[starts].tolist()):
            if attr not in ids:
                ids[attr] = len(texts)
                texts.append(self.get(level, spte)[pick])
            seq.append(ids[attr])
        which = np.repeat(np.array(seq, dtype=np.int64), np.diff(starts, append=len(attrs)))
        return texts, which


def addr_name(direct: bool) -> str:
    return "GPA" if direct else "GVA"


def dump_header(direct: bool) -> str:
    return f"{addr_name(direct):<18}  {'size':>4}  {'sptep':<14}  {'spte':<18}  {'HPA':<14}  flags"


def dump_lines(
    run: LeafRun,
    fmt: SpteFormat,
    flags: FlagCache,
    vm_pid: int,
    vcpu_id: int,
    as_json: bool,
    sps: Optional[Dict[int, Optional[ShadowPage]]] = None,
    root: Optional[str] = None,
) -> List[str]:
    """One line per leaf of ``run``: text columns, or JSON Lines
    ``{"vm", "vcpu", "addr", "level", "sptep", "spte", "hpa", "flags"}``.
    With ``sps`` (--annotate), JSON records get ``"sp"`` and the text a line
    naming the table's struct kvm_mmu_page before its leaves; with ``root``
    (--root prev|all), JSON records get ``"root"``, the root's label."""
    lines = [] if sps is None or as_json else [table_line(run.table, sps)]
    text = dump_block([run], fmt, flags, vm_pid, vcpu_id, as_json, root, sps)
    return lines + text.split("\n")[:-1]


def dump_block(
    runs: Sequence[Union[LeafRun, LeafColumns]],
    fmt: SpteFormat,
    flags: FlagCache,
    vm_pid: int,
    vcpu_id: int,
    as_json: bool,
    root: Optional[str] = None,
    sps: Optional[Dict[int, Optional[ShadowPage]]] = None,
) -> str:
    """The --dump lines of ``runs`` (leaf runs or columns of one level, in
    address order), each ended by a newline, made for all of them at once
    (:func:`~drgn_kvmwalk.columns.format_lines`): text columns as
    :func:`dump_text_row` writes them, or JSON Lines as :func:`dump_lines`
    describes.  With ``sps`` (--annotate; the runs of one table page), JSON
    records get the table's ``"sp"``."""
    import numpy as np  # already loaded by leaves.py, which made the runs

    from .columns import Dec, Hex, Layout, Text, format_lines
    from .leaves import LeafColumns, LeafRun

    if not runs:
        return ""
    level = runs[0].level
    assert all(r.level == level for r in runs), "one level per block"
    table = runs[0].table if isinstance(runs[0], LeafRun) else None
    assert sps is None or all(isinstance(r, LeafRun) and r.table == table for r in runs), (
        "one table's runs"
    )
    parts = [r if isinstance(r, LeafColumns) else LeafColumns.of_run(r, fmt) for r in runs]
    cols = [np.concatenate(c) if len(parts) > 1 else c[0] for c in list(zip(*parts))[1:]]
    texts, which = flags.texts(level, cols[2], as_json)
    layout: Layout
    if as_json:
        layout = [
            f'{{"vm": {vm_pid}, "vcpu": {vcpu_id}, "addr": ',
            Dec(0),
            f', "level": {level}, "sptep": ',
            Dec(1),
            ', "spte": ',
            Dec(2),
            ', "hpa": ',
            Dec(3),
            ', "flags": ',
            Text(),
            _json_tail(sps, table or 0, root),
        ]
    else:
        size = page_size_name(level_size(level))
        layout = [Hex(0, 16), f"  {size:>4}  ", Hex(1, 12), "  ", Hex(2, 16), "  ", Hex(3, 12)]
        layout += ["  ", Text()]
    return format_lines(layout, cols, texts, which)


def dump_text_row(addr: int, size: str, sptep: int, spte: int, hpa: int, flags: str) -> str:
    """One text --dump line, as Python formats it: what :func:`dump_block`
    writes for each leaf, many at once."""
    return f"{addr:#018x}  {size:>4}  {sptep:#014x}  {spte:#018x}  {hpa:#014x}  {flags}"


def table_line(table: int, sps: Dict[int, Optional[ShadowPage]]) -> str:
    return f"# table page {table:#x}: {sp_text(sps.get(table))}"


def map_header(direct: bool) -> str:
    name = addr_name(direct)
    return (
        f"{name + ' start':<18}  {name + ' end':<18}  {'HPA':<14}  {'size':>4}  {'pages':>7}  flags"
    )


_SIZE_COLUMN = {level: f"{page_size_name(level_size(level)):>4}" for level in range(1, 6)}


def _json_tail(
    sps: Optional[Dict[int, Optional[ShadowPage]]], table: int, root: Optional[str]
) -> str:
    """The end of a --dump/--map JSON record: ``"sp"`` (--annotate) and
    ``"root"`` (--root prev|all) when asked for."""
    sp = "" if sps is None else f', "sp": {json.dumps(sp_json(sps.get(table)))}'
    label = "" if root is None else f', "root": {json.dumps(root)}'
    return f"{sp}{label}}}"


def map_line(
    r: MapRange,
    flags: FlagCache,
    vm_pid: int,
    vcpu_id: int,
    as_json: bool,
    sps: Optional[Dict[int, Optional[ShadowPage]]] = None,
    root: Optional[str] = None,
) -> str:
    """Text columns, or JSON ``{"vm", "vcpu", "start", "end", "hpa", "level",
    "flags"}``; with ``sps`` (--annotate) also the table page's shadow page
    (``"sp"`` in JSON, a line before the range in text); with ``root`` (--root
    prev|all) the root's label (``"root"`` in JSON)."""
    text, js = flags.get(r.level, r.spte)
    if as_json:
        return (
            f'{{"vm": {vm_pid}, "vcpu": {vcpu_id}, "start": {r.start}, "end": {r.end}, '
            f'"hpa": {r.hpa}, "level": {r.level}, "flags": {js}{_json_tail(sps, r.table, root)}'
        )
    shift = level_shift(r.level)
    line = (
        f"{r.start:#018x}  {r.end:#018x}  {r.hpa:#014x}  {_SIZE_COLUMN[r.level]}  "
        f"{(r.end - r.start) >> shift:>7}  {text}"
    )
    return line if sps is None else table_line(r.table, sps) + "\n" + line


def map_block(
    block: MapRanges,
    flags: FlagCache,
    vm_pid: int,
    vcpu_id: int,
    as_json: bool,
    root: Optional[str] = None,
) -> str:
    """The lines :func:`map_line` makes for every range of ``block`` (no
    ``--annotate``), each ended by a newline, made at once
    (:func:`~drgn_kvmwalk.columns.format_lines`)."""
    import numpy as np  # already loaded by leaves.py, which made the block

    from .columns import Dec, Hex, Layout, Text, format_lines

    level = block.level
    ends = block.start + (block.pages << np.uint64(level_shift(level)))
    if len(ends) and int(ends[-1]) == 0:  # the end of the address space: 2**64
        ranges = block.ranges()
        return "".join(
            map_line(r, flags, vm_pid, vcpu_id, as_json, None, root) + "\n" for r in ranges
        )
    texts, which = flags.texts(level, block.spte, as_json)
    layout: Layout
    if as_json:
        layout = [
            f'{{"vm": {vm_pid}, "vcpu": {vcpu_id}, "start": ',
            Dec(0),
            ', "end": ',
            Dec(1),
            ', "hpa": ',
            Dec(2),
            f', "level": {level}, "flags": ',
            Text(),
            _json_tail(None, 0, root),
        ]
    else:
        layout = [Hex(0, 16), "  ", Hex(1, 16), "  ", Hex(2, 12), f"  {_SIZE_COLUMN[level]}  "]
        layout += [Dec(3, 7), "  ", Text()]
    return format_lines(layout, [block.start, ends, block.hpa, block.pages], texts, which)


def unreadable_line(u: Unreadable, direct: bool) -> str:
    """The warning for a table page the walk did not descend into."""
    where = f"{addr_name(direct)} {u.base:#x}-{(u.base + u.size) & _MASK64:#x}"
    if u.kind == "budget":
        return f"{where}: not read: {u.error}"
    if u.kind == "repeated":
        return (
            f"{where}: level-{u.level} table page {u.table:#x} {u.error}; its mappings are unknown"
        )
    return (
        f"{where}: level-{u.level} table page {u.table:#x} not accessible; its mappings are unknown"
    )


_MASK64 = (1 << 64) - 1


# -- --list ----------------------------------------------------------------------

_MMU_NAMES = {"ept": "EPT", "npt": "NPT", "shadow": "shadow paging"}


def _vcpu_state_json(st: Optional[VcpuState]) -> Dict[str, Any]:
    regs = st.regs if st is not None else None
    return {
        "address": st.address if st else None,
        "mp_state": st.mp_state if st else None,
        "cpu": st.cpu if st else None,
        "thread": (
            {"pid": st.thread_pid, "comm": st.thread_comm}
            if st is not None and st.thread_pid is not None
            else None
        ),
        "exit_reason": st.exit_reason if st else None,
        "exit_reason_name": st.exit_reason_name if st else None,
        **{r: getattr(regs, r) if regs else None for r in ("cr0", "cr3", "cr4", "efer", "rip")},
        "stat": st.stat if st else None,
    }


def list_json(vms: Sequence[VmSummary]) -> Dict[str, Any]:
    """``{"vms": [{"pid", "stats_id", "mmu", "tdp_mmu", "address", "stat",
    "vcpus": [{"id", "root_hpa", "root_level", "direct", "address",
    "mp_state", "cpu", "thread", "exit_reason", "exit_reason_name", "cr0",
    "cr3", "cr4", "efer", "rip", "stat"}], "memslots": [{"as_id", "id",
    "base_gfn", "npages", "hva", "flags", "flag_names", "address"}]}]}``; a
    vCPU without a valid root has nulls and ``no_root`` (the reason); what
    cannot be read is null; ``broken`` names corrupt parts left out (a
    memslot tree that loops: the memslots before the break are listed)."""
    return {
        "vms": [
            {
                "pid": vm.pid,
                "stats_id": vm.stats_id,
                "mmu": vm.mmu,
                "tdp_mmu": vm.tdp_mmu,
                "address": vm.address,
                "vcpus": [
                    {
                        "id": v.id,
                        "root_hpa": v.root.hpa if v.root else None,
                        "root_level": v.root.level if v.root else None,
                        "direct": v.root.direct if v.root else None,
                        **({"no_root": v.no_root} if v.root is None else {}),
                        **_vcpu_state_json(v.state),
                    }
                    for v in vm.vcpus
                ],
                "memslots": [
                    {
                        "as_id": m.as_id,
                        "id": m.id,
                        "base_gfn": m.base_gfn,
                        "npages": m.npages,
                        "hva": m.hva,
                        "flags": m.flags,
                        "flag_names": memslot_flag_names(m.flags),
                        "address": m.address,
                    }
                    for m in vm.memslots
                ],
                "broken": vm.broken,
                "stat": vm.stat,
            }
            for vm in vms
        ]
    }


# KVM_MEM_* (include/uapi/linux/kvm.h).
MEMSLOT_FLAGS = ((1, "dirty-log"), (2, "readonly"), (4, "guest-memfd"))


def memslot_flag_names(flags: int) -> List[str]:
    return [n for bit, n in MEMSLOT_FLAGS if flags & bit]


def _memslot_flags(flags: int) -> str:
    names = memslot_flag_names(flags)
    return f"{flags:#x}" + (f" ({', '.join(names)})" if names else "")


def _vcpu_state_text(st: Optional[VcpuState]) -> List[str]:
    """The lines under a vCPU: where it is (run state, CPU, thread, last
    exit), the guest's registers and its non-zero counters; "?" for what
    cannot be read."""
    if st is None:
        return []
    thread = "?"
    if st.thread_pid is not None:
        thread = f"{st.thread_pid} ({st.thread_comm or 'exited'})"
    exit_ = "?"
    if st.exit_reason is not None:
        exit_ = f"{st.exit_reason} ({st.exit_reason_name or 'unknown'})"
    cpu = "?" if st.cpu is None else ("never loaded" if st.cpu < 0 else str(st.cpu))
    lines = [
        f"    {st.mp_state or '?'}, last on CPU {cpu}, thread {thread}, "
        f"last exit {exit_}, struct kvm_vcpu {st.address:#x}"
    ]
    r = st.regs
    if r is not None:
        lines.append(
            f"    guest CR0 {_hex(r.cr0)} CR3 {_hex(r.cr3)} CR4 {_hex(r.cr4)} "
            f"EFER {_hex(r.efer)} RIP {_hex(r.rip)}"
        )
    if st.stat:
        lines.append("    vcpu->stat: " + _counters(st.stat))
    return lines


def _counters(stat: Dict[str, Any]) -> str:
    """KVM's counters that are not zero (histograms and arrays left to --json)."""
    shown = [f"{k}={v}" for k, v in stat.items() if isinstance(v, int) and v]
    return " ".join(shown) or "all zero"


def list_text(vms: Sequence[VmSummary]) -> List[str]:
    if not vms:
        return ["no VMs"]
    lines = []
    for vm in vms:
        flavour = {True: ", TDP MMU", False: ", legacy MMU", None: ""}[vm.tdp_mmu]
        sid = f" ({vm.stats_id})" if vm.stats_id else ""
        at = f", struct kvm {vm.address:#x}" if vm.address is not None else ""
        lines.append(
            f"VM pid {vm.pid}{sid}: {_MMU_NAMES[vm.mmu]}{flavour}, "
            f"{len(vm.vcpus)} vCPUs, {len(vm.memslots)} memslots{at}"
        )
        if vm.stat:
            lines.append("  kvm->stat: " + _counters(vm.stat))
        for v in vm.vcpus:
            if v.root is None:
                lines.append(f"  vCPU {v.id}: {v.no_root}")
                lines += _vcpu_state_text(v.state)
                continue
            what = "GPA (direct)" if v.root.direct else "GVA (shadows the guest's tables)"
            lines.append(
                f"  vCPU {v.id}: root {v.root.hpa:#x} level {v.root.level}, translates {what}"
            )
            lines += _vcpu_state_text(v.state)
        for m in vm.memslots:
            lines.append(
                f"  memslot {m.id} (as {m.as_id}): GFN {m.base_gfn:#x}-"
                f"{m.base_gfn + m.npages:#x} ({m.npages} pages, "
                f"{page_size_name(m.npages << 12)}), HVA {m.hva:#x}, "
                f"flags {_memslot_flags(m.flags)}"
                + (f", struct kvm_memory_slot {m.address:#x}" if m.address is not None else "")
            )
        for what in vm.broken:
            lines.append(f"  corrupt: {what}")
    return lines


# -- --stats ---------------------------------------------------------------------


def stats_json(st: VmStats) -> Dict[str, Any]:
    """``{"vm", "roots", "tables", "leaves": {"4K", "2M", "1G"}, "kvm": {...},
    "match", "differences", "by_mmu": {"tdp_mmu", "legacy"}, "notes",
    "unreadable", "broken"}``."""
    return {
        "vm": st.pid,
        "roots": st.roots,
        "tables": st.tables,
        "leaves": st.leaves,
        "kvm": st.kvm,
        "match": not st.differences,
        "differences": st.differences,
        "by_mmu": st.by_mmu,
        "notes": st.notes,
        "unreadable": [{"table": t, "error": e} for t, e in st.unreadable],
        "broken": st.broken,
    }


def stats_text(st: VmStats) -> str:
    leaves = ", ".join(f"{k} {v}" for k, v in st.leaves.items())
    kvm = ", ".join(f"{k} {v}" for k, v in st.kvm.items())
    verdict = "they match" if not st.differences else "DIFFERENT: " + ", ".join(st.differences)
    text = f"VM pid {st.pid}: {st.roots} roots; leaf SPTEs {leaves}; KVM counts {kvm}: {verdict}"
    for note in st.notes:
        text += f"\n  note: {note}"
    for table, error in st.unreadable:
        text += f"\n  table page {table:#x} not accessible ({error}): its leaves are not counted"
    if st.broken:
        text += f"\n  {len(st.broken)} corrupt part(s) not counted: see the warnings on stderr"
    return text


# -- --annotate: the struct kvm_mmu_page of a table page ----------------------------


def sp_json(sp: Optional[ShadowPage]) -> Optional[Dict[str, Any]]:
    if sp is None:
        return None
    return {
        "address": sp.address,
        "level": sp.level,
        "direct": sp.direct,
        "access": sp.access,
        "as_id": sp.as_id,
        "guest_mode": sp.guest_mode,
        "invalid": sp.invalid,
        "quadrant": sp.quadrant,
        "gfn": sp.gfn,
        "root_count": sp.root_count,
        "tdp_mmu": sp.tdp_mmu,
    }


def _level_note(sp: Optional[ShadowPage], level: int) -> str:
    if sp is None or sp.level == level:
        return ""
    if sp.tdp_mmu and sp.level == level + 1:
        # Before Linux kernel commit f1b832550832 ("KVM: x86/mmu: Fix TDP MMU
        # page table level") (in v5.14) a TDP MMU child page got its parent's
        # level; the root's was right.
        return (
            " (role.level is its parent's: the TDP MMU set it so before Linux "
            "commit f1b832550832, v5.14)"
        )
    return f" (role.level {sp.level} is not this table's level {level})"


def _access(access: int) -> str:
    # ACC_USER_MASK 4, ACC_WRITE_MASK 2, ACC_EXEC_MASK 1 (arch/x86/kvm/mmu/spte.h)
    return "".join(c if access & bit else "-" for bit, c in ((4, "u"), (2, "w"), (1, "x")))


def sp_text(sp: Optional[ShadowPage]) -> str:
    if sp is None:
        return "no struct kvm_mmu_page (a special root: pae_root/pml4_root/pml5_root)"
    extra = "".join(
        f", {word}"
        for on, word in (
            (sp.invalid, "INVALID"),
            (sp.guest_mode, "guest mode (L2)"),
            (sp.tdp_mmu, "TDP MMU"),
        )
        if on
    )
    quadrant = f", quadrant {sp.quadrant}" if sp.quadrant else ""
    return (
        f"kvm_mmu_page {sp.address:#x}: level {sp.level}, "
        f"{'direct' if sp.direct else 'shadows a guest table'}, gfn {sp.gfn:#x}, "
        f"access {_access(sp.access)}, as {sp.as_id}{quadrant}, "
        f"root_count {sp.root_count}{extra}"
    )


# -- --verify and --hpa -----------------------------------------------------------


def _maybe_hex(value: Optional[int]) -> str:
    return "-" if value is None else f"{value:#x}"


def problem_json(p: VerifyProblem) -> Dict[str, Any]:
    """``{"vm", "root", "addr", "gfn", "level", "sptep", "spte", "hpa",
    "problem", "host_hpa", "detail"}``: the record's own fields."""
    return dict(p._asdict())


def problem_text(p: VerifyProblem) -> str:
    where = f"root {_maybe_hex(p.root)} addr {_maybe_hex(p.addr)} gfn {_maybe_hex(p.gfn)}"
    spte = f"sptep {_maybe_hex(p.sptep)} spte {_maybe_hex(p.spte)}"
    host = f" host {p.host_hpa:#x}" if p.host_hpa is not None else ""
    return (
        f"VM pid {p.vm}: {p.problem}: {where} level {p.level} {spte} "
        f"hpa {_maybe_hex(p.hpa)}{host}: {p.detail}"
    )


def verify_summary_json(s: VerifySummary) -> Dict[str, Any]:
    return {
        "vm": s.vm,
        "checked": s.checked,
        "problems": s.problems,
        "exceptions": s.exceptions,
        "tables": s.tables,
        "mmio": s.mmio,
        "unreadable": [
            {"level": u.level, "table": u.table, "base": u.base, "error": u.error, "kind": u.kind}
            for u in s.unreadable
        ],
    }


def verify_summary_text(s: VerifySummary) -> List[str]:
    from .verify import EXCEPTIONS  # numpy: loaded already by whoever verified

    verdict = "no problems" if not s.problems else f"{s.problems} PROBLEMS"
    lines = [
        f"VM pid {s.vm}: {s.checked} leaf SPTEs, {s.tables} table pages and "
        f"{s.mmio} MMIO SPTEs checked: {verdict}"
    ]
    for name, n in sorted(s.exceptions.items()):
        lines.append(f"  allowed: {n} {name} ({EXCEPTIONS[name]})")
    for u in s.unreadable:
        if u.kind == "budget":
            lines.append(
                f"  from {u.base:#x} on (level-{u.level} table page {u.table:#x} and after): "
                f"{u.error}; those leaves are not checked"
            )
            continue
        why = "not accessible" if u.kind == "unreadable" else u.kind
        lines.append(
            f"  level-{u.level} table page {u.table:#x} {why} ({u.error}): "
            "its leaves are not checked"
        )
    return lines


def hpa_none_json(hpa: int) -> Dict[str, Any]:
    """--hpa's answer for an HPA that no SPTE maps: the mapping's keys, null."""
    keys = ("vm", "root", "addr", "gfn", "level", "sptep", "spte")
    return {"hpa": hpa, **{key: None for key in keys}}


def hpa_none_text(hpa: int) -> str:
    return f"HPA {hpa:#x}: no SPTE of any VM maps it"


def hpa_json(m: HpaMapping) -> Dict[str, Any]:
    """``{"hpa", "vm", "root", "addr", "gfn", "level", "sptep", "spte",
    "invalid"}``: the record's own fields."""
    return dict(m._asdict())


def hpa_text(m: HpaMapping) -> str:
    invalid = " (invalid root)" if m.invalid else ""
    return (
        f"HPA {m.hpa:#x}: VM pid {m.vm} root {m.root:#x}{invalid} addr {m.addr:#x} "
        f"gfn {_maybe_hex(m.gfn)}: level-{m.level} leaf, sptep {m.sptep:#x} spte {m.spte:#x}"
    )


def hpa_table_json(t: HpaTable) -> Dict[str, Any]:
    return {"hpa": t.hpa, "vm": t.vm, "table": sp_json(t.sp), "roots": t.roots}


def hpa_table_text(t: HpaTable) -> str:
    vm = "no root reaches it" if t.vm is None else f"VM pid {t.vm}"
    roots = ", ".join(f"{r:#x}" for r in t.roots) or "none"
    return f"HPA {t.hpa:#x}: a KVM table page ({vm}; roots {roots}): {sp_text(t.sp)}"
