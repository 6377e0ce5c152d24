"""Time generation with and without the KV cache, side by side in one run.

    python bench/generate.py [--preset gpt2-small] [--new-tokens 100]
                             [--prompt-tokens 16 256] [--batch 1] [--device cpu]

For each prompt length, a randomly initialised model (float32, dropout off, the
head tied to the embedding as in GPT-2's checkpoints) writes
`--new-tokens` greedy tokens twice: with `generate(..., use_cache=False)`, which
feeds the whole sequence for every token, and with the default KV cache. Both runs
must produce the same tokens; the script stops if they do not. Each run is timed
once, after a short warm-up of both paths, and the prompt's first pass is included
in the time, as a user waits for it too.
"""

import argparse
import functools
import time

import torch
from common import device_name, sync

from llmbook.generate import generate
from llmbook.model import GPTConfig, GPTModel


def timed(function, device: str):
    sync(device)
    start = time.perf_counter()
    result = function()
    sync(device)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = GPTConfig.preset(args.preset, drop_rate=0.0, tie_weights=True)
    model = GPTModel(cfg).to(args.device).eval()
    for length in args.prompt_tokens:
        if length + args.new_tokens > cfg.context_length:
            parser.error(
                f"a prompt of {length} tokens and {args.new_tokens} new ones exceed "
                f"the context of {cfg.context_length}; past it, both paths read a "
                "full window for every token"
            )
    params = sum(p.numel() for p in model.parameters())
    where = f"{args.device}, {torch.get_num_threads()} threads"
    if args.device != "cpu":
        where = args.device
    print(
        f"{args.preset} ({params / 1e6:.0f}M parameters, float32), batch {args.batch}"
    )
    print(f"{device_name(args.device)} ({where}), torch {torch.__version__}")
    print(f"{args.new_tokens} new greedy tokens; tokens per second per row\n")
    header = ["prompt", "  no cache", "  KV cache", "speedup", "same tokens"]
    print("  ".join(header))

    warm = torch.randint(0, cfg.vocab_size, (args.batch, 8), device=args.device)
    for use_cache in (False, True):
        generate(model, warm, 4, cfg.context_length, use_cache=use_cache)
    generator = torch.Generator().manual_seed(1)
    for length in args.prompt_tokens:
        prompt = torch.randint(
            0, cfg.vocab_size, (args.batch, length), generator=generator
        )
        run = functools.partial(
            generate, model, prompt.to(args.device), args.new_tokens, cfg.context_length
        )
        (plain_ids, plain_s), (cached_ids, cached_s) = (
            timed(functools.partial(run, use_cache=flag), args.device)
            for flag in (False, True)
        )
        same = torch.equal(plain_ids, cached_ids)
        plain, cached = args.new_tokens / plain_s, args.new_tokens / cached_s
        print(
            f"{length:>6}  {plain:>10.1f}  {cached:>10.1f}  {cached / plain:>6.1f}x  "
            f"{'yes' if same else 'NO'}"
        )
        if not same:
            raise SystemExit("the cached tokens differ from the plain ones")


if __name__ == "__main__":
    main()
