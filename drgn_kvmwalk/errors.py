# SPDX-License-Identifier: LGPL-2.1-or-later
"""Errors the helpers raise for targets that lack what the walk needs.

Every one of them means "exit status 2 and one line on stderr" to the command
line; helpers raise them, :mod:`drgn_kvmwalk.cli` reports them.
"""

from typing import Sequence

__all__ = [
    "BadKernelValue",
    "CorruptList",
    "KvmWalkError",
    "MissingDebugInfo",
    "NoKvm",
    "NoRoot",
    "NoSuchVcpu",
    "NoSuchVm",
    "UnknownLayout",
]


class KvmWalkError(Exception):
    """Base class: the target cannot answer the question as asked."""


class NoKvm(KvmWalkError):
    """The kvm module is not loaded, or no VM exists."""


class MissingDebugInfo(KvmWalkError):
    """Types or variables of kvm.ko (or vmlinux) are not available."""


class NoSuchVm(KvmWalkError):
    """No VM matches the pid asked for, or there are several to choose from:
    then ``choices`` lists them ("pid 4242 (2 vCPUs), ...") and ``count`` says
    how many, for the front-end to word its own request."""

    def __init__(self, message: str, choices: str = "", count: int = 0) -> None:
        super().__init__(message)
        self.choices = choices
        self.count = count


class NoSuchVcpu(KvmWalkError):
    """No vCPU of the VM has the requested ``vcpu_id``."""


class NoRoot(KvmWalkError):
    """The vCPU's MMU has no valid root (never run, or being reloaded)."""


class UnknownLayout(KvmWalkError):
    """A kernel structure has none of the layouts this tool knows.

    :param struct: the C type, e.g. ``struct kvm_mmu``
    :param members: the members looked for, newest layout first
    """

    def __init__(self, struct: str, members: Sequence[str], what: str = "") -> None:
        self.struct = struct
        self.members = tuple(members)
        about = f" ({what})" if what else ""
        super().__init__(
            f"unknown kernel layout: {struct} has none of the members "
            f"{', '.join(self.members)}{about}; this kvmwalk does not know "
            "this kernel yet"
        )


class BadKernelValue(KvmWalkError):
    """A value read from the kernel that steers the walk is out of its range
    (corrupt memory, or a layout misread): ``field`` names where it was read,
    ``value`` is what was there, ``expected`` what it may be."""

    def __init__(self, field: str, value: int, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field} is {value}, not {expected}: the kernel's memory is corrupt")


class CorruptList(KvmWalkError):
    """A kernel list that does not come back to its head: an entry links to
    one seen before (a cycle), or there are more than any kernel makes."""

    def __init__(self, what: str, address: int, reason: str) -> None:
        self.what = what
        self.address = address
        super().__init__(f"{what} is corrupt: the entry at {address:#x} {reason}")
