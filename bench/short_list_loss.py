"""Time section 8.4's pretraining step with the short-list loss in one piece and in
chunks of positions, side by side in one run.

    python bench/short_list_loss.py [--steps 40] [--chunks 0 16 32 64 128 512]

The model and batches are chapter 8's: a GPT of width 64 with two blocks, batches of
8 sequences of 64 tokens, scored against the 9,548 GPT-2 tokens that the SMS
messages use. Chunk 0 computes the cross-entropy over all 512 positions at once (the
table of scores is 512 x 9,548 floats, about 20 MB); the others add up the losses of
that many positions at a time. Every row starts from the same weights and takes the
same batches; the losses must agree to float rounding before any time is printed.
Each time is the median of the timed steps, after 5 warm-up steps.
"""

import argparse
import statistics
import time

import torch
from common import device_name

from llmbook.data import create_dataloader
from llmbook.messages import message_corpus, short_list_loss
from llmbook.model import GPTConfig, GPTModel
from llmbook.tokenizer import gpt2_tokenizer


def step_times(chunk, batches, in_use, warmup=5):
    """(median seconds a step, the losses) of training from the same start."""
    torch.manual_seed(123)
    cfg = GPTConfig(
        context_length=256, emb_dim=64, n_heads=4, n_layers=2, tie_weights=True
    )
    model = GPTModel(cfg)
    model.out_head = torch.nn.Identity()  # type: ignore[assignment]
    loss_fn = short_list_loss(in_use, chunk=chunk or 1_000_000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, fused=True)
    times, losses = [], []
    for i, (inputs, targets) in enumerate(batches):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(inputs, targets, model, "cpu")
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return statistics.median(times), losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps a row")
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=[0, 16, 32, 64, 128, 512]
    )
    args = parser.parse_args()
    text = "<|endoftext|>".join(message_corpus())
    ids = gpt2_tokenizer().encode(text, allowed_special={"<|endoftext|>"})
    in_use = torch.tensor(sorted(set(ids)))
    loader = create_dataloader(text, batch_size=8, max_length=64, stride=64, seed=1)
    batches = [batch for _, batch in zip(range(args.steps + 5), loader, strict=False)]
    print(
        f"{device_name('cpu')}, {torch.get_num_threads()} threads;",
        f"{len(in_use):,} tokens in use, batches of 8 x 64",
    )
    rows = [(chunk, *step_times(chunk, batches, in_use)) for chunk in args.chunks]
    whole = rows[0][1]
    reference = rows[0][2]
    print(f"{'chunk':>8} {'ms a step':>10} {'vs. first row':>14}")
    for chunk, seconds, losses in rows:
        agree = all(abs(a - b) < 1e-3 for a, b in zip(losses, reference, strict=True))
        if not agree:
            raise SystemExit(f"chunk {chunk}: the losses differ from the first row's")
        name = "all" if chunk == 0 else str(chunk)
        print(f"{name:>8} {1000 * seconds:>10.1f} {whole / seconds:>13.2f}x")


if __name__ == "__main__":
    main()
