# SPDX-License-Identifier: LGPL-2.1-or-later
"""drgn-kvmwalk: read KVM's x86 shadow page tables (EPT, NPT, shadow paging)
from a live kernel, a vmcore or a QEMU guest, with drgn.

The pure layers (:mod:`.spte`, :mod:`.walk`) need no drgn; importing the
package pulls in the drgn-facing helpers too when drgn is installed.
"""

from .errors import *  # noqa: F401,F403
from .spte import *  # noqa: F401,F403
from .walk import *  # noqa: F401,F403

try:
    import drgn as _drgn  # noqa: F401
except ImportError:  # without drgn the pure layers still work
    pass
else:
    from .kvm import *  # noqa: F401,F403
    from .mmu import *  # noqa: F401,F403
    from .sptefmt import *  # noqa: F401,F403
    from .views import *  # noqa: F401,F403

# leaves.py needs numpy, which a one-address walk should not pay for: its
# names are imported on first use (PEP 562).
_LAZY = frozenset(
    {
        "LeafColumns",
        "LeafRun",
        "MapRange",
        "MapRanges",
        "RangeMerger",
        "Unreadable",
        "canonical",
        "classify_table",
        "count_leaves",
        "count_table_leaves",
        "iter_leaf_columns",
        "iter_leaves",
        "iter_range_blocks",
        "iter_ranges",
        "raw_addr",
        "run_segments",
        "split_starts",
    }
)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from . import leaves

        return getattr(leaves, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"
