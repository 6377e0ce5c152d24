"""Benchmark: chapter 3's BPE encoder side by side with the original book's algorithm,
chapter 3's naive encoder and tiktoken, all with GPT-2's ranks; then BPE training.

    python bench/bpe.py [--file SMSSpamCollection] [--kilobytes 200] [--repeat 5]

Encodes the first --kilobytes KB of a data file of the book with:
  - the original book's from-scratch BPE, written here as that book describes it:
    GPT-2's pre-tokenizer, then, for each word, again and again, the adjacent pair of
    lowest rank is found by scanning all pairs and merged (every occurrence of it),
    until no adjacent pair is in the merges table; nothing is cached; and the same
    with the original's shortcut: a word that is a token already is looked up first;
  - chapter 3's naive encoder: the same pre-tokenizer, then `naive_merge` on each
    pre-token; nothing is cached either;
  - BPETokenizer.gpt2().encode_ordinary, with its pre-token cache emptied before
    each run, then warm (the cache filled by the run before);
  - BPETokenizer.gpt2().to_tiktoken(), the same ranks in tiktoken's Rust core, and
    tiktoken.get_encoding("gpt2") itself.
Every encoder's ids are checked to be equal to tiktoken's before anything is timed.
The runs are interleaved, one of each encoder per round, and each time is the best
of --repeat rounds, so that a busy machine slows all of them alike. It then times
training BPETokenizer vocabularies of 1,000 and 5,000 tokens on the same text. It
prints speeds and their ratios; it asserts nothing about time.
"""

import argparse
import functools
import math
import time
from collections.abc import Callable, Mapping
from itertools import pairwise

import regex
import tiktoken

from llmbook.bpe import GPT2_PATTERN, BPETokenizer, naive_merge
from llmbook.data import data_file

GPT2_WORDS = regex.compile(GPT2_PATTERN)


def original_book_encode(
    text: str,
    merge_ranks: dict[tuple[bytes, bytes], int],
    ids: dict[bytes, int],
    whole_words: bool = False,
) -> list[int]:
    """The original book's algorithm, in this book's own code: per word, scan every
    adjacent pair for the one of lowest rank and merge it, until none is a merge.
    With `whole_words`, a word that is a token already is looked up first, as the
    original book's encoder does before it merges."""
    out: list[int] = []
    for word in GPT2_WORDS.findall(text):
        if whole_words and word.encode("utf-8") in ids:
            out.append(ids[word.encode("utf-8")])
            continue
        symbols = [bytes([b]) for b in word.encode("utf-8")]
        while len(symbols) > 1:
            pairs = list(pairwise(symbols))
            best = min(pairs, key=lambda pair: merge_ranks.get(pair, math.inf))
            if best not in merge_ranks:
                break  # no adjacent pair is in the merges table: the word is done
            merged, i = [], 0
            while i < len(symbols):  # every occurrence of the pair, left to right
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        out += [ids[symbol] for symbol in symbols]
    return out


def naive_encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """Chapter 3's naive encoder: naive_merge on every pre-token, nothing cached."""
    out: list[int] = []
    for word in GPT2_WORDS.findall(text):
        out += [ranks[part] for part in naive_merge(word.encode("utf-8"), ranks)]
    return out


def best_times(
    functions: Mapping[str, Callable[[], object]], rounds: int
) -> dict[str, float]:
    """The shortest wall-clock time of each function over `rounds` rounds, in seconds;
    a round calls every function once, in order."""
    best = dict.fromkeys(functions, math.inf)
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default="SMSSpamCollection")
    parser.add_argument("--kilobytes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    whole = data_file(args.file).read_text(encoding="utf-8")
    text = whole.encode()[: args.kilobytes * 1000].decode("utf-8", errors="ignore")
    megabytes = len(text.encode("utf-8")) / 1e6
    ours = BPETokenizer.gpt2()
    ranks = ours.ranks
    merge_ranks = {(left, right): ranks[left + right] for left, right in ours.merges}
    reference = tiktoken.get_encoding("gpt2")
    via_tiktoken = ours.to_tiktoken()

    def cold() -> list[int]:
        ours._cache.clear()
        return ours.encode_ordinary(text)

    encoders: dict[str, Callable[[], list[int]]] = {
        "original book's algorithm": lambda: original_book_encode(
            text, merge_ranks, ranks
        ),
        "the same, whole words looked up first": lambda: original_book_encode(
            text, merge_ranks, ranks, whole_words=True
        ),
        "chapter 3's naive_merge per pre-token": lambda: naive_encode(text, ranks),
        "BPETokenizer.gpt2(), cache empty": cold,
        "BPETokenizer.gpt2(), cache warm": lambda: ours.encode_ordinary(text),
        ".to_tiktoken() of the same ranks": lambda: via_tiktoken.encode_ordinary(text),
        'tiktoken.get_encoding("gpt2")': lambda: reference.encode_ordinary(text),
    }
    expected = reference.encode_ordinary(text)
    for name, encode in encoders.items():
        assert encode() == expected, f"{name} differs from tiktoken's ids"

    words = GPT2_WORDS.findall(text)
    distinct = set(words)
    whole_tokens = sum(word.encode("utf-8") in ranks for word in distinct)
    print(
        f"encoding {megabytes:.2f} MB of {args.file} ({len(expected):,} GPT-2 "
        f"tokens, equal for every encoder); best of {args.repeat} interleaved rounds"
    )
    print(
        f"{len(words):,} pre-tokens, {len(distinct):,} distinct, of which "
        f"{whole_tokens / len(distinct):.0%} are one token already\n"
    )
    seconds = best_times(encoders, args.repeat)
    speed = {name: megabytes / s for name, s in seconds.items()}
    original = speed["original book's algorithm"]
    naive = speed["chapter 3's naive_merge per pre-token"]
    fastest = speed['tiktoken.get_encoding("gpt2")']
    columns = ["MB/s", "vs original", "vs naive", "vs tiktoken"]
    print(f"{'encoder':<40}" + "".join(f"{c:>13}" for c in columns))
    for name, mb_per_s in speed.items():
        ratios = [mb_per_s / original, mb_per_s / naive, mb_per_s / fastest]
        cells = [f"{mb_per_s:.2f}"] + [f"{ratio:.2f}x" for ratio in ratios]
        print(f"{name:<40}" + "".join(f"{cell:>13}" for cell in cells))

    print(f"\n{'training on the same text':<40}{'seconds':>13}{'vocabulary':>13}")
    for size in [1000, 5000]:
        train = functools.partial(BPETokenizer().train, text, size)
        seconds_to_train = best_times({"train": train}, args.repeat)["train"]
        vocab = train().vocab_size
        print(f"{f'vocab_size={size:,}':<40}{seconds_to_train:>13.2f}{vocab:>13,}")


if __name__ == "__main__":
    main()
