"""llmbook.attention: every variant equals SDPA, causality, dropout, bad input."""

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from llmbook.attention import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
)

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2}


def reference(x, W_query, W_key, W_value, num_heads):
    """Causal attention by SDPA from raw projection matrices (nn.Linear layout)."""
    b, t, _ = x.shape

    def heads(w):
        return (x @ w.T).view(b, t, num_heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        heads(W_query), heads(W_key), heads(W_value), is_causal=True
    )
    return out.transpose(1, 2).reshape(b, t, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, tokens", [(1, 1), (2, 5), (3, 16)])
def test_causal_head_equals_sdpa(dtype, batch, tokens):
    torch.manual_seed(0)
    head = CausalAttention(8, 4, context_length=16, dropout=0.0).to(dtype)
    x = torch.randn(batch, tokens, 8, dtype=dtype)
    expected = reference(
        x, head.W_query.weight, head.W_key.weight, head.W_value.weight, 1
    )
    torch.testing.assert_close(head(x), expected, atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("tokens", [1, 7, 12])
def test_wrapper_equals_sdpa(tokens):
    torch.manual_seed(1)
    wrapper = MultiHeadAttentionWrapper(6, 3, 12, 0.0, num_heads=4)
    x = torch.randn(2, tokens, 6)
    stacked = {
        name: torch.cat([getattr(h, name).weight for h in wrapper.heads])
        for name in ["W_query", "W_key", "W_value"]
    }
    expected = reference(x, **stacked, num_heads=4)
    torch.testing.assert_close(wrapper(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_sdpa", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "batch, tokens, d_in, d_out, heads, bias",
    [(1, 1, 8, 8, 1, False), (2, 9, 12, 16, 4, True), (3, 32, 32, 48, 6, False)],
)
def test_multi_head_equals_sdpa(
    use_sdpa, dtype, batch, tokens, d_in, d_out, heads, bias
):
    torch.manual_seed(2)
    mha = MultiHeadAttention(d_in, d_out, 32, 0.0, heads, qkv_bias=bias)
    mha = mha.to(dtype)
    mha.use_sdpa = use_sdpa
    x = torch.randn(batch, tokens, d_in, dtype=dtype)
    with torch.no_grad():
        q = mha.W_query(x).view(batch, tokens, heads, -1).transpose(1, 2)
        k = mha.W_key(x).view(batch, tokens, heads, -1).transpose(1, 2)
        v = mha.W_value(x).view(batch, tokens, heads, -1).transpose(1, 2)
        explicit_mask = ~mha.mask[:tokens, :tokens]  # True where attention is allowed
        options: list[dict[str, Any]] = [
            {"is_causal": True},
            {"attn_mask": explicit_mask},
        ]
        for kwargs in options:
            context = F.scaled_dot_product_attention(q, k, v, **kwargs)
            context = context.transpose(1, 2).reshape(batch, tokens, d_out)
            expected = mha.out_proj(context)
            torch.testing.assert_close(
                mha(x), expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype]
            )


def test_both_paths_agree_and_share_weights():
    torch.manual_seed(3)
    mha = MultiHeadAttention(16, 16, 20, 0.0, num_heads=4)
    x = torch.randn(2, 20, 16)
    fused = mha(x)
    mha.use_sdpa = False
    torch.testing.assert_close(mha(x), fused, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "module",
    [
        lambda: CausalAttention(6, 6, 10, 0.0),
        lambda: MultiHeadAttentionWrapper(6, 2, 10, 0.0, num_heads=3),
        lambda: MultiHeadAttention(6, 6, 10, 0.0, num_heads=3, use_sdpa=True),
        lambda: MultiHeadAttention(6, 6, 10, 0.0, num_heads=3, use_sdpa=False),
    ],
    ids=["head", "wrapper", "mha-sdpa", "mha-explicit"],
)
def test_causality_future_tokens_never_change_earlier_outputs(module):
    torch.manual_seed(4)
    attention = module()
    x = torch.randn(1, 10, 6)
    base = attention(x)
    for position in range(10):
        changed = x.clone()
        changed[0, position] += torch.randn(6)
        out = attention(changed)
        assert torch.equal(out[0, :position], base[0, :position]), position
        assert not torch.allclose(out[0, position], base[0, position])


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_dropout_only_in_training(use_sdpa):
    torch.manual_seed(5)
    mha = MultiHeadAttention(8, 8, 16, dropout=0.5, num_heads=2, use_sdpa=use_sdpa)
    x = torch.randn(2, 16, 8)
    mha.train()
    assert not torch.allclose(mha(x), mha(x))  # a new dropout mask every call
    mha.eval()
    assert torch.equal(mha(x), mha(x))
    no_dropout = MultiHeadAttention(8, 8, 16, dropout=0.0, num_heads=2)
    no_dropout.load_state_dict(mha.state_dict())
    torch.testing.assert_close(mha(x), no_dropout.eval()(x), atol=1e-6, rtol=0)


def test_mask_is_a_buffer_left_out_of_the_state_dict():
    mha = MultiHeadAttention(8, 8, 16, 0.0, num_heads=2)
    assert "mask" not in mha.state_dict()  # rebuilt from context_length, not saved
    assert "mask" in dict(mha.named_buffers())
    assert "mask" not in dict(mha.named_parameters())
    assert mha.mask.dtype == torch.bool and mha.mask.shape == (16, 16)
    assert mha.to(torch.float64).mask.dtype == torch.bool


def test_d_out_must_divide_into_heads():
    with pytest.raises(ValueError, match="d_out=10 must be divisible by num_heads=4"):
        MultiHeadAttention(8, 10, 16, 0.0, num_heads=4)
    with pytest.raises(ValueError, match="num_heads=0"):
        MultiHeadAttention(8, 8, 16, 0.0, num_heads=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CausalAttention(4, 4, 6, 0.0),
        lambda: MultiHeadAttention(4, 4, 6, 0.0, num_heads=2),
    ],
    ids=["head", "mha"],
)
def test_bad_inputs_are_clear_errors(make):
    attention = make()
    with pytest.raises(ValueError, match="7 tokens, more than the context length 6"):
        attention(torch.randn(1, 7, 4))
    with pytest.raises(ValueError, match="got a 2-d tensor of shape \\(5, 4\\)"):
        attention(torch.randn(5, 4))
    with pytest.raises(ValueError, match="expected 4 input features, got 3"):
        attention(torch.randn(1, 5, 3))


@pytest.mark.parametrize("cls", [CausalAttention, MultiHeadAttention])
def test_an_input_of_another_dtype_is_named(cls):
    kwargs = dict(d_in=4, d_out=4, context_length=8, dropout=0.0)
    if cls is MultiHeadAttention:
        kwargs["num_heads"] = 2
    module = cls(**kwargs)
    with pytest.raises(TypeError, match="torch.float64 input, but its weights are"):
        module(torch.rand(1, 3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.int64 input"):
        module(torch.ones(1, 3, 4, dtype=torch.long))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed types are autocast's job
        assert module(torch.rand(1, 3, 4).bfloat16()).shape == (1, 3, 4)
