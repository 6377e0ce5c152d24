"""Time training steps of the plain path and of the fast path, side by side in one run.

    python bench/train.py          # CPU: emb 384, 6 layers, context 256, batch 4
    python bench/train.py --batch 16   # a GPU: GPT-2 small, context 1024

Each row trains a freshly initialised model (the same seed, dropout off) with
`train_model` on random token ids, adding one technique of appendix C to the row
above it: a fused AdamW that decays only matrices (`configure_optimizer`), TF32
matrix products (CUDA only), bfloat16 autocast, and `torch.compile`. The last row
is the fast path. Every row first runs `--warmup` steps (which include compiling),
then `--steps` timed ones.

Tokens per second count the tokens trained on. Model FLOPs utilisation (MFU) is
tokens per second times `flops_per_token` (6 per multiplying weight plus the
attention's 12 * layers * width * context) divided by the device's peak bfloat16
rate: the datasheet's dense figure for known GPUs, a measured 2048 x 2048 matrix
product otherwise (said so in the output), or --peak-tflops.
"""

import argparse
import time

import torch
from common import device_name, sync
from torch.utils.data import DataLoader, TensorDataset

from llmbook.fast import configure_optimizer, flops_per_token
from llmbook.model import GPTConfig, GPTModel
from llmbook.train import TrainingConfig, train_model

# Dense bfloat16 tensor-core peaks from NVIDIA's datasheets, in TFLOP/s.
GPU_PEAKS = {
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}


def peak_flops(device: str, given_tflops: float | None) -> tuple[float, str]:
    """The device's peak bfloat16 rate in FLOP/s, and where the number comes from."""
    if given_tflops:
        return given_tflops * 1e12, "given with --peak-tflops"
    name = device_name(device)
    if device == "cuda":
        for key, tflops in GPU_PEAKS.items():
            if key in name:
                return tflops * 1e12, f"datasheet, {name}"
    size = 2048
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a @ b
    rates = []
    for _ in range(5):  # the best of five rounds: a busy moment only lowers a round
        sync(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        rates.append(4 * 2 * size**3 / (time.perf_counter() - start))
    return max(rates), f"measured: bfloat16 {size} x {size} matrix product on {name}"


def bf16_works(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def tokens_per_second(cfg, args, loader, fast: set[str]) -> float:
    """Train a fresh model with the techniques in `fast`; tokens per second."""
    torch.manual_seed(0)
    model = GPTModel(cfg).to(args.device)
    if "fused AdamW" in fast:
        optimizer = configure_optimizer(model, lr=1e-4, weight_decay=0.1)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    torch.backends.cuda.matmul.allow_tf32 = "TF32" in fast
    torch.backends.cudnn.allow_tf32 = "TF32" in fast

    def run(steps: int) -> None:
        config = TrainingConfig(
            num_epochs=10**6,
            max_steps=steps,
            eval_freq=10**9,
            progress=False,
            bf16="bf16 autocast" in fast,
            compile="torch.compile" in fast,
        )
        train_model(model, loader, loader, optimizer, args.device, config)

    run(args.warmup)
    sync(args.device)
    start = time.perf_counter()
    run(args.steps)
    sync(args.device)
    return args.steps * args.batch * cfg.context_length / (time.perf_counter() - start)


def main() -> None:
    cpu = not torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--emb", type=int, default=384 if cpu else None)
    parser.add_argument("--layers", type=int, default=6 if cpu else None)
    parser.add_argument("--heads", type=int, default=6 if cpu else None)
    parser.add_argument("--context", type=int, default=256 if cpu else 1024)
    parser.add_argument("--batch", type=int, default=4 if cpu else 16)
    parser.add_argument("--steps", type=int, default=8 if cpu else 30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--device", default="cpu" if cpu else "cuda")
    args = parser.parse_args()

    sizes = {"emb_dim": args.emb, "n_layers": args.layers, "n_heads": args.heads}
    cfg = GPTConfig.preset(
        args.preset,
        context_length=args.context,
        drop_rate=0.0,
        **{name: value for name, value in sizes.items() if value is not None},
    )
    ids = torch.randint(0, cfg.vocab_size, (args.batch * 4, args.context + 1))
    loader = DataLoader(
        TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=args.batch, shuffle=False
    )
    model = GPTModel(cfg)
    per_token = flops_per_token(model, cfg.context_length)
    peak, source = peak_flops(args.device, args.peak_tflops)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: emb {cfg.emb_dim}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"context {cfg.context_length}, batch {args.batch},\n"
        f"       {params / 1e6:.1f}M parameters, {per_token / 1e6:.0f} MFLOP per token"
    )
    threads = f", {torch.get_num_threads()} threads" if args.device == "cpu" else ""
    print(
        f"device: {device_name(args.device)} ({args.device}{threads}), "
        f"torch {torch.__version__}"
    )
    print(f"peak: {peak / 1e12:.2f} TFLOP/s ({source})\n")

    techniques = ["fused AdamW"]
    if args.device == "cuda":
        techniques.append("TF32")
    if bf16_works(args.device):
        techniques.append("bf16 autocast")
    else:
        print("(no bfloat16 support found on this device: that row is left out)")
    if not args.no_compile:
        techniques.append("torch.compile")
    print(f"{'path':<28}{'tokens/s':>10}{'MFU':>8}{'speedup':>9}")
    plain = tokens_per_second(cfg, args, loader, set())
    print(f"{'plain':<28}{plain:>10.0f}{plain * per_token / peak:>8.1%}{1:>8.2f}x")
    for i, technique in enumerate(techniques):
        rate = tokens_per_second(cfg, args, loader, set(techniques[: i + 1]))
        label = ("fast path: + " if i == len(techniques) - 1 else "+ ") + technique
        print(
            f"{label:<28}{rate:>10.0f}{rate * per_token / peak:>8.1%}"
            f"{rate / plain:>8.2f}x"
        )


if __name__ == "__main__":
    main()
