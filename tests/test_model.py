"""llmbook.model and generate_text_simple: parts against torch.nn, sizes, causality."""

import dataclasses
import re

import pytest
import torch
from torch import nn

from llmbook.attention import GroupedQueryAttention, MultiHeadAttention
from llmbook.generate import generate_text_simple
from llmbook.model import (
    GELU,
    PRESETS,
    FeedForward,
    GPTConfig,
    GPTModel,
    LayerNorm,
    SwiGLU,
    TransformerBlock,
)

DEBUG = GPTConfig.preset("debug", drop_rate=0.0)


def small_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPTModel(dataclasses.replace(DEBUG, **overrides)).eval()


@pytest.mark.parametrize("shape", [(3, 8), (2, 5, 8), (1, 1, 1, 8)])
def test_layer_norm_equals_torch(shape):
    torch.manual_seed(0)
    ours, theirs = LayerNorm(8), torch.nn.LayerNorm(8)
    with torch.no_grad():
        ours.scale.copy_(torch.randn(8))
        ours.shift.copy_(torch.randn(8))
        theirs.weight.copy_(ours.scale)
        theirs.bias.copy_(ours.shift)
    x = torch.randn(*shape) * 5 + 2
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    constant = torch.full((2, 8), 3.0)  # zero variance: eps keeps it finite
    assert torch.isfinite(ours(constant)).all()


def test_gelu_equals_torch_tanh_gelu_and_its_gradient():
    x = torch.linspace(-10, 10, 2001, dtype=torch.float64, requires_grad=True)
    ours = GELU()(x)
    theirs = torch.nn.GELU(approximate="tanh")(x)
    torch.testing.assert_close(ours, theirs)
    (g1,) = torch.autograd.grad(ours.sum(), x)
    (g2,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(g1, g2)


def test_feed_forward_shape_and_width():
    ff = FeedForward(16)
    assert ff(torch.rand(2, 3, 16)).shape == (2, 3, 16)
    assert ff.layers[0].out_features == 64


def test_block_keeps_the_shape():
    block = TransformerBlock(DEBUG)
    assert block(torch.rand(3, 7, DEBUG.emb_dim)).shape == (3, 7, DEBUG.emb_dim)


@pytest.mark.parametrize("batch, tokens", [(1, 1), (2, 7), (3, 64)])
def test_logits_shape(batch, tokens):
    model = small_model()
    idx = torch.randint(0, DEBUG.vocab_size, (batch, tokens))
    assert model(idx).shape == (batch, tokens, DEBUG.vocab_size)


def test_gpt2_small_parameter_counts():
    for tie, expected in [(False, 163_009_536), (True, 124_412_160)]:
        with torch.device("meta"):
            model = GPTModel(GPTConfig.preset("gpt2-small", tie_weights=tie))
        assert sum(p.numel() for p in model.parameters()) == expected


def test_presets_have_gpt2s_published_sizes():
    sizes = {}
    for name in ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"]:
        with torch.device("meta"):
            model = GPTModel(GPTConfig.preset(name, tie_weights=True))
        sizes[name] = round(sum(p.numel() for p in model.parameters()) / 1e6)
    assert sizes == {
        "gpt2-small": 124,
        "gpt2-medium": 355,
        "gpt2-large": 774,
        "gpt2-xl": 1557,
    }


def test_tied_weights_share_storage_and_train_together():
    model = small_model(tie_weights=True).train()
    assert model.out_head.weight is model.tok_emb.weight
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    assert model.tok_emb.weight.grad is not None
    untied = small_model(tie_weights=False)
    assert untied.out_head.weight is not untied.tok_emb.weight


def test_init_follows_gpt2():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("debug", n_layers=8))
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.002
    block = model.trf_blocks[0]
    assert isinstance(block, TransformerBlock)
    assert isinstance(block.att, MultiHeadAttention)
    assert isinstance(block.ff, FeedForward)
    residual = block.att.out_proj.weight.std().item()
    assert abs(residual - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8 layers)
    projection = block.ff.layers[2]
    assert isinstance(projection, nn.Linear)
    assert abs(projection.weight.std().item() - 0.02 / 4) < 0.001
    biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
    assert biases and all(torch.count_nonzero(bias) == 0 for bias in biases)


def test_the_whole_model_is_causal():
    model = small_model()
    idx = torch.randint(0, DEBUG.vocab_size, (1, 12))
    base = model(idx)
    for position in [0, 5, 11]:
        changed = idx.clone()
        changed[0, position] = (changed[0, position] + 1) % DEBUG.vocab_size
        out = model(changed)
        torch.testing.assert_close(out[0, :position], base[0, :position])
        assert not torch.allclose(out[0, position], base[0, position])


def test_same_seed_same_model_and_dropout_off_in_eval():
    a, b = small_model(seed=7), small_model(seed=7)
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name
    noisy = small_model(seed=7, drop_rate=0.5)
    idx = torch.randint(0, DEBUG.vocab_size, (2, 10))
    assert torch.equal(noisy(idx), noisy(idx))  # eval(): deterministic
    noisy.train()
    assert not torch.equal(noisy(idx), noisy(idx))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(emb_dim=30, n_heads=4), "emb_dim=30 must be divisible by n_heads=4"),
        (dict(n_layers=0), "n_layers must be positive"),
        (dict(drop_rate=1.0), "drop_rate must be in"),
        (dict(vocab_size=-5), "vocab_size must be positive"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_modern_init_scales_the_shortcut_weights_too():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("qwen3-debug", n_layers=8, emb_dim=64))
    block = model.trf_blocks[0]
    assert isinstance(block.ff, SwiGLU) and model.pos_emb is None
    assert isinstance(block.att, GroupedQueryAttention)
    for weight in [block.att.out_proj.weight, block.ff.down.weight]:
        assert abs(weight.std().item() - 0.02 / 4) < 0.002
    assert abs(block.ff.up.weight.std().item() - 0.02) < 0.002
    assert not [name for name, _ in model.named_parameters() if "bias" in name]


def test_gpt2_presets_build_the_parts_of_chapter_6():
    model = GPTModel(GPTConfig.preset("debug"))
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"LayerNorm", "MultiHeadAttention", "FeedForward"} <= kinds
    assert not kinds & {"RMSNorm", "GroupedQueryAttention", "SwiGLU"}


def test_presets_and_overrides():
    assert set(PRESETS) == {
        "gpt2-small",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "micro",
        "mini",
        "debug",
    }
    assert GPTConfig.preset("gpt2-xl", context_length=256).context_length == 256
    with pytest.raises(ValueError, match="unknown preset 'gpt3'"):
        GPTConfig.preset("gpt3")
    with pytest.raises(ValueError, match="must be divisible"):
        GPTConfig.preset("gpt2-small", n_heads=7)


def test_model_input_errors():
    model = small_model()
    with pytest.raises(ValueError, match="65 tokens exceed the context length 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(
        ValueError, match="token id 50257 at index \\(0, 1\\) is outside"
    ):
        model(torch.tensor([[1, 50257]]))
    with pytest.raises(ValueError, match="token id -2 at index \\(1, 0\\)"):
        model(torch.tensor([[1, 2], [-2, 3]]))
    with pytest.raises(ValueError, match="shape \\(batch, tokens\\), got \\(3,\\)"):
        model(torch.tensor([1, 2, 3]))


def test_generate_appends_greedy_tokens():
    model = small_model()
    idx = torch.tensor([[5, 6, 7], [8, 9, 10]])
    out = generate_text_simple(model, idx, max_new_tokens=4, context_size=64)
    assert out.shape == (2, 7) and torch.equal(out[:, :3], idx)
    step = generate_text_simple(model, idx, max_new_tokens=1, context_size=64)
    assert torch.equal(step[:, 3], model(idx)[:, -1].argmax(dim=-1))
    assert torch.equal(generate_text_simple(model, out[:, :5], 2, 64), out)


def test_generate_crops_the_context():
    model = small_model()
    long_prompt = torch.randint(0, DEBUG.vocab_size, (1, 100))  # longer than 64
    out = generate_text_simple(model, long_prompt, max_new_tokens=3, context_size=64)
    assert out.shape == (1, 103) and torch.equal(out[:, :100], long_prompt)
    cropped = generate_text_simple(model, long_prompt[:, -64:], 3, context_size=64)
    assert torch.equal(out[:, -3:], cropped[:, -3:])
    short_window = generate_text_simple(model, long_prompt, 1, context_size=4)
    expected = model(long_prompt[:, -4:])[:, -1].argmax(dim=-1)
    assert torch.equal(short_window[:, -1], expected)


def test_generate_edge_cases():
    model = small_model()
    idx = torch.tensor([[1, 2]])
    assert torch.equal(generate_text_simple(model, idx, 0, 64), idx)
    with pytest.raises(ValueError, match="at least one token.*<\\|endoftext\\|>"):
        generate_text_simple(model, torch.zeros(1, 0, dtype=torch.long), 3, 64)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        generate_text_simple(model, idx, -1, 64)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("qkv_bias", "False", "qkv_bias must be True or False, got 'False'"),
        ("tie_weights", 1, "tie_weights must be True or False, got 1"),
        ("emb_dim", 32.0, "emb_dim must be an int, got 32.0"),
        ("n_layers", "2", "n_layers must be an int, got '2'"),
        ("context_length", None, "context_length must be an int, got None"),
        ("n_heads", True, "n_heads must be an int, got True"),
        ("drop_rate", "0.1", "drop_rate must be a number, got '0.1'"),
    ],
)
def test_config_refuses_values_of_the_wrong_type(field, value, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        GPTConfig.preset("debug", **{field: value})


@pytest.mark.parametrize(
    "ids",
    [
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[float("nan"), 2.0]]),
        torch.tensor([[True, False]]),
        torch.tensor([[1, 2]], dtype=torch.int8),
        torch.tensor([[1, 2]], dtype=torch.uint8),
    ],
)
def test_ids_of_a_type_that_cannot_index_are_refused_by_name(ids):
    with pytest.raises(TypeError, match=f"token ids must be integers.*{ids.dtype}"):
        small_model()(ids)


def test_int32_ids_work_like_int64():
    model = small_model().eval()
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(model(ids.int()), model(ids))


def test_forward_reads_no_id_values_so_a_gpu_never_waits(monkeypatch):
    """The range check lives where ids enter; forward must not call .any()/.item()
    on the ids (each would force a device-to-host sync on a GPU)."""
    model = small_model().eval()
    ids = torch.tensor([[5, 6, 7]])
    calls = []
    for name in ("any", "all", "item", "tolist", "nonzero", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if self.dtype == torch.bool or self.dtype == torch.int64:
                calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    model(ids)
    assert calls == []


def _rates(model) -> tuple[float, list[float], list[float]]:
    """Dropout after the embeddings, then per block: shortcut, attention."""
    shortcut = [m.p for n, m in model.named_modules() if n.endswith("drop_shortcut")]
    attn = [m.dropout_p for m in model.modules() if isinstance(m, MultiHeadAttention)]
    return model.drop_emb.p, shortcut, attn


def test_separate_dropout_rates_default_to_drop_rate():
    cfg = GPTConfig.preset("debug", drop_rate=0.2, drop_rate_attn=0.0)
    assert _rates(GPTModel(cfg)) == (0.2, [0.2, 0.2], [0.0, 0.0])
    cfg = GPTConfig.preset(
        "debug", drop_rate=0.0, drop_rate_emb=0.3, drop_rate_shortcut=0.4
    )
    assert _rates(GPTModel(cfg)) == (0.3, [0.4, 0.4], [0.0, 0.0])


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("drop_rate_attn", 1.0, ValueError),
        ("drop_rate_emb", -0.1, ValueError),
        ("drop_rate_shortcut", "0.1", TypeError),
    ],
)
def test_separate_dropout_rates_are_checked(field, value, error):
    with pytest.raises(error, match=field):
        GPTConfig.preset("debug", **{field: value})


def test_only_attention_dropout_changes_a_training_forward_pass_there():
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (2, 8))
    base = GPTModel(GPTConfig.preset("debug", drop_rate=0.0)).train()
    other = GPTModel(
        GPTConfig.preset("debug", drop_rate=0.0, drop_rate_attn=0.5)
    ).train()
    other.load_state_dict(base.state_dict())
    assert torch.equal(base(ids), base(ids))  # no dropout anywhere: deterministic
    assert not torch.equal(base(ids), other(ids))
