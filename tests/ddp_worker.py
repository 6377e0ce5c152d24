"""Training runs for tests/test_distributed.py, started by torchrun or by python.

    python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        tests/ddp_worker.py '[{"out": "a", "batch_size": 2}, ...]'

runs the listed runs one after another in the same processes (each process start
costs seconds, so one launch serves several tests), and `train_run` runs one in the
calling process. Process 0 writes each run's weights and history to its `out`; the
tests compare runs.
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch

from llmbook.checkpoint import save_model
from llmbook.data import create_dataloader, data_file
from llmbook.distributed import (
    ProcessPlace,
    device_for,
    distributed,
    distributed_loader,
)
from llmbook.losses import calc_loss_batch
from llmbook.model import GPTModel
from llmbook.train import TrainingConfig, train_model
from tiny import BYTES, tiny_config


def train_run(
    place: ProcessPlace,
    out: str | Path,
    batch_size: int,
    accum: int = 1,
    drop: float = 0.0,
    resume: bool = False,
    interrupt_after: int | None = None,
) -> None:
    """Train the tests' byte-level model on a slice of the-verdict.txt with
    checkpoints in `out`/checkpoints; `interrupt_after` batches (counted over every
    call of the loss) raise KeyboardInterrupt in every process, as Ctrl-C would."""
    out = Path(out)
    text = data_file("the-verdict.txt").read_text(encoding="utf-8")
    torch.manual_seed(123)
    # The tests' byte-level model (tests/tiny.py) keeps the model, its gradients
    # and its checkpoints small: GPT-2's ids are not the point. 980 and 305
    # characters give 61 and 19 windows of 16 bytes.
    model = GPTModel(tiny_config(drop_rate=drop)).to(device_for(place))
    train = distributed_loader(
        create_dataloader(text[:980], batch_size, 16, 16, seed=5, tokenizer=BYTES),
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
        grad_accum_steps=accum,
        warmup_steps=3,
        cosine_decay=True,
        max_grad_norm=0.5,
        checkpoint_dir=out / "checkpoints",
        checkpoint_every=2,
        progress=False,
    )
    batches = 0

    def loss_fn(*batch):  # stops every process at the same batch
        nonlocal batches
        batches += 1
        if batches == interrupt_after:
            raise KeyboardInterrupt
        return calc_loss_batch(*batch)

    history = train_model(
        model,
        train,
        val,
        optimizer,
        device_for(place),
        settings,
        resume=resume,
        loss_fn=loss_fn,
    )
    if place.is_main:
        save_model(model, out / "model.safetensors")
        state = dataclasses.asdict(history)
        (out / "history.json").write_text(json.dumps(state))


def main() -> None:
    runs = json.loads(sys.argv[1])
    with distributed() as place:
        for run in runs:
            try:
                train_run(place, **run)
            except KeyboardInterrupt:
                if run.get("interrupt_after") is None:
                    raise
                # the run stopped where it was told to; its checkpoints stay
                Path(run["out"]).mkdir(parents=True, exist_ok=True)
                (Path(run["out"]) / "interrupted").touch()


if __name__ == "__main__":
    main()
