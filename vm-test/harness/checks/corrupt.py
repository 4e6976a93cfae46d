# SPDX-License-Identifier: LGPL-2.1-or-later
"""Kernel state corrupted on purpose in a copy of the ELF dump
(vm-test/corrupt_dumps.py): the tool names each change where it was made,
in one line, goes on with the rest, and prints nothing the tables do not
hold.

What each state must give is derived here from the facts the script
located with drgn (the root, its entry on the first tag's path, the links
it changed) and from --dump of the copy before any change, which must come
back unchanged after the last one:

- ``mmu_root_level`` (the vCPU's root level made 15): --addr exit 2 with the
  one line; --list lists the vCPU with that line; --verify names it
  (root_level) where the legacy MMU reads vCPU roots, and under the TDP MMU,
  which does not, finds nothing;
- ``sp_role_level`` (role.level of the root's struct kvm_mmu_page made 15):
  --stats warns about that root by its HPA and counts the rest; --verify
  names it (root_level under the TDP MMU, role_level under the legacy MMU);
- ``vm_list_loop``: --list and --stats warn once, naming the link, and give
  the VMs before it, the workload's among them;
- ``memslot_loop`` (a memslot tree node linked back to the top, or 5.10's
  used_slots past its array): --list warns, naming it, and lists the VM;
  --verify reports it (corrupt_list) and checks the leaves against the
  memslots it could read (no_memslot for the others);
- ``mmu_list_loop``: --stats warns, naming the list and the entry;
  --verify reports exactly that (corrupt_list);
- ``table_repeat`` (the root's entry copied into 4 empty entries): under a
  direct root --dump gives exactly the leaves it gave before and one warning
  per copy at its address, --verify one table_repeated per copy; under
  shadow paging (one shadow page with several parents is legitimate) --dump
  gives each leaf under the entry again at each copy's addresses, and
  --verify finds nothing;
- ``top_leaf`` (that entry with the page-size bit, in entry 300): --dump
  gives the leaves of before and that leaf at its canonical address, and
  every address --dump printed walks to the same SPTE; --stats warns about
  the leaf at level 4/5 and --verify names it (leaf_level) at its SPTE.

Then random bit flips, one at a time (seeded): in entries of the root's
table pages, where --dump must give exactly the leaves of vm-test/fuzz.py's
reference walk of the flipped tables (read from the ELF file, not through
drgn) and one warning per table page either did not descend into; and in
kernel fields that steer the walk, where each action must end as documented
(--stats 0, --verify 0 or 1, --dump 0; or exit 2 with one line when the
flip left nothing to do).

Every run: no traceback, stdout JSON Lines, within its time.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Set, Tuple

from ..records import CellResult, Problem

CORRUPT = "corrupt_dumps"
STATES = (
    "mmu_root_level",
    "sp_role_level",
    "vm_list_loop",
    "memslot_loop",
    "mmu_list_loop",
    "table_repeat",
    "top_leaf",
)
SECONDS = 120  # any one run, at most
_MASK64 = (1 << 64) - 1
_ROOT_LEVEL_LINE = re.compile(
    r"kvmwalk: mmu->\S+ is 15, not a root level \(2-5\): the kernel's memory is corrupt\n"
)

Leaf = Tuple[int, int, int]  # addr, sptep, level


def check_corrupt_dumps(result: CellResult) -> List[Problem]:
    problems: List[Problem] = []

    def problem(message: str) -> None:
        problems.append(Problem("elf", CORRUPT, f"corrupt dumps: {message}"))

    cd = result.get("corrupt_dumps")
    if not cd or "error" in cd:
        problem(f"not run: {cd}")
        return problems
    facts = cd["facts"]
    for where, r in _every_run(cd):
        if r.get("rc") is None or "Traceback" in r.get("stderr", ""):
            problem(f"{where}: exit {r.get('rc')}: {r.get('stderr', '')[-400:]}")
        if r.get("seconds", 0) > SECONDS:
            problem(f"{where}: {r['seconds']:.0f} s, more than {SECONDS} s")
    before, after = cd["before"]["dump"], cd["after"]["dump"]
    if before["rc"] != 0 or before["stderr"] or not before.get("leaves"):
        problem(f"--dump before the changes: exit {before['rc']}, {before['stderr'][:200]}")
        return problems
    if _leaves(after) != _leaves(before) or after["stderr"]:
        problem("--dump after the changes were put back differs from before")
    if sorted(cd["made"]) != sorted(STATES):
        problem(f"made {cd['made']}, not {list(STATES)}: {cd.get('not_made')}")
    judge = {
        "mmu_root_level": _mmu_root_level,
        "sp_role_level": _sp_role_level,
        "vm_list_loop": _vm_list_loop,
        "memslot_loop": _memslot_loop,
        "mmu_list_loop": _mmu_list_loop,
        "table_repeat": _table_repeat,
        "top_leaf": _top_leaf,
    }
    for name, state in cd["states"].items():
        for message in judge[name](facts, state["runs"], _leaves(before)):
            problem(f"{name}: {message}")
    flips = cd.get("flips") or []
    if not flips:
        problem("no random bit flips were made")
    for f in flips:
        for message in _flip(f):
            problem(f"flip of bit {f['bit']} at {f['pa']:#x} ({f['what']}): {message}")
    return problems


def _flip(f: Dict[str, Any]) -> List[str]:
    """A random bit flip: every action ends as documented, and --dump gives
    the reference walk's leaves of the flipped tables, with one warning per
    table page it did not descend into."""
    bad = []
    runs = f["runs"]
    ref = f.get("reference")
    # A table flip leaves every kernel structure readable; a flipped kernel
    # field may leave nothing to do (exit 2, one line), as when vm_list's
    # first link points nowhere.
    allowed = {"stats": (0,), "verify": (0, 1), "dump": (0,)}
    if ref is None:
        allowed = {"stats": (0, 2), "verify": (0, 1, 2), "dump": (0, 2)}
    for action, codes in allowed.items():
        r = runs[action]
        one_line = r["stderr"].startswith("kvmwalk: ") and r["stderr"].count("\n") == 1
        if r["rc"] not in codes or (r["rc"] == 2 and not one_line):
            bad.append(f"--{action}: exit {r['rc']}: {r['stderr'][:200]!r}")
    dump = runs["dump"]
    if ref is not None:
        want = {tuple(x) for x in ref["leaves"]}
        warnings = [ln for ln in dump["stderr"].splitlines() if ln.startswith("warning: ")]
        if dump["rc"] != 0 or _leaves(dump) != want or len(warnings) != len(ref["skipped"]):
            extra = sorted(_leaves(dump) ^ want)[:3]
            bad.append(
                f"--dump: exit {dump['rc']}, {len(_leaves(dump))} leaves, reference "
                f"{len(want)} (differing {extra}), {len(warnings)} warnings, reference "
                f"{len(ref['skipped'])} tables not descended into"
            )
    return bad


def _every_run(cd: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    found = [(f"before {a}", r) for a, r in cd["before"].items()]
    found += [(f"after {a}", r) for a, r in cd["after"].items()]
    for name, state in cd["states"].items():
        found += [(f"{name} {a}", r) for a, r in state["runs"].items() if r is not None]
    for f in cd.get("flips") or []:
        found += [(f"flip at {f['pa']:#x} {a}", r) for a, r in f["runs"].items()]
    return found


def _leaves(run: Dict[str, Any]) -> Set[Leaf]:
    return {(a, s, lv) for a, s, lv in run.get("leaves") or []}


def _problems(run: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [r for r in run.get("records") or [] if "problem" in r]


def _kinds(run: Dict[str, Any]) -> List[str]:
    return sorted(p["problem"] for p in _problems(run))


def _shift(level: int) -> int:
    return 12 + 9 * (level - 1)


def _canonical(facts: Dict[str, Any], raw: int) -> int:
    """The address as printed: GVAs sign-extended from the root's top bit."""
    bits = _shift(facts["top"]["level"]) + 9
    if not facts["direct"] and raw >> (bits - 1) & 1:
        return (raw | (_MASK64 ^ ((1 << bits) - 1))) & _MASK64
    return raw


def _mmu_root_level(facts: Dict[str, Any], runs: Dict[str, Any], before: Set[Leaf]) -> List[str]:
    bad = []
    addr = runs["addr"]
    if addr["rc"] != 2 or not _ROOT_LEVEL_LINE.fullmatch(addr["stderr"]):
        bad.append(f"--addr: exit {addr['rc']}, {addr['stderr']!r}: not the one line, exit 2")
    ls = runs["list"]
    vcpus = [
        v
        for vm in (ls.get("records") or [{}])[0].get("vms", [])
        if vm["pid"] == facts["pid"]
        for v in vm["vcpus"]
        if v["id"] == facts["vcpu"]
    ]
    if (
        ls["rc"] != 0
        or ls["stderr"]
        or not vcpus
        or "is 15, not a root level" not in (vcpus[0].get("no_root") or "")
    ):
        bad.append(f"--list: exit {ls['rc']}, {ls['stderr']!r}, vCPU {vcpus}")
    v = runs["verify"]
    if facts["tdp_mmu"]:
        if v["rc"] != 0 or _problems(v):
            bad.append(f"--verify (TDP MMU: vCPU roots not read): exit {v['rc']}, {_problems(v)}")
    else:
        named = [p for p in _problems(v) if p["detail"].startswith(f"vCPU {facts['vcpu']}: ")]
        if v["rc"] != 1 or _kinds(v) != ["root_level"] or not named:
            bad.append(f"--verify: exit {v['rc']}, {_problems(v)[:3]}: want root_level")
    return bad


def _sp_role_level(facts: Dict[str, Any], runs: Dict[str, Any], before: Set[Leaf]) -> List[str]:
    bad = []
    what = "TDP MMU root" if facts["tdp_mmu"] else "shadow page"
    st = runs["stats"]
    line = f"warning: VM pid {facts['pid']}: role.level of {what} {facts['root_hpa']:#x} "
    recs = [r for r in st.get("records") or [] if r.get("vm") == facts["pid"]]
    if st["rc"] != 0 or not st["stderr"].startswith(line) or not recs or not recs[0]["broken"]:
        bad.append(f"--stats: exit {st['rc']}, {st['stderr'][:300]!r}: want {line!r}")
    v = runs["verify"]
    want = "root_level" if facts["tdp_mmu"] else "role_level"
    named = [p for p in _problems(v) if p["hpa"] == facts["root_hpa"]]
    if v["rc"] != 1 or _kinds(v) != [want] or not named:
        bad.append(f"--verify: exit {v['rc']}, {_problems(v)[:3]}: want {want}")
    return bad


def _vm_list_loop(facts: Dict[str, Any], runs: Dict[str, Any], before: Set[Leaf]) -> List[str]:
    bad = []
    for action in ("list", "stats"):
        r = runs[action]
        recs = r.get("records") or []
        pids = [vm["pid"] for vm in recs[0]["vms"]] if action == "list" and recs else []
        if action == "stats":
            pids = [rec["vm"] for rec in recs]
        line = (
            f"warning: vm_list is corrupt: the entry at {facts['vm_list_link']:#x} is linked "
            f"to twice (a cycle); only the {len(pids)} VM(s) before it are read\n"
        )
        if r["rc"] != 0 or r["stderr"] != line or facts["pid"] not in pids:
            bad.append(f"--{action}: exit {r['rc']}, {r['stderr']!r}, VMs {pids}: want {line!r}")
    return bad


def _memslot_loop(facts: Dict[str, Any], runs: Dict[str, Any], before: Set[Leaf]) -> List[str]:
    bad = []
    ls = runs["list"]
    vms = (ls.get("records") or [{}])[0].get("vms", [])
    broken = [b for vm in vms if vm["pid"] == facts["pid"] for b in vm.get("broken", [])]
    line = f"warning: VM pid {facts['pid']}: {facts['memslot_what']}"
    if ls["rc"] != 0 or not ls["stderr"].startswith(line) or ls["stderr"].count("\n") != 1:
        bad.append(f"--list: exit {ls['rc']}, {ls['stderr']!r}: want {line!r}")
    if not broken or not broken[0].startswith(facts["memslot_what"]):
        bad.append(f"--list: the VM's broken is {broken}")
    v = runs["verify"]
    named = [p for p in _problems(v) if p["detail"].startswith(facts["memslot_what"])]
    others = set(_kinds(v)) - {"corrupt_list", "no_memslot", "memslot_edge"}
    if v["rc"] != 1 or not named or others:
        bad.append(f"--verify: exit {v['rc']}, {_problems(v)[:3]}: want corrupt_list")
    return bad


def _mmu_list_loop(facts: Dict[str, Any], runs: Dict[str, Any], before: Set[Leaf]) -> List[str]:
    bad = []
    what = (
        f"kvm->arch.{facts['mmu_list']} is corrupt: the entry at "
        f"{facts['mmu_list_entry']:#x} is linked to twice (a cycle)"
    )
    st = runs["stats"]
    recs = [r for r in st.get("records") or [] if r.get("vm") == facts["pid"]]
    want = f"warning: VM pid {facts['pid']}: {what}\n"
    if st["rc"] != 0 or st["stderr"] != want or not recs or recs[0]["broken"] != [what]:
        bad.append(f"--stats: exit {st['rc']}, {st['stderr']!r}: want {want!r}")
    v = runs["verify"]
    named = [p for p in _problems(v) if p["detail"].startswith(what)]
    if v["rc"] != 1 or _kinds(v) != ["corrupt_list"] or not named:
        bad.append(f"--verify: exit {v['rc']}, {_problems(v)[:3]}: want corrupt_list")
    return bad


def _table_repeat(facts: Dict[str, Any], runs: Dict[str, Any], before: Set[Leaf]) -> List[str]:
    bad = []
    top = facts["top"]
    shift = _shift(top["level"])
    copies = facts["repeat_indexes"]
    dump, v = runs["dump"], runs["verify"]
    if facts["direct"]:
        starts = [f"warning: GPA {j << shift:#x}-{(j + 1) << shift:#x}: " for j in copies]
        lines = dump["stderr"].splitlines()
        if (
            dump["rc"] != 0
            or _leaves(dump) != before
            or len(lines) != len(copies)
            or not all(
                ln.startswith(s) and "reached a second time" in ln for ln, s in zip(lines, starts)
            )
        ):
            bad.append(
                f"--dump: exit {dump['rc']}, {len(_leaves(dump))} leaves (before "
                f"{len(before)}), stderr {lines[:5]}: want the leaves of before and "
                f"one warning per copy at {[hex(j << shift) for j in copies]}"
            )
        addrs = sorted(p["addr"] for p in _problems(v))
        if (
            v["rc"] != 1
            or _kinds(v) != ["table_repeated"] * len(copies)
            or addrs != [j << shift for j in copies]
        ):
            bad.append(f"--verify: exit {v['rc']}, {_problems(v)[:5]}: want table_repeated")
        return bad
    # Shadow paging: each copy is another parent of the same shadow page.
    i = top["index"]
    under = [leaf for leaf in before if (leaf[0] >> shift) & 511 == i]
    want = set(before)
    for j in copies:
        want |= {((a - (i << shift) + (j << shift)) & _MASK64, s, lv) for a, s, lv in under}
    if dump["rc"] != 0 or dump["stderr"] or _leaves(dump) != want:
        bad.append(
            f"--dump: exit {dump['rc']}, {len(_leaves(dump))} leaves, want {len(want)} "
            f"({len(under)} under entry {i}, again at each of {copies}): {dump['stderr'][:200]}"
        )
    if v["rc"] != 0 or _problems(v):
        bad.append(f"--verify: exit {v['rc']}, {_problems(v)[:3]}: shared shadow pages are legal")
    return bad


def _top_leaf(facts: Dict[str, Any], runs: Dict[str, Any], before: Set[Leaf]) -> List[str]:
    bad = []
    top = facts["top"]
    level = top["level"]
    sptep = facts["top_leaf_sptep"]
    addr = _canonical(facts, 300 << _shift(level))
    dump = runs["dump"]
    want = before | {(addr, sptep, level)}
    if dump["rc"] != 0 or dump["stderr"] or _leaves(dump) != want:
        extra = sorted(_leaves(dump) - before)[:3]
        bad.append(
            f"--dump: exit {dump['rc']}, new leaves {extra}: want ({addr:#x}, {sptep:#x}, "
            f"{level}) alone: {dump['stderr'][:200]}"
        )
    again = runs.get("walk_again") or {}
    walks = {a: (s, h) for a, s, h in again.get("walks") or []}
    wrong = [
        (hex(a), hex(s), walks.get(a))
        for a, s, _ in dump.get("leaves") or []
        if walks.get(a, (None, None))[0] != s or walks[a][1] is None
    ]
    if again.get("rc") != 0 or wrong:
        bad.append(f"--addr of the addresses --dump printed: exit {again.get('rc')}, {wrong[:3]}")
    st = runs["stats"]
    what = "TDP MMU root" if facts["tdp_mmu"] else "shadow page"
    line = (
        f"warning: VM pid {facts['pid']}: 1 leaf SPTE at level {level} under {what} "
        f"{facts['root_hpa']:#x}: "
    )
    if st["rc"] != 0 or not st["stderr"].startswith(line) or st["stderr"].count("\n") != 1:
        bad.append(f"--stats: exit {st['rc']}, {st['stderr']!r}: want {line!r}")
    v = runs["verify"]
    if v["rc"] != 1 or _kinds(v) != ["leaf_level"] or _problems(v)[0]["sptep"] != sptep:
        bad.append(f"--verify: exit {v['rc']}, {_problems(v)[:3]}: want leaf_level at {sptep:#x}")
    return bad
