"""llmbook.weights: GPT-2 checkpoints vs transformers, layouts, errors, downloads."""

import hashlib
import http.server
import threading
import urllib.error

import pytest
import torch

from llmbook import weights
from llmbook.generate import generate_text_simple
from llmbook.model import GPTConfig, GPTModel
from llmbook.weights import (
    config_from_hf,
    detect_layout,
    download_file,
    load_gpt2_weights,
)


def tiny_hf(seed=0, **overrides):
    # transformers is imported when a test needs it: importing it takes seconds,
    # which every test process would pay when it collects this module
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = dict(vocab_size=300, n_positions=40, n_embd=24, n_layer=3, n_head=4)
    return GPT2LMHeadModel(GPT2Config(**config | overrides)).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    tiny_hf().save_pretrained(folder)
    return folder


def ours_from(folder):
    model = GPTModel(config_from_hf(folder / "config.json")).eval()
    load_gpt2_weights(model, folder)
    return model


@pytest.mark.parametrize("sizes", [{}, {"n_embd": 32, "n_head": 2, "n_layer": 1}])
def test_equal_logits_and_generations_to_transformers(tmp_path, sizes):
    reference = tiny_hf(seed=3, **sizes)
    reference.save_pretrained(tmp_path)
    model = ours_from(tmp_path)
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids).logits, atol=1e-5, rtol=0)
    mine = generate_text_simple(model, ids[:1], max_new_tokens=12, context_size=40)
    theirs = reference.generate(
        ids[:1], max_new_tokens=12, do_sample=False, pad_token_id=0
    )
    assert torch.equal(mine, theirs)


def test_sources_file_state_dict_and_bin(tmp_path, hf_folder):
    expected = ours_from(hf_folder).state_dict()
    sources = [
        hf_folder / "model.safetensors",
        tiny_hf().state_dict(),
    ]
    tiny_hf().save_pretrained(tmp_path / "bin", safe_serialization=False)
    sources.append(tmp_path / "bin")
    for source in sources:
        model = GPTModel(config_from_hf(hf_folder / "config.json"))
        load_gpt2_weights(model, source)
        for name, tensor in expected.items():
            assert torch.equal(model.state_dict()[name], tensor), name


def test_book_layout_state_dict(tmp_path, hf_folder):
    source = ours_from(hf_folder)
    torch.save(source.state_dict(), tmp_path / "book.pth")
    assert detect_layout(source.state_dict()) == "book"
    model = GPTModel(config_from_hf(hf_folder / "config.json"))
    load_gpt2_weights(model, tmp_path / "book.pth")
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_missing_qkv_bias_is_explained(hf_folder):
    cfg = config_from_hf(hf_folder / "config.json")
    model = GPTModel(GPTConfig(**vars(cfg) | {"qkv_bias": False}))
    with pytest.raises(ValueError, match="build with qkv_bias=True") as err:
        load_gpt2_weights(model, hf_folder)
    assert "not in the model: trf_blocks.0.att.W_query.bias" in str(err.value)


def test_wrong_sizes_list_every_problem_and_copy_nothing(hf_folder):
    cfg = config_from_hf(hf_folder / "config.json")
    model = GPTModel(GPTConfig(**vars(cfg) | {"n_layers": 4, "emb_dim": 32}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_gpt2_weights(model, hf_folder)
    message = str(err.value)
    assert (
        "tok_emb.weight: (300, 24) in the checkpoint, (300, 32) in the model" in message
    )
    assert "missing from the checkpoint: trf_blocks.3.norm1.scale" in message
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_unknown_layouts_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="not a GPT-2 checkpoint in a known layout"):
        load_gpt2_weights(GPTModel(GPTConfig.preset("debug")), {"foo.weight": 1})
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_gpt2_weights(GPTModel(GPTConfig.preset("debug")), tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_gpt2_weights(GPTModel(GPTConfig.preset("debug")), tmp_path / "x.pt")


def test_unexpected_checkpoint_tensors_are_reported(hf_folder):
    state = tiny_hf().state_dict() | {"transformer.h.0.attn.extra": torch.zeros(1)}
    model = GPTModel(config_from_hf(hf_folder / "config.json"))
    with pytest.raises(ValueError, match="not in the model: h.0.attn.extra"):
        load_gpt2_weights(model, state)


def test_config_from_hf(hf_folder):
    cfg = config_from_hf(hf_folder / "config.json")
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim) == (300, 40, 24)
    assert (cfg.n_heads, cfg.n_layers, cfg.qkv_bias, cfg.tie_weights) == (
        4,
        3,
        True,
        True,
    )


# -- downloads, against a server on the loopback interface ----------------------------

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


class RangeHandler(http.server.BaseHTTPRequestHandler):
    ignore_range = False

    def do_GET(self):  # noqa: N802 (the name http.server expects)
        start = 0
        header = self.headers.get("Range")
        if header and not self.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802
        """As Hugging Face answers for a large file: a redirect to its storage that
        carries the file's SHA-256 in X-Linked-Etag (`sha256` of the class)."""
        self.send_response(302)
        self.send_header("Location", self.path + "?stored")
        if self.sha256 is not None:
            self.send_header("X-Linked-Etag", f'"{self.sha256}"')
        self.end_headers()

    sha256: str | None = hashlib.sha256(PAYLOAD).hexdigest()

    def log_message(self, *args):
        pass


@pytest.fixture(params=[False, True], ids=["ranges", "no-ranges"])
def server(request):
    handler = type("Handler", (RangeHandler,), {"ignore_range": request.param})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()


def test_download_fresh_and_resumed(tmp_path, server):
    dest = tmp_path / "file.bin"
    download_file(server, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    dest.unlink()
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:3000])  # an interrupted download
    download_file(server, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "file.bin.part").exists()


def test_download_of_an_already_complete_part(tmp_path):
    handler = type("Handler", (RangeHandler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    try:
        (tmp_path / "f.part").write_bytes(PAYLOAD)
        url = f"http://127.0.0.1:{httpd.server_address[1]}/f"
        assert (
            download_file(url, tmp_path / "f", progress=False).read_bytes() == PAYLOAD
        )
    finally:
        httpd.shutdown()


def test_download_gpt2_explains_what_to_do_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "HF_URL", "http://127.0.0.1:9/{repo}/{file}")
    with pytest.raises(OSError, match="put config.json and model.safetensors") as err:
        weights.download_gpt2("gpt2-small", cache_dir=tmp_path, progress=False)
    assert str(tmp_path / "gpt2-small") in str(err.value)
    assert isinstance(err.value.__cause__, urllib.error.URLError | OSError)
    with pytest.raises(ValueError, match="unknown GPT-2 size 'gpt5'"):
        weights.download_gpt2("gpt5", cache_dir=tmp_path)


def test_cached_checkpoints_are_not_downloaded_again(tmp_path, monkeypatch):
    folder = tmp_path / "gpt2-small"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    monkeypatch.setattr(
        weights, "download_file", lambda *a, **k: pytest.fail("fetched")
    )
    assert weights.download_gpt2("gpt2-small", cache_dir=tmp_path) == folder


def test_gpt2_available_checks_the_cache_then_the_server(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "HF_URL", "http://127.0.0.1:9/{repo}/{file}")
    assert not weights.gpt2_available("gpt2-small", cache_dir=tmp_path)
    folder = tmp_path / "gpt2-small"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    assert weights.gpt2_available("gpt2-small", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown GPT-2 size 'gpt5'"):
        weights.gpt2_available("gpt5", cache_dir=tmp_path)


def test_an_untied_head_cannot_load_into_a_tied_model(hf_folder):
    cfg = config_from_hf(hf_folder / "config.json")
    untied = GPTModel(GPTConfig(**vars(cfg) | {"tie_weights": False}))
    state = untied.state_dict()  # its head is a separate random matrix
    tied = GPTModel(cfg)
    with pytest.raises(ValueError, match="build it with tie_weights=False"):
        load_gpt2_weights(tied, state)
    load_gpt2_weights(untied, {k: v.clone() for k, v in state.items()})  # fits


class HeadHandler(RangeHandler):
    def do_HEAD(self):  # noqa: N802 (the name http.server expects)
        self.send_response(200 if self.path.endswith("/config.json") else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_gpt2_available_when_the_server_answers(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HeadHandler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        monkeypatch.setattr(weights, "HF_URL", base + "/{repo}/{file}")
        assert weights.gpt2_available("gpt2-small", cache_dir=tmp_path)
        monkeypatch.setattr(weights, "HF_URL", base + "/{repo}/{file}.missing")
        assert not weights.gpt2_available("gpt2-small", cache_dir=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_truncated_gpt2_file_is_named(tmp_path, name):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_hf().state_dict().items()}
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file({k: v.clone() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    path.write_bytes(path.read_bytes()[:-200])
    model = GPTModel(
        GPTConfig(
            vocab_size=300,
            context_length=40,
            emb_dim=24,
            n_heads=4,
            n_layers=3,
            drop_rate=0.0,
            qkv_bias=True,
        )
    )
    with pytest.raises(ValueError, match=f"could not read .*{name}.*truncated"):
        load_gpt2_weights(model, path)


@pytest.mark.parametrize("tie", [True, False])
def test_every_file_save_model_writes_loads_as_gpt2_weights(tmp_path, tie):
    from llmbook.checkpoint import save_model

    cfg = GPTConfig.preset("debug", context_length=16, drop_rate=0.0, tie_weights=tie)
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    save_model(model, tmp_path / "model.safetensors")
    other = GPTModel(cfg).eval()
    load_gpt2_weights(other, tmp_path / "model.safetensors")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(other(ids), model(ids))
    assert (other.out_head.weight is other.tok_emb.weight) == tie


def serve(handler):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def test_a_download_must_have_the_checksum_the_server_gives(tmp_path):
    httpd, base = serve(type("Handler", (RangeHandler,), {}))
    try:
        right = hashlib.sha256(PAYLOAD).hexdigest()
        assert weights.server_sha256(f"{base}/model.safetensors") == right
        dest = tmp_path / "model.safetensors"
        download_file(f"{base}/m", dest, progress=False, sha256=right)
        assert dest.read_bytes() == PAYLOAD
        wrong = "0" * 64
        with pytest.raises(OSError, match="SHA-256 is .* not 0000.*was deleted"):
            download_file(f"{base}/m", tmp_path / "bad", progress=False, sha256=wrong)
        assert not (tmp_path / "bad").exists()
        assert not (tmp_path / "bad.part").exists()  # the next try starts afresh
    finally:
        httpd.shutdown()
    silent, base = serve(type("Handler", (RangeHandler,), {"sha256": None}))
    try:
        assert weights.server_sha256(f"{base}/model.safetensors") is None
    finally:
        silent.shutdown()
    assert weights.server_sha256("http://127.0.0.1:9/x") is None  # nobody answers


def test_download_gpt2_refuses_weights_with_another_checksum(tmp_path, monkeypatch):
    """The server's checksum decides; without one, GPT-2 small's is in the code."""

    class Liar(RangeHandler):
        sha256: str | None = "1" * 64

    httpd, base = serve(Liar)
    monkeypatch.setattr(weights, "HF_URL", base + "/{repo}/{file}")
    try:
        with pytest.raises(OSError, match="SHA-256 is .* not 1111"):
            weights.download_gpt2("gpt2-medium", cache_dir=tmp_path, progress=False)
        folder = tmp_path / "gpt2-medium"
        assert (folder / "config.json").is_file()  # small, and parsed when loaded
        assert not (folder / "model.safetensors").exists()
        Liar.sha256 = None  # a server that gives none: small's pinned sum applies
        with pytest.raises(OSError, match="not 248dfc39"):
            weights.download_gpt2("gpt2-small", cache_dir=tmp_path, progress=False)
        Liar.sha256 = hashlib.sha256(PAYLOAD).hexdigest()
        fetched = weights.download_gpt2("gpt2-medium", tmp_path, progress=False)
        assert (fetched / "model.safetensors").read_bytes() == PAYLOAD
    finally:
        httpd.shutdown()
