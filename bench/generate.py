"""Time generation side by side in one run: the book's plain loop, its KV cache in
float32, bfloat16 and int8, and Hugging Face transformers' `generate`.

    python bench/generate.py [--preset gpt2-small] [--new-tokens 100]
                             [--prompt-tokens 16 256 768] [--batch 1 8]
                             [--device cpu] [--no-transformers]

A randomly initialised model of the preset's shape (dropout off, the head tied to
the embedding as in GPT-2's checkpoints) writes `--new-tokens` greedy tokens after
random prompts, in these ways:

- plain loop: chapter 7's `generate(..., use_cache=False)`, float32, which reads the
  whole window for every token (only after the shortest prompt, at batch 1: after
  long ones it takes minutes);
- KV cache, float32: appendix C's cache, the default;
- KV cache, bfloat16 and int8: the same after `quantize(model, dtype)` (appendix F);
- transformers float32 and bfloat16: the same weights exported with chapter 12's
  `export_hf` and loaded by transformers' GPT2LMHeadModel, whose `generate` runs
  greedy with its own cache (skipped without transformers).

In a batch, row i of the prompt is i tokens shorter than the first (left padding,
with `padding` for the book's `generate` and an attention mask for transformers'),
so that the rows have different lengths as real prompts do. Every way is timed once
after a short warm-up, the prompt's first pass included. The columns are tokens per
second over all rows (tok/s); the speed-up over the plain loop (×plain) and over
float32 with the cache (×f32); the share of the memory limit reached (limit): a
step must read every weight once (`weight_bytes`), so it takes at least that many
bytes over the speed at which this machine reads memory (measured first, by summing
a 1 GB tensor); and how many of the tokens are those of float32 with the cache
(same).
"""

import argparse
import copy
import functools
import tempfile
import time

import torch
from common import device_name, sync

from llmbook.export import export_hf
from llmbook.generate import generate
from llmbook.model import GPTConfig, GPTModel
from llmbook.quantize import quantize, weight_bytes


def timed(function, device: str):
    sync(device)
    start = time.perf_counter()
    result = function()
    sync(device)
    return result, time.perf_counter() - start


def read_speed(device: str) -> float:
    """Bytes a second this device reads from memory: a sum over 1 GB, best of 3."""
    data = torch.ones(256 * 1024 * 1024, device=device)  # 1 GB of float32
    data.sum()  # the pages are touched once before timing
    best = min(timed(data.sum, device)[1] for _ in range(3))
    return data.numel() * data.element_size() / best


def prompts(batch: int, length: int, vocab: int, seed: int):
    """Random ids (batch, length) with row i padded by i places on the left, its
    padding (batch,) and the attention mask transformers takes for it."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    padding = torch.arange(batch)
    mask = torch.arange(length)[None, :] >= padding[:, None]  # (batch, length)
    return ids.masked_fill(~mask, 0), padding, mask.long()


def transformers_models(model: GPTModel, device: str) -> dict:
    """Our weights in transformers' GPT-2, in float32 and bfloat16."""
    try:
        import transformers
    except ImportError:
        return {}
    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, folder)
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    hf = hf.to(device).eval()
    half = copy.deepcopy(hf).to(torch.bfloat16)
    return {"transformers, float32": hf, "transformers, bfloat16": half}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[16, 256, 768])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = GPTConfig.preset(args.preset, drop_rate=0.0, tie_weights=True)
    model = GPTModel(cfg).to(args.device).eval()
    longest = max(args.prompt_tokens) + args.new_tokens
    if longest > cfg.context_length:
        parser.error(
            f"a prompt of {max(args.prompt_tokens)} tokens and {args.new_tokens} new "
            f"ones exceed the context of {cfg.context_length}"
        )
    ours: dict[str, torch.nn.Module] = {"KV cache, float32": model}
    for dtype in ["bfloat16", "int8"]:  # the same weights, quantized
        ours[f"KV cache, {dtype}"] = quantize(copy.deepcopy(model), dtype)
    theirs = {} if args.no_transformers else transformers_models(model, args.device)
    if not args.no_transformers and not theirs:
        print("(transformers is not installed: its rows are left out)")
    speed = read_speed(args.device)

    params = sum(p.numel() for p in model.parameters())
    where = args.device
    if args.device == "cpu":
        where = f"cpu, {torch.get_num_threads()} threads"
    versions = f"torch {torch.__version__}"
    if theirs:
        import transformers

        versions += f", transformers {transformers.__version__}"
    print(f"{args.preset} ({params / 1e6:.0f}M parameters), random weights, ", end="")
    print(f"{args.new_tokens} new greedy tokens a row")
    print(f"{device_name(args.device)} ({where}), {versions}")
    print(f"memory read speed: {speed / 1e9:.1f} GB/s (the sum of a 1 GB tensor)")
    for name, m in ours.items():
        print(f"  {name}: {weight_bytes(m) / 1e6:.0f} MB of weights read a step")
    print()
    header = f"{'batch':>5} {'prompt':>6}  {'way':<22}{'tok/s':>8}{'×plain':>8}"
    print(header + f"{'×f32':>7}{'limit':>7}{'same':>6}")

    warm = torch.randint(0, cfg.vocab_size, (1, 8), device=args.device)
    for m in ours.values():
        generate(m, warm, 4, cfg.context_length)
    for hf in theirs.values():
        hf.generate(warm, max_new_tokens=4, do_sample=False, pad_token_id=0)
    per_batch: dict[tuple[str, int], float] = {}
    for batch in args.batch:
        for length in args.prompt_tokens:
            ids, padding, mask = prompts(batch, length, cfg.vocab_size, seed=length)
            ids, padding, mask = (t.to(args.device) for t in (ids, padding, mask))
            rows: list[tuple[str, torch.nn.Module | None, functools.partial]] = []
            if batch == 1 and length == min(args.prompt_tokens):
                call = functools.partial(
                    generate, model, ids, args.new_tokens, cfg.context_length,
                    use_cache=False,
                )  # fmt: skip
                rows.append(("plain loop, float32", model, call))
            for name, m in ours.items():
                call = functools.partial(
                    generate, m, ids, args.new_tokens, cfg.context_length,
                    padding=padding if batch > 1 else None,
                )  # fmt: skip
                rows.append((name, m, call))
            for name, hf in theirs.items():
                call = functools.partial(
                    hf.generate, ids, attention_mask=mask,
                    max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                    do_sample=False, pad_token_id=0,
                )  # fmt: skip
                rows.append((name, None, call))
            results = {name: timed(call, args.device) for name, _, call in rows}
            reference = results["KV cache, float32"][0][:, length:]
            base = batch * args.new_tokens / results["KV cache, float32"][1]
            plain = results.get("plain loop, float32")
            for name, way, _ in rows:
                out, seconds = results[name]
                rate = batch * args.new_tokens / seconds
                per_batch[name, batch] = max(per_batch.get((name, batch), 0), rate)
                vs_plain = ""
                if plain is not None:
                    vs_plain = f"{rate / (batch * args.new_tokens / plain[1]):.1f}"
                step = seconds / args.new_tokens
                needed = weight_bytes(way if way is not None else model) / speed
                if name.endswith("bfloat16") and way is None:
                    needed /= 2  # transformers' bfloat16: two bytes a weight
                same = (out[:, length:] == reference).float().mean().item()
                print(
                    f"{batch:>5} {length:>6}  {name:<22}{rate:>8.1f}{vs_plain:>8}"
                    f"{rate / base:>7.2f}{needed / step:>7.0%}{same:>6.0%}"
                )
    if len(args.batch) > 1:
        small, large = min(args.batch), max(args.batch)
        print(f"\nbatch {large} against batch {small}, tokens/s, best over prompts:")
        for name in dict.fromkeys(name for name, _ in per_batch):
            if (name, small) in per_batch and (name, large) in per_batch:
                ratio = per_batch[name, large] / per_batch[name, small]
                print(f"  {name:<22}{ratio:>6.1f}x")


if __name__ == "__main__":
    main()
