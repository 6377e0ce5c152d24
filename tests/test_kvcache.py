"""The KV cache (llmbook.attention.LayerCache, llmbook.model.KVCache): the same
logits and the same generated tokens as the plain path, and clear errors on misuse."""

import pytest
import torch

from llmbook.attention import LayerCache, MultiHeadAttention
from llmbook.generate import generate
from llmbook.model import GPTConfig, GPTModel, KVCache
from tiny import tiny_config

VOCAB = 257  # tests/tiny.py's bytes: the cache does not care which ids they are


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTModel(tiny_config(drop_rate=0.0, context_length=64)).eval()


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_attention_read_in_pieces_equals_attention_over_the_whole(use_sdpa):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 16, context_length=12, dropout=0.0, num_heads=4)
    mha.use_sdpa = use_sdpa
    x = torch.randn(3, 12, 16)
    cache = LayerCache(batch_size=3, capacity=12)
    with torch.no_grad():
        full = mha(x)
        # a prefill, one token, then several tokens after a filled cache: the last
        # piece needs the causal mask shifted to its positions
        pieces = [mha(x[:, a:b], cache) for a, b in [(0, 4), (4, 5), (5, 12)]]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("tie_weights", [False, True])
def test_model_read_in_pieces_gives_the_logits_of_the_whole(tie_weights):
    torch.manual_seed(1)
    model = GPTModel(GPTConfig.preset("debug", drop_rate=0.0, tie_weights=tie_weights))
    ids = torch.randint(0, 50257, (2, 20))
    cache = KVCache(model.eval(), batch_size=2)
    with torch.no_grad():
        pieces = [model(ids[:, a:b], cache) for a, b in [(0, 7), (7, 8), (8, 20)]]
        torch.testing.assert_close(
            torch.cat(pieces, dim=1), model(ids), atol=1e-5, rtol=0
        )


def test_greedy_tokens_are_identical_for_a_gpt2_small_shaped_model():
    # GPT-2 small's widths (12 heads of 64, 768 wide, 50,257 tokens) in two of its
    # twelve blocks (every block runs the same code), 24 new tokens and a window of
    # 16: the last 16 steps run past it, where the cache must start afresh on the
    # last 16 tokens at every step.
    torch.manual_seed(2)
    cfg = GPTConfig.preset("gpt2-small", drop_rate=0.0, n_layers=2)
    model = GPTModel(cfg).eval()
    prompt = torch.randint(0, 50257, (1, 8))
    plain = generate(model, prompt, 24, context_size=16, use_cache=False)
    cached = generate(model, prompt, 24, context_size=16)
    assert plain.shape == (1, 32)
    assert cached.tolist() == plain.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_rows_are_identical_with_the_same_generator_seed(model, seed):
    prompt = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(9))

    def run(use_cache):
        generator = torch.Generator().manual_seed(seed)
        return generate(
            model,
            prompt,
            max_new_tokens=70,
            context_size=32,
            temperature=1.3,
            top_k=100,  # of the 257 tokens
            generator=generator,
            use_cache=use_cache,
        )

    plain, cached = run(False), run(True)
    assert plain.shape == (3, 75)  # past the window of 32 after 27 new tokens
    assert torch.equal(cached, plain)


def test_end_of_sequence_rows_are_identical_with_the_cache(model):
    prompt = torch.tensor([[11, 12], [13, 14]])
    first = generate(model, prompt, 1, 64, use_cache=False)[:, -1]
    eos = int(first[0])  # row 0 stops at once; row 1 runs on unless it hits eos
    plain = generate(model, prompt, 10, 64, eos_id=eos, use_cache=False)
    assert torch.equal(generate(model, prompt, 10, 64, eos_id=eos), plain)


def test_feed_reads_only_the_new_tokens_and_refills_past_the_capacity(model):
    read = []
    hook = model.tok_emb.register_forward_hook(
        lambda module, args, out: read.append(args[0].shape[1])
    )
    try:
        cache = KVCache(model, batch_size=1, capacity=8)
        ids = torch.arange(1, 11).unsqueeze(0)
        for end in [3, 4, 8, 9, 10]:
            logits = cache.feed(ids[:, :end])
        assert read == [3, 1, 4, 8, 8]  # the last two: a fresh window of 8
        assert cache.length == 8
        with torch.no_grad():
            expected = model(ids[:, 2:10])[:, -1]
        torch.testing.assert_close(logits[:, -1], expected, atol=1e-5, rtol=0)
    finally:
        hook.remove()


def test_a_cache_of_another_batch_size_or_model_is_refused(model):
    cache = KVCache(model, batch_size=2, capacity=8)
    with pytest.raises(ValueError, match="batches of 2 rows, got 3"):
        model(torch.zeros(3, 4, dtype=torch.long), cache)
    other = GPTModel(tiny_config(context_length=64))
    with pytest.raises(ValueError, match="another model's keys and values"):
        other(torch.zeros(2, 4, dtype=torch.long), cache)
    assert cache.length == 0  # nothing was stored by the refused calls


def test_a_full_cache_is_refused_and_reset_empties_it(model):
    cache = KVCache(model, batch_size=1, capacity=8)
    model(torch.zeros(1, 6, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="holds 6 of 8 positions, with no room for 3"):
        model(torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="no new one"):
        cache.feed(torch.zeros(1, 6, dtype=torch.long))
    cache.reset()
    assert cache.length == 0
    assert model(torch.zeros(1, 8, dtype=torch.long), cache).shape == (1, 8, VOCAB)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(batch_size=0), ValueError, "batch_size >= 1"),
        (dict(batch_size=1, capacity=65), ValueError, "capacity <= 64"),
        (dict(batch_size=1, capacity=0), ValueError, "1 <= capacity"),
        (dict(batch_size=1.0), TypeError, "batch_size must be an integer"),
        (dict(batch_size=True), TypeError, "batch_size must be an integer"),
    ],
)
def test_cache_sizes_that_make_no_sense_are_refused(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        KVCache(model, **kwargs)


def test_a_layer_cache_refuses_keys_of_another_shape_or_dtype():
    cache = LayerCache(batch_size=1, capacity=4)
    cache.append(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    with pytest.raises(ValueError, match="another shape, dtype or device"):
        cache.append(torch.zeros(1, 3, 1, 8), torch.zeros(1, 3, 1, 8))
    with pytest.raises(ValueError, match="another shape, dtype or device"):
        cache.append(torch.zeros(1, 2, 1, 8).double(), torch.zeros(1, 2, 1, 8).double())
    with pytest.raises(ValueError, match="batches of 1 rows, got 2"):
        cache.append(torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))


def test_models_without_a_cache_still_generate_with_the_default():
    class Echo(torch.nn.Module):  # takes no cache: generate reads whole windows
        def forward(self, idx):
            return torch.nn.functional.one_hot(idx, 7).float()

    out = generate(Echo(), torch.tensor([[3]]), max_new_tokens=2, context_size=4)
    assert out.tolist() == [[3, 3, 3]]
