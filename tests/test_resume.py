"""Exact resume, proven once for every kind of run that `train_model` offers: a run
stopped after a checkpoint and resumed from it ends with exactly the weights, the
optimizer's state and the history of the same run left alone. (Two processes under
torchrun: tests/test_distributed.py; the command line, killed and resumed:
tests/test_cli.py.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch

from llmbook.checkpoint import latest_checkpoint
from llmbook.classify import (
    add_classification_head,
    calc_classification_loss,
    create_classification_loaders,
    load_spam_splits,
)
from llmbook.data import create_dataloader
from llmbook.losses import calc_loss_batch
from llmbook.model import GPTConfig, GPTModel
from llmbook.train import TrainingConfig, train_model
from tiny import BYTES, ctrl_c_at, story_loaders, tiny_config


@dataclasses.dataclass
class Setup:
    """A kind of run: `make()` gives a fresh model, its loaders and optimizer (the
    same ones at every call); `stop` ends the interrupted run, as `max_steps`, as a
    pause (`pause_at`, kept when it resumes) or as a Ctrl-C (a KeyboardInterrupt) at
    that batch; it resumes from step `resumes_at`."""

    make: Callable[[], tuple[torch.nn.Module, Any, Any, torch.optim.Optimizer]]
    settings: dict
    stop: dict
    resumes_at: int
    loss_fn: Callable = calc_loss_batch


def story(text, seed=7, drop=0.2):
    def make():
        torch.manual_seed(123)
        model = GPTModel(tiny_config(drop_rate=drop))
        train, val = story_loaders(text, seed=seed)
        return model, train, val, torch.optim.AdamW(model.parameters(), lr=1e-3)

    return make


def accumulating(text):
    def make():  # 8 batches of 2 an epoch, in steps of 3, 3 and 2 batches
        torch.manual_seed(0)
        model = GPTModel(tiny_config(drop_rate=0.2))
        loader = create_dataloader(
            text[:257], 2, 16, 16, seed=3, drop_last=False, tokenizer=BYTES
        )
        return model, loader, loader, torch.optim.AdamW(model.parameters(), lr=1e-3)

    return make


def refined(text):
    def make():  # two parameter groups, each with its own peak learning rate
        torch.manual_seed(123)
        model = GPTModel(tiny_config(drop_rate=0.2))
        matrices = [p for p in model.parameters() if p.dim() >= 2]
        vectors = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": matrices, "lr": 2e-3}, {"params": vectors, "lr": 1e-3}],
            weight_decay=0.1,
        )
        return model, *story_loaders(text), optimizer

    return make


def classifier():
    train, val, test = load_spam_splits()

    def make():  # a head on the last block, the rest frozen; GPT-2's tokens
        loaders = create_classification_loaders(
            train[:64], val[:8], test[:8], batch_size=8, max_length=32
        )
        torch.manual_seed(3)
        cfg = GPTConfig.preset("debug", context_length=32)
        model = add_classification_head(GPTModel(cfg), 2, trainable_blocks=1)
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, loaders[0], loaders[1], torch.optim.AdamW(trainable, lr=1e-3)

    return make


EVERY_EVAL = {"eval_freq": 4, "eval_iter": 2}
SETUPS = {
    # 11 batches an epoch, shuffled by the loader's own seed; stopped mid-epoch.
    "mid-epoch": lambda text: Setup(
        story(text),
        {"num_epochs": 3, "checkpoint_every": 4, **EVERY_EVAL},
        {"max_steps": 4},
        4,
    ),
    # A loader without a seed draws its shuffle from the global generator, which
    # the checkpoint must bring back; stopped at the first step of epoch 2.
    "global-rng": lambda text: Setup(
        story(text, seed=None),
        {"num_epochs": 3, "checkpoint_every": 12, **EVERY_EVAL},
        {"max_steps": 12},
        12,
    ),
    # A checkpoint after every step, stopped at the last step of epoch 1.
    "epoch-end": lambda text: Setup(
        story(text),
        {"num_epochs": 3, "checkpoint_every": 1, **EVERY_EVAL},
        {"max_steps": 11},
        11,
    ),
    # Steps of 3 batches (appendix C); stopped after step 2, inside epoch 1.
    "accumulation": lambda text: Setup(
        accumulating(text),
        {"num_epochs": 2, "eval_freq": 3, "eval_iter": 1, "checkpoint_every": 1}
        | {"grad_accum_steps": 3},
        {"max_steps": 2},
        2,
    ),
    # Warmup, cosine decay and clipping (appendix D), two parameter groups; Ctrl-C in
    # the middle of step 10, so the run goes back to step 6's checkpoint.
    "schedule-and-clipping": lambda text: Setup(
        refined(text),
        {"num_epochs": 2, "eval_freq": 4, "eval_iter": 1, "checkpoint_every": 3}
        | {"warmup_steps": 4, "cosine_decay": True, "max_grad_norm": 0.3},
        {"interrupt_after": 10},
        6,
    ),
    # Paused on purpose in the middle of a cosine decay, with no checkpoints before:
    # the pause saves one, and the same settings with resume=True go on to the end.
    "paused": lambda text: Setup(
        refined(text),
        {"num_epochs": 2, "eval_freq": 4, "eval_iter": 1}
        | {"warmup_steps": 4, "cosine_decay": True},
        {"pause_at": 7},
        7,
    ),
    # Chapter 8's classifier: another loss, frozen parameters, a head of its own;
    # stopped at step 5, which a run's last step always is, a checkpoint.
    "classifier": lambda text: Setup(
        classifier(),
        {"num_epochs": 2, "eval_freq": 3, "eval_iter": 1, "checkpoint_every": 2},
        {"max_steps": 5},
        5,
        calc_classification_loss,
    ),
}


def run(
    setup: Setup,
    folder,
    resume=False,
    max_steps=None,
    interrupt_after=None,
    pause_at=None,
):
    model, train, val, optimizer = setup.make()
    settings = TrainingConfig(
        checkpoint_dir=folder,
        max_steps=max_steps,
        pause_at=pause_at,
        progress=False,
        **setup.settings,
    )
    loss_fn = ctrl_c_at(interrupt_after, setup.loss_fn)
    history = train_model(
        model, train, val, optimizer, "cpu", settings, resume=resume, loss_fn=loss_fn
    )
    return model, optimizer, history


@pytest.mark.parametrize("name", SETUPS)
def test_an_interrupted_run_resumes_exactly(tmp_path, verdict, name):
    setup = SETUPS[name](verdict)
    straight, optimizer, history = run(setup, tmp_path / "straight")
    if "interrupt_after" in setup.stop:
        with pytest.raises(KeyboardInterrupt):
            run(setup, tmp_path / "stopped", **setup.stop)
    else:
        run(setup, tmp_path / "stopped", **setup.stop)
    last = latest_checkpoint(tmp_path / "stopped")
    assert last is not None and last.name == f"step-{setup.resumes_at:08d}"
    kept = {"pause_at": setup.stop["pause_at"]} if "pause_at" in setup.stop else {}
    resumed, resumed_optimizer, resumed_history = run(
        setup, tmp_path / "stopped", resume=True, **kept
    )
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    state, resumed_state = (
        o.state_dict()["state"] for o in (optimizer, resumed_optimizer)
    )
    assert state.keys() == resumed_state.keys() and state
    for key, values in state.items():
        for what, value in values.items():
            assert torch.equal(value, resumed_state[key][what]), (key, what)
    assert resumed_history == history and history.steps
