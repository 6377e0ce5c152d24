"""Chapter 11's preference tuning: the DPO loss against its formula, the pairs,
their batches, and a tiny run whose held-out preference accuracy rises."""

import json
import math

import pytest
import torch

from llmbook.bpe import BPETokenizer
from llmbook.model import GPTConfig, GPTModel
from llmbook.prefer import (
    DPOLoss,
    check_preferences,
    create_preference_loaders,
    dpo_loss,
    evaluate_preferences,
    frozen_copy,
    load_preference_splits,
    preference_collate,
    preference_loader,
    read_preferences,
    sequence_logprobs,
)
from llmbook.train import TrainingConfig, train_model


def reference_dpo(pc, pr, rc, rr, beta):
    """DPO written independently: log(1 + exp(-x)) is softplus(-x)."""
    margins = beta * ((pc - rc) - (pr - rr))
    loss = torch.nn.functional.softplus(-margins).mean()
    return loss, beta * (pc - rc), beta * (pr - rr)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
def test_dpo_loss_equals_the_formula_on_random_inputs(beta):
    generator = torch.Generator().manual_seed(0)
    logps = -50 * torch.rand(4, 64, generator=generator, dtype=torch.float64)
    pc, pr, rc, rr = logps
    ours = dpo_loss(pc, pr, rc, rr, beta=beta)
    theirs = reference_dpo(pc, pr, rc, rr, beta)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_dpo_loss_by_hand_and_its_bad_beta():
    loss, chosen, rejected = dpo_loss(
        torch.tensor([-10.0]),
        torch.tensor([-23.0]),
        torch.tensor([-12.0]),
        torch.tensor([-20.0]),
        beta=0.1,
    )  # margin 0.1 * (2 + 3) = 0.5
    assert math.isclose(loss.item(), math.log(1 + math.exp(-0.5)), rel_tol=1e-6)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.2, -0.3))
    for beta in [0.0, -1.0, float("inf"), float("nan")]:
        with pytest.raises(ValueError, match="beta must be positive"):
            zero = torch.zeros(1)
            dpo_loss(zero, zero, zero, zero, beta=beta)
        with pytest.raises(ValueError, match="beta must be positive"):
            DPOLoss(GPTModel(GPTConfig.preset("debug")), beta)


def test_sequence_logprobs_sums_the_answer_tokens_only():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("debug", vocab_size=50)).eval()
    inputs = torch.randint(0, 50, (2, 6))
    targets = torch.randint(0, 50, (2, 6))
    targets[0, :3] = -100  # a prompt
    targets[1, 4:] = -100  # padding
    with torch.no_grad():
        got = sequence_logprobs(model, inputs, targets)
        logps = torch.log_softmax(model(inputs), dim=-1)
    expected = [
        sum(logps[r, t, targets[r, t]].item() for t in range(6) if targets[r, t] >= 0)
        for r in range(2)
    ]
    assert got.tolist() == pytest.approx(expected, abs=1e-4)


def entry(i, chosen="Yes, gladly.", rejected="No."):
    return {
        "instruction": f"Task {i}.",
        "input": "",
        "chosen": chosen,
        "rejected": rejected,
    }


def test_the_collate_puts_chosen_rows_first_and_masks_the_prompts():
    tokenizer = BPETokenizer()  # bytes only: an id per byte
    batch = preference_collate(
        [
            ((list(b"PROMPTyes"), 6), (list(b"PROMPTno"), 6)),
            ((list(b"Pa"), 1), (list(b"Pbbbb"), 1)),
        ],
        pad_token_id=0,
    )
    inputs, targets = batch
    assert inputs.shape == targets.shape == (4, 9)  # the longest, plus its end
    assert tokenizer.decode(inputs[0].tolist()) == "PROMPTyes"
    assert tokenizer.decode(inputs[2].tolist()[:8]) == "PROMPTno"
    scored = [(row != -100).sum().item() for row in targets]
    assert scored == [4, 2, 3, 5]  # answer tokens and one end-of-text each


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"instruction": "x"}, "a non-empty JSON list"),
        ([], "a non-empty JSON list"),
        ([entry(0), "text"], "entry 1 is a str, not an object"),
        ([{"instruction": "x", "rejected": "no"}], "entry 0 has no 'chosen'"),
        ([entry(0, chosen="  ")], "entry 0: its 'chosen' is empty"),
        ([entry(0), entry(1, rejected=["no"])], "entry 1: its 'rejected' is a list"),
        ([{**entry(0), "input": 3}], "entry 0: its 'input' is not text"),
    ],
)
def test_bad_preference_entries_are_named(entries, message):
    with pytest.raises(ValueError, match=message):
        check_preferences(entries)


def test_pairs_without_a_preference_are_counted_not_kept(tmp_path):
    entries = [entry(0), entry(1, chosen="Same.", rejected="Same."), entry(2)]
    kept, left_out = check_preferences(entries)
    assert [e["instruction"] for e in kept] == ["Task 0.", "Task 2."]
    assert left_out == [1]  # its place in the file
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(entries))
    assert read_preferences(path) == (kept, [1])
    path.write_text("[{]")
    with pytest.raises(ValueError, match="pairs.json: not JSON"):
        read_preferences(path)
    with pytest.raises(FileNotFoundError, match="missing.json: no such file"):
        read_preferences(tmp_path / "missing.json")


def test_the_books_file_has_six_pairs_without_a_preference():
    train, val, test, left_out = load_preference_splits()
    assert (len(train), len(val), len(test), left_out) == (929, 111, 54, 6)
    assert all(e["chosen"] != e["rejected"] for e in train + val + test)


def test_a_tiny_dpo_run_learns_the_preference_and_generalises():
    """Polite answers are chosen, curt ones rejected; after a few DPO steps the
    implicit reward ranks unseen pairs right."""
    polite = ["Sure, happy to help.", "Of course, here it is.", "Gladly, thank you."]
    curt = ["No. Do it yourself.", "Figure it out.", "Not my problem."]
    entries = [entry(i, polite[i % 3], curt[(i + 1) % 3]) for i in range(60)]
    tokenizer = BPETokenizer()  # bytes; its <|endoftext|> is not needed: pad with 0
    torch.manual_seed(0)
    model = GPTModel(
        GPTConfig(
            vocab_size=257,
            context_length=256,
            emb_dim=32,
            n_heads=2,
            n_layers=1,
            drop_rate=0.0,
        )
    )
    options = dict(pad_token_id=0, allowed_max_length=256)
    train, held_out = entries[:48], entries[48:]
    loaders = create_preference_loaders(train, held_out, tokenizer, 8, **options)
    reference = frozen_copy(model)
    pairs = preference_loader(held_out, tokenizer, 8, **options)
    before = evaluate_preferences(model, reference, pairs)
    assert (before.accuracy, before.margin) == (0.5, 0.0)  # the policy is its reference
    assert DPOLoss(reference).reference is reference  # frozen: used as it is
    assert DPOLoss(model).reference is not model  # it trains: copied and frozen
    inputs, targets = next(iter(loaders[0]))
    first = DPOLoss(reference)(inputs, targets, model, "cpu")
    assert first.item() == pytest.approx(math.log(2), abs=1e-6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    config = TrainingConfig(num_epochs=3, eval_freq=6, eval_iter=1, progress=False)
    train_loader, val_loader = loaders
    loss_fn = DPOLoss(reference, 0.1)
    history = train_model(
        model, train_loader, val_loader, optimizer, "cpu", config, loss_fn=loss_fn
    )
    after = evaluate_preferences(model, reference, pairs)
    assert history.val_losses[-1] < math.log(2)
    assert after.accuracy == 1.0 and after.margin > 0
    assert reference.training is False and not any(
        p.requires_grad for p in reference.parameters()
    )
