"""Text and JSON renderings of walks.  Nothing here reads the kernel."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .spte import SpteFormat, describe_flags
from .walk import Root, Step, Walk, root_start_level

__all__ = ["LEVEL_NAMES", "header_text", "page_size_name", "walk_json", "walk_text"]

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


def header_text(vm_pid: int, vcpu_id: int, kind: str, tdp_mmu: bool, fmt: SpteFormat,
                root: Root) -> str:
    flavour = "TDP MMU" if tdp_mmu else "legacy MMU"
    hw = ("EPT" if fmt.ept else "NPT") if kind == "tdp" else "shadow paging"
    # pae_root is allocated for most shadow MMUs; name it only when the walk enters it.
    pae = (f", enters pae_root {root.pae_root_hpa:#x}"
           if root.pae_root_hpa is not None and root_start_level(root) == 3 else "")
    return (f"VM {vm_pid} vCPU {vcpu_id}: {hw}, {flavour}, {fmt.name} SPTEs, "
            f"root {root.hpa:#x} level {root.level}"
            f"{'' if root.direct else f' (guest paging level {root.cpu_level})'}{pae}")


def _step_line(step: Step) -> str:
    name = LEVEL_NAMES.get(step.level, f"L{step.level}")
    if step.pae_root:
        name += "*"
    return (f"  {name:<6} [{step.index:3d}]  sptep {step.sptep:#014x}  "
            f"spte {step.spte:#018x}  {describe_flags(step.info.flags)}")


def walk_text(w: Walk) -> List[str]:
    what = "GPA" if w.root.direct else "GVA"
    lines = [f"{what} {w.addr:#x}"]
    lines += [_step_line(s) for s in w.steps]
    if w.hpa is not None:
        lines.append(f"  => HPA {w.hpa:#x} ({page_size_name(w.page_size)} page)")
    else:
        name = LEVEL_NAMES.get(w.stop_level or 0, f"level {w.stop_level}")
        lines.append(f"  => not mapped: {w.stop} at level {w.stop_level} ({name})")
    if any(s.pae_root for s in w.steps):
        lines.append("  (* entry of mmu->pae_root, the PAE root KVM enters directly)")
    return lines


def walk_json(w: Walk, vm_pid: int, vcpu_id: int, kind: str, tdp_mmu: bool,
              fmt: SpteFormat) -> Dict[str, Any]:
    return {
        "vm": vm_pid,
        "vcpu": vcpu_id,
        "mmu": kind,
        "tdp_mmu": tdp_mmu,
        "format": fmt.name,
        "root_hpa": w.root.hpa,
        "root_level": w.root.level,
        "direct": w.root.direct,
        "addr": w.addr,
        "steps": [
            {
                "level": s.level,
                "index": s.index,
                "sptep": s.sptep,
                "spte": s.spte,
                "present": s.present,
                "leaf": s.leaf,
                "kind": "pae_root" if s.pae_root else s.info.kind,
                "flags": s.info.flags,
                **({"mmio_gfn": s.info.mmio_gfn, "mmio_gen": s.info.mmio_gen}
                   if s.info.kind == "mmio" else {}),
            }
            for s in w.steps
        ],
        "hpa": w.hpa,
        "page_size": w.page_size,
        "stop": w.stop,
        "stop_level": w.stop_level,
    }
