"""A training run for tests/test_distributed.py, started by torchrun or by python.

Process 0 writes the weights and the history to OUT; the test compares runs.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from llmbook.data import create_dataloader, data_file
from llmbook.distributed import device_for, distributed, distributed_loader
from llmbook.model import GPTModel
from llmbook.train import TrainingConfig, calc_loss_batch, save_model, train_model
from tiny import BYTES, tiny_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--drop", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--interrupt-after", type=int, default=None, help="batches")
    args = parser.parse_args()
    text = data_file("the-verdict.txt").read_text(encoding="utf-8")
    with distributed() as place:
        torch.manual_seed(123)
        # The tests' byte-level model (tests/tiny.py) keeps the model, its gradients
        # and its checkpoints small: GPT-2's ids are not the point. 980 and 305
        # characters give 61 and 19 windows of 16 bytes.
        model = GPTModel(tiny_config(drop_rate=args.drop)).to(device_for(place))
        train = distributed_loader(
            create_dataloader(
                text[:980], args.batch_size, 16, 16, seed=5, tokenizer=BYTES
            ),
            seed=5,
        )
        # Every process evaluates all of the validation text: the same in each.
        val = create_dataloader(
            text[-305:], 2, 16, 16, shuffle=False, drop_last=False, tokenizer=BYTES
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
        settings = TrainingConfig(
            num_epochs=2,
            eval_freq=3,
            eval_iter=2,
            grad_accum_steps=args.accum,
            warmup_steps=3,
            cosine_decay=True,
            max_grad_norm=0.5,
            checkpoint_dir=args.out / "checkpoints",
            checkpoint_every=2,
            progress=False,
        )
        batches = 0

        def loss_fn(*batch):  # stops every process at the same batch, as Ctrl-C would
            nonlocal batches
            batches += 1
            if batches == args.interrupt_after:
                raise KeyboardInterrupt
            return calc_loss_batch(*batch)

        history = train_model(
            model,
            train,
            val,
            optimizer,
            device_for(place),
            settings,
            resume=args.resume,
            loss_fn=loss_fn,
        )
        if place.is_main:
            save_model(model, args.out / "model.safetensors")
            state = dataclasses.asdict(history)
            (args.out / "history.json").write_text(json.dumps(state))


if __name__ == "__main__":
    main()
