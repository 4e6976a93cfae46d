# SPDX-License-Identifier: LGPL-2.1-or-later
"""The VM tests' kernel fixture (tests/vm/conftest.py): a suite that has no
kernel now (Debian experimental between releases) is skipped with the
reason, even where KVMWALK_REQUIRE_VM=1 turns other skips into failures; a
suite that must have one fails."""

import importlib.util
import shutil
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]


def load_conftest():
    spec = importlib.util.spec_from_file_location("vm_conftest", TOP / "tests/vm/conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fixture_env(monkeypatch, tmp_path):
    conftest = load_conftest()
    import kernels  # on sys.path through the conftest

    monkeypatch.setenv("KVMWALK_REQUIRE_VM", "1")
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(conftest, "TOP", tmp_path)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "l2vmm").touch()

    def no_kernel(suite, log=None):
        raise kernels.NoKernel(f"Debian {suite} has no linux-image-amd64 now")

    monkeypatch.setattr(kernels, "fetch", no_kernel)
    return conftest


def test_a_suite_without_a_kernel_is_skipped_with_the_reason(fixture_env):
    with pytest.raises(
        pytest.skip.Exception,
        match="no experimental cells: Debian experimental has no linux-image-amd64 now",
    ):
        fixture_env.fetch_kernel("experimental")


def test_a_suite_that_must_have_a_kernel_fails(fixture_env):
    with pytest.raises(pytest.fail.Exception, match="cannot fetch the Debian sid kernel"):
        fixture_env.fetch_kernel("sid")
