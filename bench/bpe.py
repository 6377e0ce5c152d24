"""Benchmark the BPE tokenizer of chapter 3 against tiktoken, side by side in one run.

    python bench/bpe.py [--repeat N]

Encodes the book's three data files (joined, about 700 KB) with:
  - BPETokenizer.gpt2().encode, first with an empty pre-token cache, then warm;
  - BPETokenizer.gpt2().to_tiktoken(), the same ranks in tiktoken's Rust core;
  - tiktoken.get_encoding("gpt2") itself;
and times training BPETokenizer vocabularies of 1,000 and 5,000 tokens on the same
text. Every encoder's ids are checked to be identical before anything is timed.
Each time is the best of --repeat runs.
"""

import argparse
import time

import tiktoken

from llmbook.bpe import BPETokenizer
from llmbook.data import data_file

FILES = ["the-verdict.txt", "SMSSpamCollection", "instruction-data.json"]


def best_time(function, repeat: int) -> float:
    """The shortest of `repeat` wall-clock times of `function()`, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    text = "\n".join(data_file(name).read_text(encoding="utf-8") for name in FILES)
    megabytes = len(text.encode("utf-8")) / 1e6
    ours = BPETokenizer.gpt2()
    reference = tiktoken.get_encoding("gpt2")
    via_tiktoken = ours.to_tiktoken()
    expected = reference.encode_ordinary(text)
    assert ours.encode_ordinary(text) == expected, "BPETokenizer differs from tiktoken"
    assert via_tiktoken.encode_ordinary(text) == expected, "to_tiktoken() differs"

    def cold():
        ours._cache.clear()
        ours.encode_ordinary(text)

    timings = {
        "BPETokenizer.gpt2().encode, cache empty": best_time(cold, args.repeat),
        "BPETokenizer.gpt2().encode, cache warm": best_time(
            lambda: ours.encode_ordinary(text), args.repeat
        ),
        ".to_tiktoken() of the same ranks": best_time(
            lambda: via_tiktoken.encode_ordinary(text), args.repeat
        ),
        'tiktoken.get_encoding("gpt2")': best_time(
            lambda: reference.encode_ordinary(text), args.repeat
        ),
    }
    tiktoken_seconds = timings['tiktoken.get_encoding("gpt2")']
    print(f"encoding {megabytes:.2f} MB of text ({len(expected):,} GPT-2 tokens)")
    print(f"{'encoder':<42}{'MB/s':>8}{'time vs tiktoken':>18}")
    for name, seconds in timings.items():
        ratio = seconds / tiktoken_seconds
        print(f"{name:<42}{megabytes / seconds:>8.2f}{ratio:>17.2f}x")

    print(f"\n{'training on the same text':<42}{'seconds':>8}{'vocabulary':>18}")
    for size in [1000, 5000]:
        seconds = best_time(lambda s=size: BPETokenizer().train(text, s), args.repeat)
        vocab = BPETokenizer().train(text, size).vocab_size
        print(f"{f'vocab_size={size:,}':<42}{seconds:>8.2f}{vocab:>18,}")


if __name__ == "__main__":
    main()
