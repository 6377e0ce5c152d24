"""llmbook.train's refinements (appendix D): the learning-rate schedule, gradient
clipping, and resuming with another schedule refused (exact resume with both:
tests/test_resume.py)."""

import math
from typing import Any

import pytest
import torch

from llmbook.losses import calc_loss_batch
from llmbook.model import GPTModel
from llmbook.schedule import lr_factor
from llmbook.train import TrainingConfig, train_model
from tiny import ctrl_c_at, story_loaders, tiny_config

# No dropout: evaluations draw from the global generator (a DataLoader's iterator
# takes a seed from it), which the loop written by hand below does not repeat.
CFG = tiny_config(drop_rate=0.0)  # tests/tiny.py: GPT-2's ids are not the point here


def test_warmup_rises_linearly_to_the_peak():
    assert [lr_factor(s, 100, warmup_steps=4) for s in range(6)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
        1.0,
    ]


@pytest.mark.parametrize("warmup, floor", [(0, 0.1), (10, 0.0), (5, 0.5)])
def test_cosine_falls_from_the_peak_to_the_floor_at_the_last_step(warmup, floor):
    total = 50
    factors = [lr_factor(s, total, warmup, True, floor) for s in range(total)]
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(floor)
    middle = warmup + (total - 1 - warmup) / 2
    assert lr_factor(middle, total, warmup, True, floor) == pytest.approx(
        (1 + floor) / 2
    )
    decay = factors[warmup:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert lr_factor(total + 5, total, warmup, True, floor) == pytest.approx(floor)


loaders = story_loaders  # 11 training batches of 4, 6 validation batches of 2


def two_group_optimizer(model):
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": matrices, "lr": 2e-3}, {"params": vectors, "lr": 1e-3}],
        weight_decay=0.1,
    )


REFINED: dict[str, Any] = {
    "warmup_steps": 4,
    "cosine_decay": True,
    "max_grad_norm": 0.3,
}


def test_train_model_takes_the_steps_of_a_loop_written_by_hand(verdict):
    train, val = loaders(verdict, shuffle=False)  # evaluations leave it as it is
    torch.manual_seed(1)
    model = GPTModel(CFG)
    optimizer = two_group_optimizer(model)
    settings = TrainingConfig(
        num_epochs=2, eval_freq=3, eval_iter=1, progress=False, **REFINED
    )
    history = train_model(model, train, val, optimizer, "cpu", settings)

    train, val = loaders(verdict, shuffle=False)
    torch.manual_seed(1)
    by_hand = GPTModel(CFG)
    reference = two_group_optimizer(by_hand)
    total, step, lrs, norms = 2 * len(train), 0, [], []
    for _ in range(2):
        for inputs, targets in train:
            reference.zero_grad()
            calc_loss_batch(inputs, targets, by_hand, "cpu").backward()
            grads = [p.grad for p in by_hand.parameters() if p.grad is not None]
            norm = torch.cat([g.flatten() for g in grads]).norm()
            for g in grads:
                g.mul_(min(1.0, 0.3 / (norm.item() + 1e-6)))
            factor = lr_factor(step, total, 4, True, 0.1)
            for group, peak in zip(reference.param_groups, [2e-3, 1e-3], strict=True):
                group["lr"] = peak * factor
            reference.step()
            step += 1
            lrs.append(2e-3 * factor)
            norms.append(norm.item())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, by_hand.state_dict()[name])
    assert history.learning_rates == pytest.approx([lrs[s - 1] for s in history.steps])
    assert history.grad_norms == pytest.approx(
        [norms[s - 1] for s in history.steps], rel=1e-5
    )
    assert max(norms) > 0.3  # clipping did something
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1e-3 * 0.1)


def test_without_refinements_the_learning_rate_is_left_alone(verdict):
    train, val = loaders(verdict)
    model = GPTModel(CFG)
    optimizer = two_group_optimizer(model)
    history = train_model(
        model,
        train,
        val,
        optimizer,
        "cpu",
        TrainingConfig(num_epochs=1, eval_freq=2, eval_iter=1, progress=False),
    )
    assert set(history.learning_rates) == {2e-3} and history.grad_norms == []
    assert [g["lr"] for g in optimizer.param_groups] == [2e-3, 1e-3]


def refined_run(text, directory, interrupt_after=None, resume=False, **changes):
    torch.manual_seed(123)
    model = GPTModel(tiny_config(drop_rate=0.2))
    train, val = loaders(text)
    optimizer = two_group_optimizer(model)
    settings = TrainingConfig(
        num_epochs=2,
        eval_freq=4,
        eval_iter=1,
        checkpoint_dir=directory,
        checkpoint_every=3,
        progress=False,
        **{**REFINED, **changes},
    )
    loss_fn = ctrl_c_at(interrupt_after)
    history = train_model(
        model, train, val, optimizer, "cpu", settings, resume=resume, loss_fn=loss_fn
    )
    return model, history


@pytest.mark.parametrize(
    "changes",
    [{"warmup_steps": 2}, {"cosine_decay": False}, {"min_lr_ratio": 0.0}],
)
def test_resuming_with_another_schedule_is_refused(tmp_path, verdict, changes):
    with pytest.raises(KeyboardInterrupt):
        refined_run(verdict, tmp_path, interrupt_after=8)
    with pytest.raises(ValueError, match="learning-rate schedule"):
        refined_run(verdict, tmp_path, resume=True, **changes)


def test_a_schedule_cannot_be_added_on_resume(tmp_path, verdict):
    with pytest.raises(KeyboardInterrupt):
        refined_run(
            verdict, tmp_path, interrupt_after=8, warmup_steps=0, cosine_decay=False
        )
    with pytest.raises(ValueError, match=r"schedule None, and this run asks for \{"):
        refined_run(verdict, tmp_path, resume=True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("warmup_steps", -1, "warmup_steps must be 0 or more"),
        ("min_lr_ratio", 1.5, r"min_lr_ratio must be in \[0, 1\]"),
        ("min_lr_ratio", -0.1, r"min_lr_ratio must be in \[0, 1\]"),
        ("max_grad_norm", 0.0, "max_grad_norm must be positive"),
        ("max_grad_norm", math.inf, "max_grad_norm must be positive"),
        ("max_grad_norm", math.nan, "max_grad_norm must be positive"),
    ],
)
def test_refinement_settings_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**{field: value})
