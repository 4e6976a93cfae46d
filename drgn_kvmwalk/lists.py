# SPDX-License-Identifier: LGPL-2.1-or-later
"""Kernel lists read as lists that may be corrupt: a walk that stops with
:class:`~drgn_kvmwalk.errors.CorruptList` instead of running forever when an
entry links back to one already seen, or the list grows past any kernel's."""

from __future__ import annotations

from typing import Iterator, Set

from drgn import Object, container_of

from .errors import CorruptList

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
    pos = head.next.read_()
    while pos.value_() != end:
        address = pos.value_()
        if address in seen:
            raise CorruptList(what, address, "is linked to twice (a cycle)")
        if len(seen) >= limit:
            raise CorruptList(what, address, f"is past {limit} entries")
        seen.add(address)
        yield container_of(pos, type_name, member)
        pos = pos.next.read_()
