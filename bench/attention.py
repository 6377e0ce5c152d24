"""Benchmark MultiHeadAttention's explicit and SDPA paths side by side in one run.

    python bench/attention.py [--batch 2] [--tokens 1024] [--repeat 5]

Times the forward pass, and the forward plus backward pass, at GPT-2 small's size
(768 features, 12 heads) on the CPU, and on CUDA when a GPU is present. Both paths
share one set of weights, and their outputs are checked to agree before timing.
Each time is the median of --repeat runs after one warm-up run.
"""

import argparse
import statistics
import time

import torch

from llmbook.attention import MultiHeadAttention


def median_time(function, repeat: int, device: str) -> float:
    """Median wall-clock seconds of `function()`, after one warm-up call."""

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    function()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(device: str, dtype: torch.dtype, batch: int, tokens: int, repeat: int):
    torch.manual_seed(0)
    mha = MultiHeadAttention(768, 768, tokens, dropout=0.0, num_heads=12)
    mha = mha.to(device=device, dtype=dtype)
    x = torch.randn(batch, tokens, 768, device=device, dtype=dtype, requires_grad=True)
    with torch.no_grad():
        mha.use_sdpa = False
        explicit = mha(x)
        mha.use_sdpa = True
        fused = mha(x)
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(explicit, fused, atol=tolerance), "paths disagree"

    results = {}
    for use_sdpa in (False, True):
        mha.use_sdpa = use_sdpa

        def forward():
            with torch.no_grad():
                mha(x)

        def forward_backward():
            mha.zero_grad(set_to_none=True)
            mha(x).sum().backward()

        results[use_sdpa] = (
            median_time(forward, repeat, device),
            median_time(forward_backward, repeat, device),
        )
    name = f"{device}, {str(dtype).removeprefix('torch.')}"
    print(f"\n{name}: batch {batch}, {tokens} tokens, 768 features, 12 heads")
    print(f"{'':<22}{'explicit':>12}{'SDPA':>12}{'speed-up':>10}")
    for k, label in enumerate(["forward", "forward + backward"]):
        slow, fast = results[False][k], results[True][k]
        times = f"{slow * 1e3:>9.1f} ms{fast * 1e3:>9.1f} ms"
        print(f"{label:<22}{times}{slow / fast:>9.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    run("cpu", torch.float32, args.batch, args.tokens, args.repeat)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
        for dtype in (torch.float32, torch.bfloat16):
            run("cuda", dtype, args.batch * 4, args.tokens, args.repeat)


if __name__ == "__main__":
    main()
