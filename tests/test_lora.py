"""llmbook.lora: a fresh adapter changes nothing, merging changes nothing, and only
the adapters (and the head) train."""

import pytest
import torch
from torch import nn

from llmbook.checkpoint import load_model, save_model
from llmbook.classify import add_classification_head
from llmbook.lora import (
    LinearWithLoRA,
    LoRALayer,
    count_parameters,
    merge_lora,
    replace_linear_with_lora,
)
from llmbook.model import GPTConfig, GPTModel

CFG = GPTConfig.preset("debug", context_length=16, drop_rate=0.0)
IDS = torch.tensor([[15496, 11, 995, 0, 7, 99], [1, 2, 3, 4, 5, 6]])


def model_and_copy():
    torch.manual_seed(0)
    base = GPTModel(CFG).eval()
    torch.manual_seed(0)
    return base, GPTModel(CFG).eval()


def test_a_fresh_lora_model_computes_exactly_what_the_base_model_does():
    base, adapted = model_and_copy()
    replace_linear_with_lora(adapted, rank=4, alpha=8)
    with torch.no_grad():
        assert torch.equal(adapted(IDS), base(IDS))


def test_every_linear_layer_is_adapted_and_only_lora_trains():
    _, model = model_and_copy()
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    replace_linear_with_lora(model, rank=2, alpha=2)
    adapted = [n for n, m in model.named_modules() if isinstance(m, LinearWithLoRA)]
    assert adapted == linear_names
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora.{m}" for n in adapted for m in "AB"}


def test_a_classifier_trains_its_adapters_and_its_new_head():
    torch.manual_seed(0)
    model = add_classification_head(GPTModel(CFG), num_classes=2, trainable_blocks=1)
    replace_linear_with_lora(model, rank=2, alpha=4, train_whole=["out_head"])
    assert isinstance(model.out_head, nn.Linear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"out_head.weight", "out_head.bias"} <= trainable
    assert all(n.startswith("out_head.") or ".lora." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    for _ in range(3):
        optimizer.zero_grad()
        model(IDS)[:, -1].sum().backward()
        optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        if name not in trainable:
            assert not changed, name  # frozen
        elif not name.endswith(".A"):  # A moves only once B is no longer zero
            assert changed, name


def test_merged_and_unmerged_models_agree():
    _, model = model_and_copy()
    replace_linear_with_lora(model, rank=3, alpha=6)
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, LoRALayer):
            nn.init.normal_(module.B, std=0.05)  # as after some training
    with torch.no_grad():
        unmerged = model(IDS)
        merge_lora(model)
        merged = model(IDS)
    assert not any(isinstance(m, LinearWithLoRA) for m in model.modules())
    assert set(model.state_dict()) == set(GPTModel(CFG).state_dict())
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_the_update_is_scaled_by_alpha_over_rank():
    torch.manual_seed(0)
    layer = LinearWithLoRA(nn.Linear(5, 3), rank=2, alpha=6)
    nn.init.normal_(layer.lora.B)
    x = torch.randn(4, 5)
    update = x @ layer.lora.A @ layer.lora.B  # (4, 3)
    torch.testing.assert_close(layer(x), layer.linear(x) + 3.0 * update)
    assert (layer.in_features, layer.out_features) == (5, 3)
    merged = layer.merged()
    assert merged.bias is not None
    torch.testing.assert_close(merged(x), layer(x))


def test_parameter_counts():
    _, model = model_and_copy()
    trainable, total = count_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())
    replace_linear_with_lora(model, rank=2, alpha=2)
    trainable, total_after = count_parameters(model)
    d = CFG.emb_dim  # per block: q, k, v, out (d x d); d -> 4d; 4d -> d
    per_block = 4 * 2 * (d + d) + 2 * (d + 4 * d) + 2 * (4 * d + d)
    head = 2 * (d + CFG.vocab_size)
    assert trainable == CFG.n_layers * per_block + head
    assert total_after == total + trainable


@pytest.mark.parametrize(
    "rank, alpha, message",
    [
        (0, 1, "rank must be a whole number of at least 1, got 0"),
        (-2, 1, "rank must be"),
        (2.0, 1, "rank must be"),
        (True, 1, "rank must be"),
        (2, 0, "alpha must be a positive number, got 0"),
        (2, -1.5, "alpha must be"),
        (2, "16", "alpha must be"),
        (2, float("nan"), "alpha must be a positive number, got nan"),
        (2, float("inf"), "alpha must be"),
    ],
)
def test_bad_rank_or_alpha_is_refused(rank, alpha, message):
    with pytest.raises(ValueError, match=message):
        LoRALayer(4, 4, rank, alpha)
    _, model = model_and_copy()
    with pytest.raises(ValueError, match=message):
        replace_linear_with_lora(model, rank, alpha)
    assert all(p.requires_grad for p in model.parameters())  # nothing was changed


def test_a_model_without_linear_layers_is_refused():
    with pytest.raises(ValueError, match="Sequential has no nn.Linear layers for"):
        replace_linear_with_lora(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), 2, 2)
    only_head = nn.Sequential()
    only_head.add_module("out_head", nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"no nn.Linear layers outside \['out_head'\]"):
        replace_linear_with_lora(only_head, 2, 2, train_whole=["out_head"])


def test_adding_lora_twice_or_merging_none_is_refused():
    _, model = model_and_copy()
    with pytest.raises(ValueError, match="no LoRA layers to merge"):
        merge_lora(model)
    replace_linear_with_lora(model, 2, 2)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        replace_linear_with_lora(model, 2, 2)


def test_a_misspelt_module_to_train_whole_is_refused():
    """Issue 34: `train_whole=["out_haed"]` left the head frozen without a word."""
    _, model = model_and_copy()
    with pytest.raises(
        ValueError, match=r"names no module of the model: \['out_haed'\]"
    ):
        replace_linear_with_lora(model, 2, 2, train_whole=["out_haed"])
    assert not any(isinstance(m, LinearWithLoRA) for m in model.modules())
    replace_linear_with_lora(model, 2, 2, train_whole="out_head")  # one name, a str
    assert model.out_head.weight.requires_grad


def test_a_merged_lora_on_a_tied_model_saves_a_file_that_loads(tmp_path):
    """Issue 34: merging unties the head from the embedding; the file said tied."""
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("debug", context_length=16, tie_weights=True))
    replace_linear_with_lora(model.eval(), rank=2, alpha=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALayer):
                module.B.normal_()  # as if trained
    merge_lora(model)
    assert model.out_head.weight is not model.tok_emb.weight
    save_model(model, tmp_path / "merged.safetensors")
    loaded = load_model(tmp_path / "merged.safetensors").eval()
    assert not loaded.cfg.tie_weights
    with torch.no_grad():
        assert torch.equal(loaded(IDS), model(IDS))
