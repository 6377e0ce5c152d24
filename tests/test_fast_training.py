"""The fast training path of appendix C, each switch against the plain path:
gradient accumulation, bfloat16 autocast, torch.compile (and its fallback), the
optimizer that decays only matrices, and the FLOP count behind MFU."""

import dataclasses

import pytest
import torch

from llmbook.checkpoint import latest_checkpoint, load_model
from llmbook.data import create_dataloader
from llmbook.fast import configure_optimizer, flops_per_token
from llmbook.model import GPTConfig, GPTModel
from llmbook.train import TrainingConfig, train_model
from tiny import BYTES, tiny_config

# The tests' byte-level model (tests/tiny.py): GPT-2's ids are not the point here.
CFG = tiny_config(drop_rate=0.0)
STORY_START = 257  # characters: 16 windows of 16 bytes and one more target


def train(text, batch_size, steps=None, epochs=1, cfg=CFG, optimizer=None, **options):
    """A model trained from seed 0 on the first 16 windows of the story, in order;
    returns it with its history."""
    torch.manual_seed(0)
    model = GPTModel(cfg)
    loader = create_dataloader(
        text[:STORY_START],
        batch_size,
        16,
        16,
        shuffle=False,
        drop_last=False,
        tokenizer=BYTES,
    )
    assert len(loader) * batch_size >= 16 > (len(loader) - 1) * batch_size
    optimizer = optimizer or torch.optim.AdamW
    settings = TrainingConfig(
        num_epochs=epochs, eval_freq=2, eval_iter=1, max_steps=steps, progress=False
    )
    settings = dataclasses.replace(settings, **options)
    history = train_model(
        model, loader, loader, optimizer(model.parameters(), lr=1e-3), "cpu", settings
    )
    return model, history


def verdict_start():
    from llmbook.data import data_file

    return data_file("the-verdict.txt").read_text(encoding="utf-8")[:STORY_START]


def assert_same_weights(a, b, atol):
    for (name, x), y in zip(
        a.state_dict().items(), b.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=name)


def test_three_accumulated_batches_of_2_equal_one_batch_of_6(verdict):
    # 8 batches of 2 in steps of 3 batches: (2+2+2), (2+2+2), (2+2) samples, the
    # steps a loader of batches of 6 (the last one of 4) takes.
    # Plain gradient descent: its step is proportional to the gradient, so a wrong
    # scale (a sum instead of a mean, or 3 batches assumed in the last step) shows.
    def sgd(params, lr):
        return torch.optim.SGD(params, lr=0.5)

    whole, whole_history = train(verdict, batch_size=6, epochs=2, optimizer=sgd)
    accumulated, history = train(
        verdict, batch_size=2, epochs=2, optimizer=sgd, grad_accum_steps=3
    )
    assert_same_weights(whole, accumulated, atol=1e-5)
    assert history.steps == whole_history.steps == [2, 4, 6]
    assert history.tokens_seen == whole_history.tokens_seen


def accumulating_run(folder, max_steps=None, resume=False, accum=3):
    torch.manual_seed(0)
    model = GPTModel(dataclasses.replace(CFG, drop_rate=0.2))
    loader = create_dataloader(
        verdict_start(), 2, 16, 16, seed=3, drop_last=False, tokenizer=BYTES
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    settings = TrainingConfig(
        num_epochs=2,
        eval_freq=3,
        eval_iter=1,
        checkpoint_dir=folder,
        checkpoint_every=1,
        max_steps=max_steps,
        progress=False,
        grad_accum_steps=accum,
    )
    history = train_model(
        model, loader, loader, optimizer, "cpu", settings, resume=resume
    )
    return model, history


def test_a_run_resumed_with_another_accumulation_trains_to_the_end(tmp_path):
    # Stopped after 6 of epoch 1's 8 batches; resumed in steps of 4 batches, the
    # run ends epoch 1 with a step of the 2 batches left, then takes 2 steps.
    accumulating_run(tmp_path, max_steps=2)
    _, history = accumulating_run(tmp_path, resume=True, accum=4)
    assert str(latest_checkpoint(tmp_path)).endswith("step-00000005")
    assert history.steps == [3]
    assert history.tokens_seen == [8 * 2 * 16]  # at step 3: all of epoch 1


def test_bf16_autocast_trains_close_to_float32_and_keeps_float32_weights(verdict):
    plain, plain_history = train(verdict, batch_size=4, epochs=2)
    fast, fast_history = train(verdict, batch_size=4, epochs=2, bf16=True)
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    assert fast_history.train_losses[-1] < fast_history.train_losses[0] - 0.1
    for a, b in zip(plain_history.train_losses, fast_history.train_losses, strict=True):
        assert a == pytest.approx(b, abs=0.05)  # bfloat16 keeps about 3 digits
    assert not torch.equal(plain.out_head.weight, fast.out_head.weight)


def test_compiled_training_takes_the_eager_steps_and_saves_plain_names(
    verdict, tmp_path
):
    # The model, batch shape and switches (bfloat16, compile) of appendix C's CPU
    # cell: on a fresh machine this test then finds that cell's compiled graphs in
    # torch.compile's cache instead of compiling them again (20 s on 2 cores).
    cfg = GPTConfig.preset("debug", context_length=32, drop_rate=0.0)
    torch.manual_seed(0)
    start = GPTModel(cfg).state_dict()

    def run(compile: bool, **options) -> GPTModel:
        torch.manual_seed(0)
        model = GPTModel(cfg)
        loader = create_dataloader(verdict[:1000], 2, 32, 32, shuffle=False)
        settings = TrainingConfig(
            num_epochs=1,
            eval_freq=3,
            eval_iter=1,
            max_steps=3,
            bf16=True,
            compile=compile,
            progress=False,
            **options,
        )
        # Plain gradient descent moves each weight in proportion to its gradient, so
        # a compiled step that differs from the eager one shows in the weights.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_model(model, loader, loader, optimizer, "cpu", settings)
        return model

    eager = run(compile=False)
    compiled = run(compile=True, checkpoint_dir=tmp_path, checkpoint_every=3)
    moved = 0
    for name, before in start.items():
        after, other = eager.state_dict()[name], compiled.state_dict()[name]
        step = (after - before).norm()
        moved += bool(step > 0)
        # bfloat16 rounds differently in fused kernels: a few percent of a step
        assert (other - after).norm() <= 0.05 * step + 1e-7, name
    assert moved > len(start) // 2  # the steps are real ones
    folder = latest_checkpoint(tmp_path)
    assert folder is not None
    reloaded = load_model(folder / "model.safetensors")  # plain names, no _orig_mod.
    assert_same_weights(compiled, reloaded, atol=0)


def test_compile_that_fails_on_a_platform_falls_back_with_a_warning(
    verdict, monkeypatch
):
    def unavailable(*args, **kwargs):
        raise RuntimeError("Windows not yet supported for torch.compile")

    plain, _ = train(verdict, batch_size=4, steps=2)
    monkeypatch.setattr(torch, "compile", unavailable)
    with pytest.warns(
        RuntimeWarning, match="torch.compile does not work here .*Windows"
    ):
        fallback, _ = train(verdict, batch_size=4, steps=2, compile=True)
    assert_same_weights(plain, fallback, atol=0)  # exactly the plain path


def test_the_optimizer_decays_matrices_only():
    torch.manual_seed(0)
    model = GPTModel(dataclasses.replace(CFG, tie_weights=True))
    optimizer = configure_optimizer(model, lr=0.1, weight_decay=0.5)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert "tok_emb.weight" in decayed and "out_head.weight" not in decayed  # tied
    assert "trf_blocks.0.att.W_query.weight" in decayed
    assert all(
        names[id(p)].endswith(("bias", "scale", "shift")) for p in no_decay["params"]
    )
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    # With zero gradients, a step only applies the decay: matrices shrink by
    # lr * weight_decay, biases and norms stay as they are.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_and_unfused_optimizers_train_alike(verdict, fused):
    def make(params, lr):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.1)

    reference, _ = train(verdict, batch_size=4, steps=4, optimizer=make)

    def configured(params, lr):
        model_params = list(params)
        groups = [
            {"params": [p for p in model_params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in model_params if p.dim() < 2], "weight_decay": 0.1},
        ]
        return torch.optim.AdamW(groups, lr=lr, fused=fused or None)

    other, _ = train(verdict, batch_size=4, steps=4, optimizer=configured)
    assert_same_weights(reference, other, atol=1e-6)


def test_configure_optimizer_picks_the_fused_kernel_on_the_cpu():
    model = GPTModel(CFG)
    assert configure_optimizer(model, lr=1e-3).defaults["fused"] is True
    assert configure_optimizer(model, lr=1e-3, fused=False).defaults["fused"] is None


def test_flops_per_token_counts_every_multiplying_weight_six_times():
    for tie in [False, True]:
        model = GPTModel(dataclasses.replace(CFG, tie_weights=tie))
        linear = sum(
            sum(p.numel() for p in module.parameters())
            for module in model.modules()
            if isinstance(module, torch.nn.Linear)
        )
        norms = 2 * CFG.emb_dim * (2 * CFG.n_layers + 1)  # scale and shift
        attention = 12 * CFG.n_layers * CFG.emb_dim * 16
        assert flops_per_token(model, 16) == 6 * (linear + norms) + attention


def test_flops_per_token_of_a_rope_model_with_wide_heads():
    cfg = GPTConfig.preset("qwen3-debug")  # 4 heads of 16 on 32-wide vectors
    model = GPTModel(cfg)
    lookup = model.tok_emb.weight.numel()  # no position table to leave out
    weights = sum(p.numel() for p in model.parameters()) - lookup
    attention = 12 * cfg.n_layers * (4 * 16) * 16
    assert flops_per_token(model, 16) == 6 * weights + attention


def test_accumulation_steps_below_one_are_refused():
    with pytest.raises(ValueError, match="grad_accum_steps must be positive"):
        TrainingConfig(grad_accum_steps=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tf32_and_bf16_on_a_gpu_train_close_to_float32(verdict):
    def run(fast):
        torch.backends.cuda.matmul.allow_tf32 = fast
        try:
            torch.manual_seed(0)
            model = GPTModel(CFG).to("cuda")
            loader = create_dataloader(verdict[:1000], 4, 16, 16, shuffle=False)
            settings = TrainingConfig(
                num_epochs=2, eval_freq=2, eval_iter=1, progress=False, bf16=fast
            )
            optimizer = configure_optimizer(model, lr=1e-3)
            return train_model(model, loader, loader, optimizer, "cuda", settings)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False

    plain, fast = run(False), run(True)
    for a, b in zip(plain.train_losses, fast.train_losses, strict=True):
        assert a == pytest.approx(b, abs=0.05)
