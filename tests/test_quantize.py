"""Appendix F: weights in bfloat16 and int8 (`quantize`), and prompts of different
lengths in one batch (`pad_prompts`, `generate(..., padding=...)`)."""

import copy

import pytest
import torch
from torch import nn

from llmbook.attention import LayerCache, MultiHeadAttention, unpadded
from llmbook.generate import generate, pad_prompts
from llmbook.model import GPTConfig, GPTModel
from llmbook.quantize import (
    QuantizedEmbedding,
    QuantizedLinear,
    int8_rows,
    quantize,
    weight_bytes,
)

PRESETS = ["debug", "llama3-debug", "qwen3-debug"]


def fresh(preset: str = "debug", **overrides) -> GPTModel:
    torch.manual_seed(0)
    cfg = GPTConfig.preset(preset, drop_rate=0.0, **overrides)
    return GPTModel(cfg).eval()


def test_int8_rows_keep_each_weight_within_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(40, 24)
    weight[3] = 0.0  # a row of zeros stays zeros, with no division by zero
    ints, scale = int8_rows(weight)
    assert ints.dtype == torch.int8 and scale.shape == (40,)
    assert ints.abs().amax(dim=1)[[0, 1, 2, 4]].eq(127).all()  # the largest: 127
    assert torch.equal(ints[3], torch.zeros(24, dtype=torch.int8))
    error = (ints.float() * scale[:, None] - weight).abs()
    assert (error <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("rows", [1, 5, 40])  # one token, a few, a long prompt
def test_the_fast_product_computes_the_readable_one(dtype, rows):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = QuantizedLinear(linear, dtype)
    x = torch.randn(2, rows, 64)
    fast = layer(x)
    layer.fast = False
    readable = layer(x)
    exact = linear(x).detach()
    assert fast.shape == (2, rows, 48) and fast.dtype == torch.float32
    scale = exact.abs().max()
    assert (fast - readable).abs().max() < 0.02 * scale  # bfloat16 inputs
    assert (readable - exact).abs().max() < 0.02 * scale


def test_a_quantized_layer_answers_in_its_inputs_type():
    layer = QuantizedLinear(nn.Linear(8, 4, bias=False), "int8")
    for dtype in [torch.float32, torch.float64, torch.bfloat16]:
        assert layer(torch.randn(3, 8, dtype=dtype)).dtype == dtype
    assert layer.bias is None and not any(p.requires_grad for p in layer.buffers())


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize("preset", PRESETS)
def test_quantize_replaces_every_linear_and_keeps_the_logits(dtype, preset):
    model = fresh(preset)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 12))
    with torch.no_grad():
        before = model(ids)
        small = quantize(copy.deepcopy(model), dtype)
        after = small(ids)
    assert not any(type(m) is nn.Linear for m in small.modules())
    assert isinstance(small.tok_emb, QuantizedEmbedding)
    assert not small.training
    error = (after - before).abs().max() / before.abs().max()
    assert error < 0.05, error


def test_a_tied_head_and_its_embedding_keep_one_table():
    def tables(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, head = model.tok_emb, model.out_head
        assert isinstance(embedding, QuantizedEmbedding)
        assert isinstance(head, QuantizedLinear)
        return embedding.weight, head.weight

    embedding, head = tables(quantize(fresh("debug", tie_weights=True), "int8"))
    assert embedding.data_ptr() == head.data_ptr()
    embedding, head = tables(quantize(fresh("debug", tie_weights=False), "int8"))
    assert embedding.data_ptr() != head.data_ptr()
    assert embedding.dtype == head.dtype == torch.int8


def test_weight_bytes_count_what_a_step_reads():
    model = fresh("debug", tie_weights=True)
    matrices = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    numbers = sum(w.numel() for w in matrices)
    assert weight_bytes(model) == 4 * numbers
    assert weight_bytes(quantize(copy.deepcopy(model), "bfloat16")) == 2 * numbers
    scales = sum(w.shape[0] for w in matrices)
    assert weight_bytes(quantize(model, "int8")) == numbers + 4 * scales


def test_quantize_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        quantize(fresh(), "int4")
    model = quantize(fresh(), "int8")
    with pytest.raises(ValueError, match="no nn.Linear layer left"):
        quantize(model, "bfloat16")
    assert quantize(model, "float32") is model  # float32 changes nothing


def test_pad_prompts_pads_on_the_left():
    idx, padding = pad_prompts([[5, 6], [1, 2, 3, 4], [9]], pad_id=0)
    assert idx.tolist() == [[0, 0, 5, 6], [1, 2, 3, 4], [0, 0, 0, 9]]
    assert padding.tolist() == [2, 0, 3]
    for bad in [[], [[1], []]]:
        with pytest.raises(ValueError, match="at least one token in each"):
            pad_prompts(bad, pad_id=0)


PROMPTS = [[15496, 11], [464, 3290, 318, 257, 922, 286, 262, 11, 13], [40, 588]]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_a_batch_gives_each_row_what_it_gets_alone(preset, use_cache):
    model = fresh(preset)
    idx, padding = pad_prompts(PROMPTS, pad_id=7)
    together = generate(model, idx, 12, 64, padding=padding, use_cache=use_cache)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([prompt]), 12, 64, use_cache=use_cache)
        assert torch.equal(together[row, padding[row] :], alone[0])


@pytest.mark.parametrize("preset", ["debug", "qwen3-debug"])
def test_a_batch_past_the_context_length_drops_its_padding_first(preset):
    """A window of 8 places: the cache starts afresh on the last 8, and a row's
    padding shrinks by the places cut off, as its own run would see them."""
    model = fresh(preset)
    idx, padding = pad_prompts(PROMPTS, pad_id=0)
    together = generate(model, idx, 10, 8, padding=padding)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([prompt]), 10, 8)
        assert torch.equal(together[row, padding[row] :], alone[0])


def test_rows_sample_and_stop_on_their_own():
    model = fresh()
    idx, padding = pad_prompts(PROMPTS, pad_id=0)
    generator = torch.Generator().manual_seed(3)
    out = generate(
        model, idx, 20, 64, temperature=1.0, eos_id=11, generator=generator,
        padding=padding,
    )  # fmt: skip
    assert out.shape[0] == 3 and out.shape[1] <= idx.shape[1] + 20
    for row in out[:, idx.shape[1] :].tolist():  # after a row's eos, only eos
        if 11 in row:
            assert set(row[row.index(11) :]) == {11}


def test_padding_that_makes_no_sense_is_refused():
    model = fresh()
    idx = torch.tensor([[0, 5, 6], [1, 2, 3]])
    cases = [
        (torch.tensor([1]), ValueError, "one per row"),
        (torch.tensor([1.0, 0.0]), ValueError, "whole numbers"),
        (torch.tensor([-1, 0]), ValueError, "at least one token"),
        (torch.tensor([3, 0]), ValueError, "at least one token"),
    ]
    for padding, error, message in cases:
        with pytest.raises(error, match=message):
            generate(model, idx, 2, 64, padding=padding)

    class NotGPT(nn.Module):
        def forward(self, idx):
            return torch.zeros(*idx.shape, 10)

    with pytest.raises(TypeError, match="needs a GPTModel"):
        generate(NotGPT(), idx, 2, 64, padding=torch.tensor([1, 0]))


def test_padding_places_are_never_attended_on_either_path():
    """With the same padded cache, SDPA and the explicit softmax agree, and a real
    token's output does not change when the padding's keys do."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 8, 16, 0.0, num_heads=2).eval()
    explicit = copy.deepcopy(mha)
    explicit.use_sdpa = False
    x = torch.randn(2, 5, 8)
    noisy = x.clone()
    noisy[0, :2] = 100 * torch.randn(2, 8)  # row 0's two padding places

    def run(module, inputs):
        cache = LayerCache(batch_size=2, capacity=16)
        cache.padding = torch.tensor([2, 0])
        return module(inputs, cache)

    with torch.no_grad():
        assert torch.allclose(run(mha, x), run(explicit, x), atol=1e-5)
        assert torch.allclose(run(mha, x)[0, 2:], run(mha, noisy)[0, 2:], atol=1e-5)
    mask = unpadded(torch.ones(1, 4, dtype=torch.bool), torch.tensor([2, 0]))
    assert mask.shape == (2, 1, 1, 4)
    assert mask[0, 0, 0].tolist() == [False, False, True, True]
