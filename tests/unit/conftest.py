# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures shared by the unit tests."""

import signal

import pytest


@pytest.fixture
def deadline():
    """A test of something that could loop or run for hours (corrupt lists
    and tables) fails after 20 s instead of hanging the run."""

    def expired(signum, frame):
        raise TimeoutError("did not end")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
