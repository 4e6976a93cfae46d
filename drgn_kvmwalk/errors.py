"""Errors the helpers raise for targets that lack what the walk needs.

Every one of them means "exit status 2 and one line on stderr" to the command
line; helpers raise them, :mod:`drgn_kvmwalk.cli` reports them.
"""

__all__ = [
    "KvmWalkError",
    "MissingDebugInfo",
    "NoKvm",
    "NoRoot",
    "NoSuchVcpu",
    "NoSuchVm",
]


class KvmWalkError(Exception):
    """Base class: the target cannot answer the question as asked."""


class NoKvm(KvmWalkError):
    """The kvm module is not loaded, or no VM exists."""


class MissingDebugInfo(KvmWalkError):
    """Types or variables of kvm.ko (or vmlinux) are not available."""


class NoSuchVm(KvmWalkError):
    """No VM matches ``--vm``, or ``--vm`` is needed to choose one."""


class NoSuchVcpu(KvmWalkError):
    """No vCPU of the VM has the requested ``vcpu_id``."""


class NoRoot(KvmWalkError):
    """The vCPU's MMU has no valid root (never run, or being reloaded)."""
