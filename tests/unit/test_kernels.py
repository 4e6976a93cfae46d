# SPDX-License-Identifier: LGPL-2.1-or-later
"""The kernel fetcher's package logic (vm-test/kernels.py), on made-up apt
answers: every Debian naming scheme, and a suite without a kernel."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "vm-test"))
import kernels  # noqa: E402


class FakeApt:
    def __init__(self, depends):
        self.deps = depends

    def depends(self, package):
        if package not in self.deps:
            raise RuntimeError(f"apt-cache depends {package} failed:\nE: No packages found")
        return self.deps[package]


@pytest.mark.parametrize(
    "image,release",
    [
        ("linux-image-6.1.0-57-amd64", "6.1.0-57-amd64"),  # bookworm: ABI number
        ("linux-image-7.2.13+deb14-amd64", "7.2.13+deb14-amd64"),  # sid
        ("linux-image-7.3-amd64", "7.3-amd64"),  # experimental: no ABI
        ("linux-image-5.10.0-46-amd64-unsigned", "5.10.0-46-amd64"),
    ],
)
def test_release_behind_the_meta_package(image, release):
    apt = FakeApt({"linux-image-amd64": [image]})
    assert kernels.find_release(apt, "x") == release


def test_experimental_split_packages_are_followed():
    apt = FakeApt(
        {
            "linux-image-amd64": ["linux-image-7.3-amd64"],
            "linux-image-7.3-amd64": [
                "linux-base-7.3-amd64",
                "linux-binary-7.3-amd64",
                "linux-modules-7.3-amd64",
                "kmod",
            ],
            "linux-base-7.3-amd64": [],
            "linux-binary-7.3-amd64": ["linux-base-7.3-amd64"],
            "linux-modules-7.3-amd64": [],
        }
    )
    assert kernels.kernel_packages(apt, "linux-image-amd64", "7.3-amd64") == [
        "linux-base-7.3-amd64",
        "linux-binary-7.3-amd64",
        "linux-image-7.3-amd64",
        "linux-modules-7.3-amd64",
    ]


def test_a_suite_without_a_kernel_says_so():
    with pytest.raises(kernels.NoKernel, match="experimental has no linux-image-amd64 now"):
        kernels.find_release(FakeApt({}), "experimental")
    with pytest.raises(kernels.NoKernel, match="depends on no kernel image"):
        kernels.find_release(
            FakeApt({"linux-image-amd64": ["linux-headers-amd64"]}), "experimental"
        )
    assert "experimental" in kernels.OPTIONAL and "sid" not in kernels.OPTIONAL
