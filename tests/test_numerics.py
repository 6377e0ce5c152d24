"""The pins that make chapters 8, 9 and appendix E print the same numbers on every
x86-64 CPU (tools/numerics.py): set by pin(), dropped again by unpin() in a child."""

import pytest

from tools import numerics

NAMES = [*numerics.PINNED, "TORCHINDUCTOR_CACHE_DIR", numerics.SET_BY_PIN]


@pytest.fixture
def clean(monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_pin_sets_every_pin_and_a_kernel_cache_of_its_own(clean):
    numerics.pin()
    assert numerics.is_pinned() and numerics.pinned() == []
    cache = numerics.os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert cache == str(numerics.PINNED_KERNELS) and cache.endswith("_avx2")


def test_unpin_drops_what_pin_set_but_keeps_one_thread(clean):
    numerics.pin()
    numerics.unpin()
    env = numerics.os.environ
    assert "MKL_CBWR" not in env and "ATEN_CPU_CAPABILITY" not in env
    assert "TORCHINDUCTOR_CACHE_DIR" not in env and numerics.SET_BY_PIN not in env
    assert env["OMP_NUM_THREADS"] == "1"
    assert not numerics.is_pinned()


def test_a_users_own_settings_survive_pin_and_unpin_and_are_named(clean):
    clean.setenv("MKL_CBWR", "AVX2")
    numerics.pin()
    assert numerics.pinned() == ["MKL_CBWR=AVX2 (the book's: COMPATIBLE)"]
    numerics.unpin()
    assert numerics.os.environ["MKL_CBWR"] == "AVX2"
