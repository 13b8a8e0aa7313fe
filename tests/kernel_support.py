"""Markers for tests of what exists only where our native kernels run (imported by test modules;
this folder is on sys.path, as tests/conftest.py's)."""

from __future__ import annotations

import pytest


def _int8_dot() -> bool:
    from deepseek.model import kernels

    return kernels.int8_dot()


# The int8 key sketch (and so its tests) exists only where its kernel runs: AVX512-VNNI and a compiler.
needs_int8_dot = pytest.mark.skipif(not _int8_dot(), reason="no int8 key sketch here (needs AVX512-VNNI kernels)")
