"""Chapter 10's modern models against Hugging Face's Llama 3 and Qwen 3.

Tiny random checkpoints made by `transformers` (nothing is downloaded) load into
GPTModel through `config_from_hub` and `load_hub_weights`; the logits must agree to
float32 rounding and greedy generation token for token, with and without the cache.
"""

import http.server
import json
import threading

import pytest
import torch

from llmbook import weights
from llmbook.attention import GroupedQueryAttention, rope_frequencies
from llmbook.generate import generate
from llmbook.model import GPTConfig, GPTModel, KVCache, RMSNorm
from llmbook.weights import config_from_hub, load_hub_weights

transformers = pytest.importorskip("transformers")

VOCAB, CONTEXT = 512, 96
SHAPE = dict(  # two blocks, GQA groups of two, RoPE on 16-wide heads
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=CONTEXT,
    initializer_range=0.2,  # wide logits: no near-ties for greedy decoding
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,  # so that the scaling matters here
)


def llama(tied: bool):
    config = transformers.LlamaConfig(
        **SHAPE, tie_word_embeddings=tied, rms_norm_eps=1e-5, rope_theta=5000.0
    )
    if hasattr(config, "rope_parameters"):  # transformers 5
        config.rope_parameters = {"rope_theta": 5000.0, **LLAMA3_ROPE}
    else:
        config.rope_scaling = LLAMA3_ROPE
    return transformers.LlamaForCausalLM(config)


def qwen3(tied: bool):
    config = transformers.Qwen3Config(
        **SHAPE, head_dim=32, tie_word_embeddings=tied, rope_theta=100000.0
    )
    return transformers.Qwen3ForCausalLM(config)


MODELS = {
    "llama3-untied": lambda: llama(False),
    "llama3-tied": lambda: llama(True),
    "qwen3-tied": lambda: qwen3(True),
    "qwen3-untied": lambda: qwen3(False),
}


@pytest.fixture(scope="module", params=list(MODELS))
def pair(request, tmp_path_factory):
    """(theirs, ours, folder): a random HF model saved as the hub saves it, and
    GPTModel loaded from that folder."""
    torch.manual_seed(0)
    theirs = MODELS[request.param]().eval()
    folder = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(folder)
    ours = GPTModel(config_from_hub(folder / "config.json")).eval()
    load_hub_weights(ours, folder)
    return theirs, ours, folder


def test_logits_equal_to_float32_rounding(pair):
    theirs, ours, _ = pair
    ids = torch.randint(
        0, VOCAB, (3, CONTEXT), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        expected = theirs(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-5


def test_greedy_tokens_equal_with_and_without_cache(pair):
    theirs, ours, _ = pair
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    expected = theirs.generate(ids, max_new_tokens=50, do_sample=False)
    assert expected.shape == (2, 59)
    for use_cache in [True, False]:
        got = generate(ours, ids, 50, context_size=CONTEXT, use_cache=use_cache)
        assert torch.equal(got, expected), f"use_cache={use_cache}"


def test_cache_holds_only_the_key_value_heads(pair):
    _, ours, _ = pair
    cache = KVCache(ours, batch_size=1)
    ours(torch.tensor([[1, 2, 3]]), cache)
    keys = cache.layers[0].keys
    assert keys is not None
    assert keys.shape == (1, 2, CONTEXT, ours.cfg.head_dim or 16)  # 2 of 4 heads


def test_config_read_from_the_file(pair):
    theirs, ours, folder = pair
    cfg = ours.cfg
    saved = json.loads((folder / "config.json").read_text())
    assert (cfg.n_kv_heads, cfg.hidden_dim, cfg.tie_weights) == (
        2,
        112,
        saved["tie_word_embeddings"],
    )
    assert cfg.qk_norm == (saved["model_type"] == "qwen3")
    if saved["model_type"] == "llama":
        assert cfg.rope_scaling == (8.0, 1.0, 4.0, 32)
    counted = sum(p.numel() for p in ours.parameters())
    assert counted == sum(p.numel() for p in theirs.parameters())


def test_config_from_hub_reads_the_older_rope_keys():
    older = {
        "model_type": "llama",
        "vocab_size": 100,
        "max_position_embeddings": 64,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "num_hidden_layers": 1,
        "intermediate_size": 48,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            **{k: v for k, v in LLAMA3_ROPE.items() if k != "rope_type"},
        },
        "tie_word_embeddings": True,
    }
    cfg = config_from_hub(older)
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.n_kv_heads) == (
        500000.0,
        (8.0, 1.0, 4.0, 32),
        1,
    )
    with pytest.raises(ValueError, match="RoPE scaling 'yarn' is not supported"):
        config_from_hub({**older, "rope_scaling": {"rope_type": "yarn"}})
    with pytest.raises(ValueError, match="'mistral' model"):
        config_from_hub({**older, "model_type": "mistral"})


def test_load_refuses_a_checkpoint_of_another_shape(pair):
    _, ours, folder = pair
    other = GPTModel(
        GPTConfig.preset("llama3-debug", vocab_size=VOCAB, context_length=CONTEXT)
    )
    with pytest.raises(ValueError, match="does not fit"):
        load_hub_weights(other, folder)


def test_sharded_checkpoints_load_and_unknown_weights_are_named(tmp_path):
    torch.manual_seed(0)
    theirs = llama(False).eval()
    theirs.save_pretrained(tmp_path, max_shard_size="100KB")  # several files
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = GPTModel(config_from_hub(tmp_path / "config.json")).eval()
    load_hub_weights(ours, tmp_path)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=0, atol=1e-5)
    state = dict(theirs.state_dict())
    state["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match="not in the model: model.layers.0.mlp.extra"):
        load_hub_weights(ours, state)


def test_hub_tokenizer_reads_a_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llmbook.tokenizer import HubTokenizer

    made = Tokenizer(models.BPE())
    made.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    made.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    made.train_from_iterator(["the cat sat on the mat"] * 5, trainer)
    made.save(str(tmp_path / "tokenizer.json"))
    tokenizer = HubTokenizer(tmp_path / "tokenizer.json")
    ids = tokenizer.encode("the cat, ünïcode")
    assert tokenizer.decode(ids) == "the cat, ünïcode"
    assert len(ids) < len("the cat, ünïcode".encode()) and tokenizer.vocab_size <= 280


def test_rmsnorm_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 24) * 3
    ours, reference = RMSNorm(24, eps=1e-6), torch.nn.RMSNorm(24, eps=1e-6)
    with torch.no_grad():
        ours.scale.uniform_(0.5, 1.5)
        reference.weight.copy_(ours.scale)
    torch.testing.assert_close(ours(x), reference(x))
    assert ours.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("kv_heads", [1, 2, 8])
def test_gqa_explicit_path_equals_sdpa_with_and_without_cache(kv_heads):
    torch.manual_seed(0)
    gqa = GroupedQueryAttention(
        d_in=32, context_length=16, num_heads=8, num_kv_heads=kv_heads, head_dim=8
    ).eval()
    x = torch.randn(2, 12, 32)
    fast = gqa(x)
    gqa.use_sdpa = False
    torch.testing.assert_close(gqa(x), fast)
    from llmbook.attention import LayerCache

    for use_sdpa in [True, False]:  # 5 tokens, then 4, then 3: masks after a start
        gqa.use_sdpa = use_sdpa
        cache = LayerCache(batch_size=2, capacity=16)
        parts = [gqa(x[:, a:b], cache) for a, b in [(0, 5), (5, 9), (9, 12)]]
        torch.testing.assert_close(torch.cat(parts, dim=1), fast)


def test_gqa_refuses_heads_that_do_not_group():
    with pytest.raises(ValueError, match="multiple of num_kv_heads=3"):
        GroupedQueryAttention(
            d_in=32, context_length=8, num_heads=4, num_kv_heads=3, head_dim=8
        )


def test_rope_scaling_keeps_fast_pairs_and_slows_slow_ones():
    plain = rope_frequencies(64, 500000.0)
    scaled = rope_frequencies(64, 500000.0, (32.0, 1.0, 4.0, 8192))
    wavelength = 2 * torch.pi / plain
    assert torch.equal(scaled[wavelength < 2048], plain[wavelength < 2048])
    torch.testing.assert_close(scaled[wavelength > 8192], plain[wavelength > 8192] / 32)
    middle = (wavelength >= 2048) & (wavelength <= 8192)
    assert middle.any()
    assert (
        (scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 32)
    ).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(norm="batchnorm"), "norm must be one of"),
        (dict(n_heads=4, emb_dim=32, n_kv_heads=3), "multiple of n_kv_heads=3"),
        (dict(positions="rope", n_heads=4, emb_dim=4 * 5), "even head_dim"),
        (dict(rope_scaling=(8.0, 4.0, 1.0, 32)), "low < high"),
        (dict(hidden_dim=0), "hidden_dim must be a positive int"),
    ],
)
def test_config_refuses_parts_that_do_not_fit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_modern_config_round_trips_through_json():
    cfg = GPTConfig.preset("llama3.2-1b")
    back = GPTConfig(**json.loads(json.dumps(cfg.__dict__)))
    assert back == cfg and isinstance(back.rope_scaling, tuple)


class HubHandler(http.server.BaseHTTPRequestHandler):
    """A stand-in for the hub: every file is b"data", and a gated repository
    answers 401 unless the request carries the token "secret"."""

    seen: list[str] = []

    def reply(self, body: bool):
        self.seen.append(self.headers.get("Authorization") or "")
        if (
            "gated" in self.path
            and self.headers.get("Authorization") != "Bearer secret"
        ):
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        if body:
            self.wfile.write(b"data")

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        self.reply(body=True)

    def do_HEAD(self):  # noqa: N802
        self.reply(body=False)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setattr(weights, "HF_URL", base + "/{repo}/{file}")
    monkeypatch.setitem(weights.HUB_CHECKPOINTS, "open", "someone/open")
    monkeypatch.setitem(weights.HUB_CHECKPOINTS, "gated", "someone/gated")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    HubHandler.seen = []
    yield
    httpd.shutdown()
    httpd.server_close()


def test_download_hub_fetches_the_three_files_once(hub, tmp_path, monkeypatch):
    folder = weights.download_hub("open", cache_dir=tmp_path, progress=False)
    assert folder == tmp_path / "open"
    assert sorted(p.name for p in folder.iterdir()) == sorted(weights.HUB_FILES)
    assert weights.hub_available("open", cache_dir=tmp_path)
    monkeypatch.setattr(weights, "download_file", lambda *a, **k: pytest.fail("again"))
    assert weights.download_hub("open", cache_dir=tmp_path) == folder


def test_a_gated_model_needs_a_token(hub, tmp_path, monkeypatch):
    with pytest.raises(PermissionError, match="gated.*set HF_TOKEN"):
        weights.download_hub("gated", cache_dir=tmp_path, progress=False)
    monkeypatch.setenv("HF_TOKEN", "secret")
    folder = weights.download_hub("gated", cache_dir=tmp_path, progress=False)
    assert (folder / "model.safetensors").read_bytes() == b"data"
    assert "Bearer secret" in HubHandler.seen


def test_download_hub_explains_what_to_do_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "HF_URL", "http://127.0.0.1:9/{repo}/{file}")
    with pytest.raises(OSError, match="put config.json, tokenizer.json") as err:
        weights.download_hub("qwen3-0.6b", cache_dir=tmp_path, progress=False)
    assert str(tmp_path / "qwen3-0.6b") in str(err.value)
    assert not weights.hub_available("qwen3-0.6b", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown model 'llama5'"):
        weights.download_hub("llama5", cache_dir=tmp_path)
