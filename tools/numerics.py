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
  once per instruction set and chosen by the CPU. `ATEN_CPU_CAPABILITY=avx2` takes the
  AVX2 build, which every x86-64 CPU of the last ten years runs, AVX-512 or not.

Both are read before PyTorch's first product, so `pin()` must come before
`import torch`, and a process cannot change them later. One thread per process keeps
the order of every sum too. PyTorch's compiler (appendix C) keeps the kernels it builds
in a cache that does not tell AVX2 from AVX-512 code: a pinned process that reused an
unpinned one's bfloat16 kernels trained to NaN, so pinned processes get a cache of
their own. The price: the matrix products take about twice as long, so the tests pin
only the process that runs the pages which need it (see conftest.py).
"""

import getpass
import os
import tempfile
from pathlib import Path

PINNED = {
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "avx2",
    "OMP_NUM_THREADS": "1",
}
# Where a pinned process's compiled kernels go (PyTorch's default, with a suffix).
PINNED_KERNELS = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}_avx2"
# The names that pin() set itself, so that a child process may drop them (unpin).
SET_BY_PIN = "LLMBOOK_NUMERICS_PINNED"


def pin() -> None:
    """Set the pins in this process's environment (and its children's), leaving any
    that the caller set already."""
    wanted = {**PINNED, "TORCHINDUCTOR_CACHE_DIR": str(PINNED_KERNELS)}
    ours = [name for name in wanted if name not in os.environ]
    for name in ours:
        os.environ[name] = wanted[name]
    if ours:
        os.environ[SET_BY_PIN] = ",".join(ours)


def unpin() -> None:
    """Let MKL and PyTorch pick their fastest code again in a child of a pinned
    process (one thread stays), unless the user asked for the pins; before
    `import torch` too."""
    for name in os.environ.pop(SET_BY_PIN, "").split(","):
        if name and name != "OMP_NUM_THREADS":
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
