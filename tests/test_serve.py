"""Chapter 12 as users meet it: `llmbook serve` called by the official `openai`
client, `llmbook export` loaded by `transformers`, and `llmbook chat` under a
pseudo-terminal, each on a model that the test trains."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from llmbook.bpe import BPETokenizer
from llmbook.chat import (
    NEXT_TURN,
    Answer,
    TextStream,
    chat_prompt,
    fit_conversation,
    stream_answer,
)
from llmbook.checkpoint import load_model
from llmbook.cli import main
from llmbook.data import data_file
from llmbook.files import SetupError
from llmbook.instruct import ask_judge
from llmbook.model import MODERN_PRESETS, GPTConfig, GPTModel
from llmbook.tokenizer import gpt2_tokenizer

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

COMMAND = [sys.executable, "-m", "llmbook"]


def command(*args) -> subprocess.CompletedProcess:
    """`llmbook ARGS` in this process, what it printed captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A small model pretrained on the story, with a BPE of its own (so that the
    export must carry a tokenizer that is not GPT-2's)."""
    out = tmp_path_factory.mktemp("serve") / "story"
    result = command(
        "pretrain", data_file("the-verdict.txt"), "--out", out, "--preset", "debug",
        "--tokenizer", "bpe:300", "--batch-size", 4, "--device", "cpu", "--quiet",
        "--seed", 7, "--eval-batches", 2, "--context-length", 256, "--max-steps", 4,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def greedy_generate(run: Path, prompt: str, tokens: int) -> str:
    """What `llmbook generate` prints after the prompt, greedy."""
    result = command(
        "generate", "--checkpoint", run, "--prompt", prompt, "--temperature", 0,
        "--max-new-tokens", tokens, "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(prompt)
    return result.stdout[len(prompt) :].removesuffix("\n")


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    """`llmbook serve` in a process of its own on a free port, and its base URL."""
    process = subprocess.Popen(
        [*COMMAND, "serve", "--checkpoint", str(run), "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    ready, _, _ = select.select([process.stdout], [], [], 120)
    line = process.stdout.readline() if ready else ""
    if "serving" not in line:
        process.kill()
        pytest.fail(f"the server did not start: {line!r} {process.stderr.read()!r}")
    return process, line.split(" at ")[1].split()[0]  # http://127.0.0.1:PORT/v1


@pytest.fixture(scope="module")
def server(run):
    process, url = start_server(run)
    yield process, url
    if process.poll() is None:
        process.kill()
        process.wait()


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    """A raw request, as a client without OpenAI's library sends it."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_openai_client_gets_what_llmbook_generate_prints(run, server):
    _, url = server
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    assert [model.id for model in client.models.list()] == ["story"]
    prompt = "I had always thought Jack"
    reply = client.completions.create(
        model="story", prompt=prompt, max_tokens=20, temperature=0
    )
    expected = greedy_generate(run, prompt, 20)
    assert reply.choices[0].text == expected
    assert reply.usage is not None and reply.usage.completion_tokens <= 20
    pieces = [
        chunk.choices[0].text
        for chunk in client.completions.create(
            model="story", prompt=prompt, max_tokens=20, temperature=0, stream=True
        )
    ]
    assert "".join(pieces) == expected and len(pieces) > 2

    question = "Name a colour."
    chunks = list(
        client.chat.completions.create(
            model="story",
            messages=[{"role": "user", "content": question}],
            max_tokens=15,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] in ("stop", "length") and set(finish[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 15
    prompt = chat_prompt([], question)
    assert text == greedy_generate(run, prompt, 15).split(NEXT_TURN)[0]
    whole = client.chat.completions.create(
        model="story",
        messages=[{"role": "user", "content": question}],
        max_tokens=15,
        temperature=0,
    )
    assert whole.choices[0].message.content == text
    # sampling with a seed is repeatable
    twice = [
        client.completions.create(
            model="story", prompt=prompt, max_tokens=10, temperature=1.0, seed=5
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert twice[0] == twice[1]


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server):
    _, url = server
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="Hi")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="story", prompt="Hi", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="story", prompt="word " * 200)
    cases: list[tuple[bytes | dict, int, str | None]] = [
        (b"{not json", 400, None),
        ({"model": "story"}, 400, "prompt"),
        ({"model": "story", "prompt": "Hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "story", "prompt": "Hi", "n": 2}, 400, "n"),
        ({"model": "story", "prompt": "Hi", "top_p": 1.5}, 400, "top_p"),
        ({"model": "story", "prompt": ""}, 400, "prompt"),
        ({"model": "story", "prompt": ["a", "b"]}, 400, "prompt"),
    ]
    for body, status, param in cases:
        code, reply = post(f"{url}/completions", body)
        assert code == status, (body, reply)
        assert reply["error"]["param"] == param and reply["error"]["message"]
    for messages in [[], [{"role": "assistant", "content": "Hi"}], [{"role": "x"}]]:
        code, reply = post(
            f"{url}/chat/completions", {"model": "story", "messages": messages}
        )
        assert code == 400 and reply["error"]["param"].startswith("messages"), reply
    plain = urllib.request.Request(f"{url}/completions", b'"text"', method="POST")
    try:
        urllib.request.urlopen(plain, timeout=60)
    except urllib.error.HTTPError as error:
        assert error.code == 400 and "Content-Type" in error.read().decode()
    code, reply = post(f"{url}/nowhere", {})
    assert code == 404 and "error" in reply
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health") as health:
        assert json.loads(health.read())["status"] == "ok"
    reply = client.completions.create(model="story", prompt="Hi", max_tokens=3)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_piped_chat_answers_each_line_on_one_line(run, monkeypatch, capsys):
    lines = "Name a colour.\n\n/nonsense\nName a fruit.\n/quit\nNever read.\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines.encode())))
    sampled = ["--temperature", "2", "--seed", "1", "--max-new-tokens", "30"]
    code = main(["chat", "--checkpoint", str(run), "--device", "cpu", *sampled])
    out, err = capsys.readouterr()
    assert code == 0
    answers = out.split("\n")[:-1]
    assert len(answers) == 4  # a line out for each line in, up to /quit
    assert answers[1] == answers[2] == "" and answers[0] and answers[3]
    assert not answers[0].startswith(" ") and "unknown command /nonsense" in err


def test_chapter_9s_judge_client_talks_to_the_server(server):
    _, url = server
    answer = ask_judge("Score this: 1", url.removesuffix("/v1"), "story", "openai")
    assert isinstance(answer, str)
    with pytest.raises(SetupError, match="answered 400 .* context holds 256 tokens"):
        ask_judge("word " * 300, url.removesuffix("/v1"), "story", "openai")


def test_sigterm_stops_the_server_after_the_request_under_way(run):
    process, url = start_server(run)
    try:
        replies: list = []
        body = {"model": "story", "prompt": "I", "max_tokens": 100, "temperature": 0}
        asking = threading.Thread(
            target=lambda: replies.append(post(f"{url}/completions", body))
        )
        asking.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        asking.join(60)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, -signal.SIGTERM)
    assert replies and replies[0][0] == 200


def test_the_server_refuses_more_waiting_requests_than_it_allows():
    from llmbook.serve import APIError, CompletionRequest, ModelServer

    cfg = GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2,
                    n_layers=1, drop_rate=0.0)  # fmt: skip
    server = ModelServer(GPTModel(cfg), gpt2_tokenizer(), "m", 50256, max_waiting=0)
    request = CompletionRequest(model="m", prompt="Hi", max_tokens=2)
    first = server.respond(request, [17250], 2, chat=False)  # answered at once
    assert first.status_code == 200 and server.admitted == 0
    request.stream = True
    streaming = server.respond(request, [17250], 2, chat=False)  # not yet read
    with pytest.raises(APIError, match="busy") as refused:
        server.respond(request, [17250], 2, chat=False)
    assert refused.value.status == 503
    del streaming  # a client that hung up: its place is given back
    assert server.admitted == 0


def test_an_export_loads_in_transformers_with_the_librarys_logits(run, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "story-hf"
    result = command("export", "--checkpoint", run, "--out", out)
    assert result.returncode == 0, result.stderr
    model = load_model(run / "model.safetensors")
    model.eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    seed = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 50), generator=seed)
    with torch.no_grad():
        assert torch.allclose(theirs(ids).logits, model(ids), atol=1e-5, rtol=0)
    # the run's own BPE, read by the tokenizers library
    tokenizer = BPETokenizer.load(run / "tokenizer.json")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "I had always thought Jack Gisburn rather a cheap genius--\n\n  Ünïcödé 123!"
    assert hf_tokenizer.encode(text) == tokenizer.encode(text)
    assert hf_tokenizer.decode(hf_tokenizer.encode(text)) == text
    # the round trip: --hf reads the export back, and generates the same text
    prompt = "I had always thought"
    greedy = ["--prompt", prompt, "--temperature", 0, "--max-new-tokens", 12]
    again = command("generate", "--hf", out, *greedy, "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert again.stdout == prompt + greedy_generate(run, prompt, 12) + "\n"
    refused = command("export", "--checkpoint", run, "--out", out)
    assert refused.returncode == 1 and "exists" in refused.stderr
    assert (out / "model.safetensors").stat().st_mode & 0o644 == 0o644  # as any file
    wrong = command("generate", "--checkpoint", out, *greedy)
    assert wrong.returncode == 1 and "give it with --hf" in wrong.stderr
    wrong = command("generate", "--hf", run, *greedy)
    assert wrong.returncode == 1 and "goes with --checkpoint" in wrong.stderr


@pytest.mark.parametrize("preset", ["llama3-debug", "qwen3-debug", "gpt2-untied"])
def test_modern_shapes_export_to_their_transformers_classes(preset, tmp_path):
    transformers = pytest.importorskip("transformers")
    from llmbook.export import export_hf

    torch.manual_seed(0)
    if preset == "gpt2-untied":
        cfg = GPTConfig(vocab_size=300, context_length=32, emb_dim=32, n_heads=4,
                        n_layers=2, drop_rate=0.0, bias=False)  # fmt: skip
    else:
        cfg = MODERN_PRESETS[preset]
    model = GPTModel(cfg).eval()
    with torch.no_grad():  # weights away from their initial ones and zeros
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    assert export_hf(model, tmp_path / "out") == ["config.json", "model.safetensors"]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        assert torch.allclose(theirs(ids).logits, model(ids), atol=1e-5, rtol=0)


def test_a_mix_of_parts_no_library_has_is_refused(tmp_path):
    from llmbook.export import export_hf

    cfg = GPTConfig(vocab_size=300, context_length=16, emb_dim=16, n_heads=2,
                    n_layers=1, drop_rate=0.0, norm="rmsnorm")  # fmt: skip
    with pytest.raises(ValueError, match="no transformers architecture"):
        export_hf(GPTModel(cfg), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_text_streams_whole_characters_and_stops_before_a_stop_string():
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode("Café 🙂 ok\n\n### Instruction:\nmore")
    stream = TextStream(tokenizer, stop=[NEXT_TURN])
    pieces = [stream.add(i) for i in ids]
    assert "".join(pieces) + stream.finish() == "Café 🙂 ok"
    assert all("\ufffd" not in piece for piece in pieces) and stream.stopped
    unstopped = TextStream(tokenizer, stop=["zzz"])
    text = "".join(unstopped.add(i) for i in ids) + unstopped.finish()
    assert text == tokenizer.decode(ids)


def test_a_conversation_drops_its_oldest_turns_and_never_the_question():
    tokenizer = gpt2_tokenizer()
    turns = [(f"Question {i}?", f"Answer {i}.") for i in range(10)]
    ids, dropped = fit_conversation(tokenizer, turns, "Last?", 100, 20)
    assert 0 < dropped < 10 and len(ids) + 20 <= 100
    assert tokenizer.decode(ids).endswith("Last?\n\n### Response:\n")
    assert f"Question {dropped}?" in tokenizer.decode(ids)
    with pytest.raises(ValueError, match="context"):
        fit_conversation(tokenizer, [], "word " * 200, 100, 20)


def test_leaving_a_stream_early_ends_the_generation():
    cfg = GPTConfig(vocab_size=50257, context_length=512, emb_dim=16, n_heads=2,
                    n_layers=1, drop_rate=0.0)  # fmt: skip
    model, seen = GPTModel(cfg), []
    model.out_head.register_forward_hook(lambda *_: seen.append(1))
    answer = Answer()
    for _ in stream_answer(model, gpt2_tokenizer(), [1, 2], 400, answer):
        break
    time.sleep(0.2)
    assert len(seen) < 10 and answer.finish_reason is None


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_chat_under_a_terminal_streams_stops_with_ctrl_c_and_quits(tmp_path):
    """A random model that never says <|endoftext|> answers for as long as it may:
    long enough to be stopped with Ctrl-C, as a person at a terminal would."""
    import pty

    from llmbook.checkpoint import save_model

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, context_length=4096, emb_dim=16, n_heads=2,
                    n_layers=1, drop_rate=0.0)  # fmt: skip
    model = GPTModel(cfg)
    with torch.no_grad():
        model.out_head.weight[50256] = 0.0  # no end of text: a logit of 0 never wins
    save_model(model, tmp_path / "model.safetensors", metadata={"tokenizer": "gpt2"})
    args = [*COMMAND, "chat", "--checkpoint", str(tmp_path), "--device", "cpu",
            "--max-new-tokens", "3000"]  # fmt: skip
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the command, with the terminal as its stdin and stdout
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background run ignores it
        os.execv(sys.executable, args)
    output = b""

    def read_until(marker: bytes, timeout: float = 60) -> bytes:
        nonlocal output
        end = time.monotonic() + timeout
        while marker not in output and time.monotonic() < end:
            if select.select([terminal], [], [], 0.2)[0]:
                try:
                    output += os.read(terminal, 4096)
                except OSError:
                    break
        assert marker in output, output[-500:]
        found = output[: output.index(marker) + len(marker)]
        output = output[len(found) :]
        return found

    try:
        read_until(b">> ")
        os.write(terminal, b"Tell me a long story.\n")
        read_until(b"story.\r\n")  # the terminal echoes the line
        first = read_until(b" ")  # the answer has begun: it streams
        assert b">> " not in first
        os.write(terminal, b"\x03")  # Ctrl-C
        stopped = read_until(b">> ")  # back at the prompt, not out of the chat
        assert b"(stopped)" in stopped
        os.write(terminal, b"/quit\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
