"""The tests' small-vocabulary model: where GPT-2's token ids are not the point of a
test, its 50,257-row embedding and output layer would be most of the test's time, so
these tests read text byte by byte: 257 tokens, the 256 bytes and <|endoftext|>."""

import dataclasses
from collections.abc import Callable

from llmbook.bpe import BPETokenizer
from llmbook.data import create_dataloader
from llmbook.losses import calc_loss_batch
from llmbook.model import GPTConfig

BYTES = BPETokenizer(special_tokens={"<|endoftext|>": 256})  # the bytes, then EOT
# GPTConfig's debug preset (2 blocks of width 32) over bytes, with a context of 16.
TINY = GPTConfig.preset("debug", context_length=16, vocab_size=BYTES.vocab_size)


def tiny_config(**changes) -> GPTConfig:
    """TINY with `changes` (drop_rate=0.0, ...)."""
    return dataclasses.replace(TINY, **changes)


def ctrl_c_at(batch: int | None, loss_fn: Callable = calc_loss_batch) -> Callable:
    """`loss_fn` that raises KeyboardInterrupt, as Ctrl-C would, at its `batch`-th
    call (None: never)."""
    calls = 0

    def loss(*args):
        nonlocal calls
        calls += 1
        if calls == batch:
            raise KeyboardInterrupt  # as if Ctrl-C were pressed here
        return loss_fn(*args)

    return loss


def story_loaders(text: str, seed: int | None = 7, shuffle: bool = True):
    """Training and validation loaders over the story's bytes, in windows of 16: 11
    batches of 4 from its first 720 characters, 6 batches of 2 from its last 200."""
    train = create_dataloader(
        text[:720], 4, 16, 16, shuffle=shuffle, seed=seed, tokenizer=BYTES
    )
    val = create_dataloader(text[-200:], 2, 16, 16, shuffle=False, tokenizer=BYTES)
    return train, val
