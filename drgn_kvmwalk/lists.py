# SPDX-License-Identifier: LGPL-2.1-or-later
"""Kernel lists read as lists that may be corrupt: a walk that stops with
:class:`~drgn_kvmwalk.errors.CorruptList` instead of running forever when an
entry links back to one already seen, or the list grows past any kernel's."""

from __future__ import annotations

from typing import Iterable, Iterator, List, Set, TypeVar

from drgn import FaultError, Object, container_of, sizeof

from .errors import CorruptList

__all__ = ["LIST_LIMIT", "list_entries", "rbtree_entries", "until_corrupt"]

T = TypeVar("T")

# More entries than any of the lists read here holds on a real host (VMs,
# TDP MMU roots, shadow pages: active_mmu_pages is bounded by the MMU's page
# budget, a few million at most).
LIST_LIMIT = 1 << 24


def list_entries(
    head: Object, type_name: str, member: str, what: str, limit: int = LIST_LIMIT
) -> Iterator[Object]:
    """``list_for_each_entry(pos, head, member)``, each entry as ``type_name
    *``, checked: ``what`` names the list in the error.

    :param head: ``struct list_head *``
    :raises CorruptList: an entry repeats, or there are more than ``limit``
    """
    end = head.value_()
    seen: Set[int] = set()
    pos = _next(head, what, end)
    while pos.value_() != end:
        _see(seen, pos.value_(), what, limit)
        entry = container_of(pos, type_name, member)
        _readable(entry, what)
        yield entry
        pos = _next(pos, what, end)


def _next(pos: Object, what: str, head: int) -> Object:
    try:
        return pos.next.read_()
    except FaultError:
        raise CorruptList(what, pos.value_(), "cannot be read") from None


def _readable(entry: Object, what: str) -> None:
    """An entry whose memory the target does not hold is where the list
    breaks (a corrupt link), not a fault in whatever reads it next."""
    try:
        entry.prog_.read(entry.value_(), sizeof(entry.type_.type))
    except FaultError:
        raise CorruptList(what, entry.value_(), "cannot be read") from None


def _see(seen: Set[int], address: int, what: str, limit: int) -> None:
    """Note one more entry of a list or tree; raise if it was seen before or
    the walk is past ``limit`` entries."""
    if address in seen:
        raise CorruptList(what, address, "is linked to twice (a cycle)")
    if len(seen) >= limit:
        raise CorruptList(what, address, f"is past {limit} entries")
    seen.add(address)


def rbtree_entries(
    root: Object, type_name: str, member: str, what: str, limit: int = LIST_LIMIT
) -> Iterator[Object]:
    """``rbtree_inorder_for_each_entry(type_name, root, member)``, checked:
    in sort order, each node once.  drgn's own helper recurses, so a tree
    whose child links back to a node above (corrupt memory) would end in a
    RecursionError or never; this one keeps its own stack and names the
    node seen twice.

    :param root: ``struct rb_root *``
    :raises CorruptList: a node is reached twice, or there are more than ``limit``
    """
    seen: Set[int] = set()
    stack: List[Object] = []
    node = root.rb_node.read_()
    while stack or node:
        while node:
            _see(seen, node.value_(), what, limit)
            stack.append(node)
            try:
                node = node.rb_left.read_()
            except FaultError:
                raise CorruptList(what, node.value_(), "cannot be read") from None
        node = stack.pop()
        entry = container_of(node, type_name, member)
        _readable(entry, what)
        yield entry
        node = node.rb_right.read_()


def until_corrupt(entries: Iterable[T], broken: List[str]) -> Iterator[T]:
    """The entries of a checked list or tree up to where it is corrupt; the
    :class:`~drgn_kvmwalk.errors.CorruptList` line goes to ``broken`` (for a
    whole-VM action that goes on with what it has)."""
    try:
        yield from entries
    except CorruptList as e:
        broken.append(str(e))
