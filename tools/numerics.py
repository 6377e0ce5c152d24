"""The same arithmetic on every x86-64 CPU, for the runs whose printouts the book shows.

A training run of a few hundred steps amplifies the last bit of a float: two CPUs that
round one sum differently end the run in different places, and chapters 8 and 9 then
print other accuracies (seen: 75 instead of 88 answers right of 100, on an Intel Xeon
against an AMD EPYC). Two libraries choose their code by the CPU they run on:

- Intel's oneMKL, PyTorch's matrix products on x86: each instruction set (AVX-512,
  AVX2, ...) sums in its own order, and it picks another set on AMD than on Intel.
  `MKL_CBWR=COMPATIBLE` asks for its conditional numerical reproducibility branch
  meant for every Intel and compatible processor (SSE2 code, the same results).
- PyTorch's own kernels (softmax, layer norm, the optimizer, random init), compiled
  once per instruction set and chosen by the CPU: AVX-512 on the Intel and AMD (Zen 4
  and later) machines the book is checked on. `ATEN_CPU_CAPABILITY=avx2` would pin
  them too, but with it PyTorch 2.13's compiler (appendix C) emits bfloat16 code that
  trains to NaN, so they are left to the CPU: one without AVX-512 prints other numbers
  in chapters 8, 9 and appendix E.

MKL reads its setting before its first product, so `pin()` must come before
`import torch` (conftest.py and tools/figures.py call it first), and a process cannot
change it later. One thread per process keeps the order of every sum too. The price:
the matrix products take about twice as long, so the tests pin only the process that
runs the pages which need it (see conftest.py).
"""

import os

PINNED = {"MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}
# The names that pin() set itself, so that a child process may drop them (unpin).
SET_BY_PIN = "LLMBOOK_NUMERICS_PINNED"


def pin() -> None:
    """Set the pins in this process's environment (and its children's), leaving any
    that the caller set already."""
    ours = [name for name in PINNED if name not in os.environ]
    for name in ours:
        os.environ[name] = PINNED[name]
    if ours:
        os.environ[SET_BY_PIN] = ",".join(ours)


def unpin() -> None:
    """Let MKL pick its fastest code again in a child of a pinned process (one
    thread stays), unless the user asked for the pin; before `import torch` too."""
    for name in os.environ.pop(SET_BY_PIN, "").split(","):
        if name == "MKL_CBWR":
            del os.environ[name]


def is_pinned() -> bool:
    """Whether this process does its matrix products as the pages' runs did."""
    return not pinned()


def pinned() -> list[str]:
    """The pins that differ here from the book's, as `NAME=value` lines; empty when
    this process prints the numbers on the pages."""
    return [
        f"{name}={os.environ.get(name, '')} (the book's: {value})"
        for name, value in PINNED.items()
        if os.environ.get(name, "").lower() != value.lower()
    ]
