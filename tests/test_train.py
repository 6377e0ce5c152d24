"""llmbook.train: losses, a falling training loss, checked checkpoints (exact resume:
tests/test_resume.py)."""

import dataclasses
from pathlib import Path

import pytest
import torch

from llmbook.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model,
    load_weights,
    save_checkpoint,
    save_model,
)
from llmbook.data import create_dataloader
from llmbook.losses import calc_loss_batch, calc_loss_loader, text_loss
from llmbook.model import GPTConfig, GPTModel
from llmbook.train import TrainingConfig, TrainingHistory, train_model
from tiny import TINY, story_loaders

# The tests' byte-level model (tests/tiny.py): GPT-2's ids are not the point here.
CFG = TINY
loaders = story_loaders  # 11 training batches of 4, 6 validation batches of 2


@pytest.fixture(scope="module")
def text(verdict):
    return verdict


def test_loss_batch_is_cross_entropy_by_hand(text):
    torch.manual_seed(0)
    model = GPTModel(CFG).eval()
    x, y = next(iter(loaders(text)[0]))
    loss = calc_loss_batch(x, y, model, "cpu")
    probas = torch.softmax(model(x), dim=-1)
    by_hand = -probas.gather(-1, y.unsqueeze(-1)).log().mean()
    torch.testing.assert_close(loss, by_hand, atol=1e-5, rtol=1e-5)


def test_loss_loader_averages_batches(text):
    torch.manual_seed(0)
    model = GPTModel(CFG).eval()
    _, val = loaders(text)
    with torch.no_grad():
        losses = [calc_loss_batch(x, y, model, "cpu").item() for x, y in val]
        assert calc_loss_loader(val, model, "cpu") == pytest.approx(
            sum(losses) / len(losses)
        )
        assert calc_loss_loader(val, model, "cpu", 2) == pytest.approx(
            sum(losses[:2]) / 2
        )
        assert calc_loss_loader(val, model, "cpu", 99) == pytest.approx(
            sum(losses) / len(losses)
        )


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        calc_loss_loader([], None, "cpu")


def test_a_short_run_lowers_the_loss(text):
    torch.manual_seed(0)
    model = GPTModel(CFG)
    train, val = loaders(text)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = train_model(
        model,
        train,
        val,
        optimizer,
        "cpu",
        TrainingConfig(num_epochs=4, eval_freq=5, eval_iter=None, progress=False),
        sample=lambda m: "sample",
    )
    total = 4 * len(train)
    assert history.steps == list(range(5, total + 1, 5))
    assert history.train_losses[-1] < history.train_losses[0] - 1.5
    assert history.tokens_seen[-1] == history.steps[-1] * 4 * 16
    assert history.samples == ["sample"] * 4  # one per epoch


def test_a_history_saved_as_json_loads_back_equal(tmp_path):
    history = TrainingHistory(samples=[[1, 2], "text"])
    history.record(12, 384, 6.123456789, 6.2, lr=1e-3, grad_norm=0.5)
    history.record(24, 768, 5.9, 6.0, lr=5e-4)
    history.save(tmp_path / "history.json")
    assert TrainingHistory.load(tmp_path / "history.json") == history
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]  # no leftovers


@pytest.mark.parametrize("content", ['{"steps": [1], "accuracy": [0.5]}', "[1, 2]"])
def test_a_file_that_is_no_history_is_named(tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="other.json holds no training history"):
        TrainingHistory.load(path)


def run(text, directory, max_steps=None, resume=False, seed=7, drop=0.2, every=3):
    torch.manual_seed(123)
    model = GPTModel(dataclasses.replace(CFG, drop_rate=drop))
    train, val = loaders(text, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    settings = TrainingConfig(
        num_epochs=3,
        eval_freq=4,
        eval_iter=2,
        checkpoint_dir=directory,
        checkpoint_every=every,
        max_steps=max_steps,
        progress=False,
    )
    history = train_model(model, train, val, optimizer, "cpu", settings, resume=resume)
    return model, optimizer, history


def test_resume_without_checkpoints_starts_fresh(tmp_path, text):
    model, _, history = run(
        text, tmp_path / "none", max_steps=2, resume=True, every=100
    )
    assert history.steps == []  # none measured: fewer steps than eval_freq
    last = latest_checkpoint(tmp_path / "none")  # the last step's, as every run's
    assert last is not None and last.name == "step-00000002"


def test_old_checkpoints_are_pruned(tmp_path, text):
    run(text, tmp_path, max_steps=10, every=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["latest", "step-00000008", "step-00000010"]  # nothing temporary


def test_save_and_load_model_round_trip(tmp_path):
    for tie in (False, True):
        torch.manual_seed(0)
        model = GPTModel(dataclasses.replace(CFG, tie_weights=tie))
        save_model(model, tmp_path / "m.safetensors")
        again = load_model(tmp_path / "m.safetensors")
        assert again.cfg == model.cfg
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, again.state_dict()[name]), name
        if tie:
            assert again.out_head.weight is again.tok_emb.weight
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_loading_into_another_config_names_the_tensors(tmp_path):
    gpt2_vocab = GPTConfig.preset("debug", context_length=16)  # the largest tensors
    save_model(GPTModel(gpt2_vocab), tmp_path / "m.safetensors")
    other = GPTModel(dataclasses.replace(gpt2_vocab, emb_dim=48, n_layers=3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_weights(other, tmp_path / "m.safetensors")
    message = str(err.value)
    assert "does not fit this model" in message
    assert (
        "tok_emb.weight: (50257, 32) in the file, (50257, 48) in the model" in message
    )
    assert "missing from the file: trf_blocks.2.norm1.scale" in message
    for name, tensor in other.state_dict().items():  # nothing was half-loaded
        assert torch.equal(tensor, before[name]), name


def test_load_model_refuses_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not written by llmbook's save_model"):
        load_model(tmp_path / "other.safetensors")


def test_training_config_validation():
    with pytest.raises(ValueError, match="checkpoint_every needs a checkpoint_dir"):
        TrainingConfig(checkpoint_every=5)
    with pytest.raises(ValueError, match="pause_at needs a checkpoint_dir"):
        TrainingConfig(pause_at=5)  # a pause would leave nothing to go on from
    with pytest.raises(ValueError, match="must be positive"):
        TrainingConfig(num_epochs=0)


def small_run(
    text,
    directory,
    resume=False,
    overwrite=False,
    max_steps=None,
    every=2,
    keep=2,
    sample=None,
    loss_fn=None,
    epochs=1,
):
    torch.manual_seed(0)
    model = GPTModel(CFG)
    train, val = loaders(text)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    settings = TrainingConfig(
        num_epochs=epochs,
        eval_freq=100,
        eval_iter=1,
        checkpoint_dir=directory,
        checkpoint_every=every,
        keep_checkpoints=keep,
        max_steps=max_steps,
        overwrite_checkpoints=overwrite,
        progress=False,
    )
    history = train_model(
        model,
        train,
        val,
        optimizer,
        "cpu",
        settings,
        sample=sample,
        resume=resume,
        loss_fn=loss_fn,
    )
    return model, history


def folders(directory):
    return sorted(p.name for p in directory.iterdir())


def test_a_new_run_never_deletes_an_old_runs_checkpoints_unasked(tmp_path, text):
    small_run(text, tmp_path, max_steps=8)
    assert folders(tmp_path) == ["latest", "step-00000006", "step-00000008"]
    earlier = r"holds checkpoints of an earlier run \(latest: step-00000008\); pass"
    with pytest.raises(ValueError, match=earlier):
        small_run(text, tmp_path, max_steps=4)
    assert folders(tmp_path) == ["latest", "step-00000006", "step-00000008"]
    small_run(text, tmp_path, max_steps=4, overwrite=True)
    assert folders(tmp_path) == ["latest", "step-00000002", "step-00000004"]
    assert str(latest_checkpoint(tmp_path)).endswith("step-00000004")


def test_rotation_orders_checkpoints_by_step_number(tmp_path):
    model = GPTModel(CFG)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in [99_999_999, 100_000_000, 100_000_001]:
        save_checkpoint(tmp_path, model, optimizer, {"step": step}, keep=2)
    assert folders(tmp_path) == ["latest", "step-100000000", "step-100000001"]
    assert str(latest_checkpoint(tmp_path)).endswith("step-100000001")
    with pytest.raises(ValueError, match="keep must be at least 1"):
        save_checkpoint(tmp_path, model, optimizer, {"step": 1}, keep=0)


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, text
):
    calls = []

    def loss_that_diverges(inputs, targets, model, device):
        calls.append(1)
        loss = calc_loss_batch(inputs, targets, model, device)
        return loss * float("nan") if len(calls) >= 5 else loss

    with pytest.raises(
        FloatingPointError, match="NaN or infinite at step 5.*kept: .*step-00000004"
    ):
        small_run(text, tmp_path, loss_fn=loss_that_diverges, every=2, keep=1)
    assert folders(tmp_path) == ["latest", "step-00000004"]
    model = GPTModel(CFG)
    state = load_checkpoint(tmp_path, model, torch.optim.AdamW(model.parameters()))
    assert state["step"] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    "field, value",
    [
        ("keep_checkpoints", 0),
        ("keep_checkpoints", -1),
        ("checkpoint_every", 0),
        ("max_steps", 0),
        ("max_steps", -3),
        ("pause_at", 0),
        ("eval_iter", 0),
        ("eval_freq", 0),
    ],
)
def test_settings_that_would_do_nothing_are_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field} must be positive"):
        TrainingConfig(checkpoint_dir=tmp_path, **{field: value})


def test_an_empty_training_loader_is_an_error():
    with pytest.raises(ValueError, match="training loader has no batches"):
        train_model(GPTModel(CFG), [], [], None, "cpu")


def test_what_sample_returns_is_saved_as_plain_json_or_refused(tmp_path, text):
    import numpy as np

    _, history = small_run(
        text, tmp_path / "a", every=3, epochs=2, sample=lambda m: np.str_("text")
    )
    model = GPTModel(CFG)
    optimizer = torch.optim.AdamW(model.parameters())
    state = load_checkpoint(tmp_path / "a", model, optimizer)
    assert state["history"]["samples"] == ["text"]  # after the first epoch
    with pytest.raises(ValueError, match="cannot be saved as JSON.*plain Python"):
        small_run(text, tmp_path / "b", every=3, epochs=2, sample=lambda m: object())
    assert not list((tmp_path / "b").glob(".step-*"))  # nothing half-written


def test_failed_saves_leave_no_temporary_files(tmp_path, monkeypatch):
    import llmbook.checkpoint as checkpoint

    model = GPTModel(CFG)
    optimizer = torch.optim.AdamW(model.parameters())

    def full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, model, optimizer, {"step": 1})
    assert folders(tmp_path) == []
    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_model(model, tmp_path / "m.safetensors")
    assert folders(tmp_path) == []


def test_leftovers_of_a_killed_save_are_removed_on_resume(tmp_path, text):
    small_run(text, tmp_path, max_steps=4)
    (tmp_path / ".step-00000006.abc").mkdir()
    (tmp_path / ".step-00000006.abc" / "model.safetensors").write_bytes(b"half")
    small_run(text, tmp_path, resume=True, max_steps=6)
    assert folders(tmp_path) == ["latest", "step-00000004", "step-00000006"]


def test_a_flipped_bit_in_a_checkpoint_is_caught(tmp_path, text):
    small_run(text, tmp_path, max_steps=4)
    weights = tmp_path / "step-00000004" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(
        ValueError,
        match="model.safetensors is missing or does not match its recorded checksum",
    ):
        small_run(text, tmp_path, resume=True, max_steps=6)


@pytest.mark.parametrize("num_batches", [0, -1])
def test_loss_loader_refuses_batch_counts_below_one(text, num_batches):
    _, val = loaders(text)
    with pytest.raises(ValueError, match="num_batches must be positive"):
        calc_loss_loader(val, GPTModel(CFG), "cpu", num_batches)


def test_weights_of_another_architecture_with_the_same_shapes_are_refused(tmp_path):
    save_model(GPTModel(CFG), tmp_path / "m.safetensors")  # n_heads=2
    other = GPTModel(dataclasses.replace(CFG, n_heads=4, drop_rate=0.3))
    with pytest.raises(ValueError, match="n_heads=2 in the file, 4 in the model"):
        load_weights(other, tmp_path / "m.safetensors")
    same = GPTModel(dataclasses.replace(CFG, drop_rate=0.0))  # dropout may differ
    load_weights(same, tmp_path / "m.safetensors")


def test_resuming_with_other_batches_or_data_is_refused(tmp_path, text):
    small_run(text, tmp_path, max_steps=4)

    def resume_with(train_loader):
        torch.manual_seed(0)
        model = GPTModel(CFG)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        settings = TrainingConfig(
            num_epochs=1, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False
        )
        train_model(
            model,
            train_loader,
            loaders(text)[1],
            optimizer,
            "cpu",
            settings,
            resume=True,
        )

    bigger = create_dataloader(text[:720], 8, 16, 16, seed=7)
    with pytest.raises(
        ValueError,
        match="trained on other data or batches.*'batch_size': 4.*'batch_size': 8",
    ):
        resume_with(bigger)
    other_text = create_dataloader(text[3000:6000], 4, 16, 16, seed=7)
    with pytest.raises(ValueError, match="other data"):
        resume_with(other_text)
    resume_with(loaders(text)[0])  # the same data resumes


def test_a_training_batch_with_a_foreign_id_is_named_before_the_model_runs():
    model = GPTModel(CFG)
    inputs = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="token id 60000 at index \\(0, 2\\)"):
        calc_loss_batch(torch.tensor([[1, 2, 60000]]), inputs, model, "cpu")
    with pytest.raises(ValueError, match="token id 60000"):  # targets too
        calc_loss_batch(inputs, torch.tensor([[2, 3, 60000]]), model, "cpu")
    ignored = torch.tensor([[2, 3, -100]])  # ignore_index is not an id
    assert torch.isfinite(calc_loss_batch(inputs, ignored, model, "cpu"))


def test_save_paths_that_cannot_be_written_are_named(tmp_path):
    model = GPTModel(CFG)
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        save_model(model, tmp_path)
    with pytest.raises(FileNotFoundError, match="folder .*missing does not exist"):
        save_model(model, tmp_path / "missing" / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_leaves_the_old_file_and_nothing_else(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    model = GPTModel(CFG)
    save_model(model, path)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    import llmbook.checkpoint

    monkeypatch.setattr(llmbook.checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_model(GPTModel(CFG), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("keep", [0, 100, 1000])
def test_a_truncated_model_file_is_named(tmp_path, keep):
    path = tmp_path / "model.safetensors"
    save_model(GPTModel(CFG), path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep else b"")
    for load in (load_model, lambda p: load_weights(GPTModel(CFG), p)):
        with pytest.raises(ValueError, match="model.safetensors is not a model file"):
            load(path)
    path.write_bytes(data[:-50])
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="no model file at .*nothing"):
        load_model(tmp_path / "nothing.safetensors")


def test_masks_are_not_saved_and_old_files_with_masks_still_load(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = GPTModel(CFG)
    assert not any(k.endswith(".mask") for k in model.state_dict())
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    state = load_file(path)
    assert not any(k.endswith(".mask") for k in state)
    # A file written before the masks became non-persistent carries them:
    ones = torch.ones(CFG.context_length, CFG.context_length, dtype=torch.bool)
    for i in range(CFG.n_layers):
        state[f"trf_blocks.{i}.att.mask"] = torch.triu(ones, diagonal=1)
    metadata = safe_open(str(path), "pt").metadata()
    old = tmp_path / "old.safetensors"
    save_file(state, old, metadata=metadata)
    again = load_model(old).eval()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(again(ids), model.eval()(ids))


@pytest.mark.parametrize("length", [2, 17, 33, 64])
def test_text_loss_predicts_every_token_after_the_first_once(length):
    from llmbook.bpe import BPETokenizer

    tokenizer = BPETokenizer()  # bytes only: one token per ASCII character
    text = "".join(chr(97 + (i * 7) % 26) for i in range(length))
    torch.manual_seed(0)
    model = GPTModel(TINY)
    model.train()
    per_token, per_char = text_loss(model, tokenizer, text)
    assert model.training  # the mode is given back
    ids = torch.tensor(tokenizer.encode(text))
    model.eval()
    with torch.no_grad():  # each token from the up to 16 tokens before it, its window
        total = sum(
            torch.nn.functional.cross_entropy(
                model(ids[max(0, (i - 1) // 16 * 16) : i].unsqueeze(0))[0, -1],
                ids[i],
            ).item()
            for i in range(1, len(ids))
        )
    assert per_token == pytest.approx(total / (len(ids) - 1), rel=1e-5)
    assert per_char == pytest.approx(per_token)  # one character per token


def test_text_loss_counts_characters_not_tokens():
    from llmbook.bpe import BPETokenizer

    text = "the cat sat on the mat " * 20
    tokenizer = BPETokenizer().train(text, vocab_size=270)
    model = GPTModel(GPTConfig.preset("debug", vocab_size=tokenizer.vocab_size))
    per_token, per_char = text_loss(model, tokenizer, text)
    ids = tokenizer.encode(text)
    spelled = len(text) - len(tokenizer.decode(ids[:1]))
    assert per_char == pytest.approx(per_token * (len(ids) - 1) / spelled)
    assert per_char < per_token  # tokens of several characters
    with pytest.raises(ValueError, match="at least two tokens"):
        text_loss(model, tokenizer, "a")
