# SPDX-License-Identifier: LGPL-2.1-or-later
"""Kernel layouts of struct kvm_mmu, made on purpose in a synthetic kernel:
every known one is read from where it keeps each value, and one that no
kernel has is one line and exit status 2, never a traceback."""

import io

import pytest

from drgn_kvmwalk.cli import EXIT_USAGE, main
from drgn_kvmwalk.errors import UnknownLayout
from drgn_kvmwalk.kvm import find_vcpu, find_vm
from drgn_kvmwalk.mmu import mmu_root, vcpu_mmu

from .fake_kernel import kvm_host

ROOT = 0x1_2345_6000

# struct kvm_mmu of each kernel the tool knows, as far as the walk reads it,
# and where each holds the root HPA, root level, directness and guest level.
LAYOUTS = {
    # v7.3: the guest-walk part moved to struct kvm_pagewalk (mmu->w).
    "v7.3": (
        [("w", "pagewalk *"), ("root", "root_info"), ("root_role", "role"), ("pae_root", "u64 *")],
        {
            "root.hpa": ROOT,
            "root_role.level": 4,
            "root_role.direct": 0,
            "w->cpu_role.base.level": 3,
        },
    ),
    # v5.19 .. v7.2: cpu_role and root_role in struct kvm_mmu.
    "v5.19": (
        [
            ("root", "root_info"),
            ("cpu_role", "cpu_role"),
            ("root_role", "role"),
            ("pae_root", "u64 *"),
        ],
        {"root.hpa": ROOT, "root_role.level": 4, "root_role.direct": 0, "cpu_role.base.level": 3},
    ),
    # v5.18: mmu->root, but the levels and direct_map as before.
    "v5.18": (
        [
            ("root", "root_info"),
            ("root_level", "u8"),
            ("shadow_root_level", "u8"),
            ("direct_map", "bool"),
            ("pae_root", "u64 *"),
        ],
        {"root.hpa": ROOT, "shadow_root_level": 4, "direct_map": 0, "root_level": 3},
    ),
    # v5.10: root_hpa.
    "v5.10": (
        [
            ("root_hpa", "u64"),
            ("root_level", "u8"),
            ("shadow_root_level", "u8"),
            ("direct_map", "bool"),
            ("pae_root", "u64 *"),
        ],
        {"root_hpa": ROOT, "shadow_root_level": 4, "direct_map": 0, "root_level": 3},
    ),
    # A backport of only 4d25502aa12e (cpu_role) onto a v5.18 layout: each
    # value still comes from where this kernel keeps it.
    "v5.18+cpu_role": (
        [
            ("root", "root_info"),
            ("cpu_role", "cpu_role"),
            ("shadow_root_level", "u8"),
            ("direct_map", "bool"),
            ("pae_root", "u64 *"),
        ],
        {"root.hpa": ROOT, "shadow_root_level": 4, "direct_map": 0, "cpu_role.base.level": 3},
    ),
}


def vcpu_of(k):
    return find_vcpu(find_vm(k.prog, None), 0)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_known_layout_is_read_from_its_own_members(name):
    fields, values = LAYOUTS[name]
    k = kvm_host(fields, values)
    root = mmu_root(vcpu_mmu(vcpu_of(k)))
    assert (root.hpa, root.level, root.direct, root.cpu_level) == (ROOT, 4, False, 3)
    assert root.pae_root_hpa is None


def test_the_layout_is_probed_once_per_program():
    fields, values = LAYOUTS["v7.3"]
    k = kvm_host(fields, values)
    mmu = vcpu_mmu(vcpu_of(k))
    mmu_root(mmu)
    cached = [v for key, v in k.prog.cache.items() if key == "drgn_kvmwalk.kvm_mmu_layout"]
    assert len(cached) == 1 and cached[0].cpu_level == ("w", "cpu_role", "base", "level")


# struct kvm_mmu as no kernel has it: the root level renamed.
UNKNOWN = (
    [("w", "pagewalk *"), ("root", "root_info"), ("spte_role", "role"), ("pae_root", "u64 *")],
    {"root.hpa": ROOT, "spte_role.level": 4, "w->cpu_role.base.level": 4},
)


def test_an_unknown_layout_names_the_structure_and_the_members_looked_for():
    k = kvm_host(*UNKNOWN)
    with pytest.raises(UnknownLayout) as e:
        mmu_root(vcpu_mmu(vcpu_of(k)))
    assert e.value.struct == "struct kvm_mmu"
    assert e.value.members == ("root_role", "shadow_root_level")
    assert "root level" in str(e.value)


@pytest.mark.parametrize(
    "action",
    [
        ["--vcpu", "0", "--addr", "0x1000"],
        ["--vcpu", "0", "--dump"],
        ["--vcpu", "0", "--map", "--json"],
        ["--vcpu", "0", "--addr", "0", "--root", "all"],
    ],
)
def test_an_unknown_layout_is_one_line_and_exit_2(action):
    k = kvm_host(*UNKNOWN)
    out, err = io.StringIO(), io.StringIO()
    rc = main(k.prog, action, out=out, err=err)
    assert rc == EXIT_USAGE and out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.getvalue()
    assert lines[0].startswith(
        "kvmwalk: unknown kernel layout: struct kvm_mmu has none of "
        "the members root_role, shadow_root_level"
    )


def test_a_member_missing_elsewhere_is_one_line_and_exit_2():
    """A layout change the probes do not cover yet (here: struct kvm_vcpu_arch
    without mmu) is still one line naming the structure and member."""
    k = kvm_host(*LAYOUTS["v7.3"], vcpu_arch_fields=[("cr3", "u64")])
    out, err = io.StringIO(), io.StringIO()
    rc = main(k.prog, ["--vcpu", "0", "--addr", "0x1000"], out=out, err=err)
    assert rc == EXIT_USAGE and out.getvalue() == ""
    assert err.getvalue() == (
        "kvmwalk: unknown kernel layout: 'struct kvm_vcpu_arch' has no "
        "member 'mmu'; this kvmwalk does not know this kernel yet\n"
    )
