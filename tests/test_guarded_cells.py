"""The book's guarded cells, run on stand-ins.

A cell marked `pytest.mark.skipif` needs something the test machines lack: a CUDA GPU,
GPT-2's downloaded weights, or a judge model served on localhost. pytest-codeblocks
skips it, so nothing would notice if its code broke or its printed output drifted. Here
every such cell runs on a stand-in instead: the CPU for the GPU, a tiny random GPT-2
saved in Hugging Face's format for the weights, a loopback server for the judge, and
fewer epochs and smaller models where the real run would take hours on a CPU. The
numbers it prints differ from the page's, but the printout must have the page's shape:
the same lines and words, with only numbers, True/False and quoted texts free to differ.
"""

import http.server
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import llmbook.weights

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUARD = re.compile(r"^(\s*)<!--pytest\.mark\.skipif\(.*\)-->$")
EXPECTED = "<!--pytest-codeblocks:expected-output-->"

# page -> [(a line of the cell that identifies it, [(old, new), ...]), ...]
# Each replacement must occur in the cell, so a stand-in cannot silently go stale.
ON_CPU = [('"cuda"', '"cpu"')]
STAND_INS: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {
    "index.md": [("x = torch.arange(6.0", ON_CPU)],
    "07-pretraining.md": [
        (
            'model = GPTModel(GPTConfig.preset("gpt2-small", context_length=256))',
            [
                *ON_CPU,
                (
                    'preset("gpt2-small", context_length=256)',
                    'preset("debug", context_length=256)',
                ),
                ("num_epochs=10", "num_epochs=1"),
            ],
        ),
        ('prompt = torch.tensor([tokenizer.encode("Every portrait', ON_CPU),
        ("losses.append(calc_loss_loader(loader, model, device))", ON_CPU),
    ],
    "08-finetuning-classification.md": [
        (
            'folder = download_gpt2("gpt2-small")',
            [*ON_CPU, ("num_epochs=5", "num_epochs=1")],
        ),
    ],
    "09-finetuning-instructions.md": [
        (
            'folder = download_gpt2("gpt2-medium")',
            [
                *ON_CPU,
                (
                    "train, val, test = load_instruction_splits()",
                    "train, val, test = (s[:16] for s in load_instruction_splits())",
                ),
                ("num_epochs=2, eval_freq=20", "num_epochs=1, eval_freq=1"),
                ("max_new_tokens=128", "max_new_tokens=8"),
            ],
        ),
        ("result = score_responses(", [("http://localhost:11434", "JUDGE_URL")]),
    ],
    # the weights come from the `tiny_qwen3` fixture, through download_hub
    "10-modern-llm.md": [('folder = download_hub("qwen3-0.6b")', [])],
    "11-preference-tuning.md": [
        (
            'folder = download_gpt2("gpt2-medium")',
            [
                *ON_CPU,
                (
                    "train, val, test, left_out = load_preference_splits()",
                    "train, val, test, left_out = load_preference_splits()\n"
                    "train, val, test = train[:16], val[:8], test[:8]",
                ),
            ],
        ),
    ],
    "appendix-a-pytorch.md": [('device = torch.device("cuda")', ON_CPU)],
    "appendix-c-making-it-fast.md": [
        (
            'GPTConfig.preset("gpt2-small", tie_weights=True)',
            [
                *ON_CPU,
                (
                    'preset("gpt2-small", tie_weights=True)',
                    'preset("debug", context_length=128, tie_weights=True)',
                ),
                ("max_length=1024, stride=1024", "max_length=128, stride=128"),
                ("num_epochs=20", "num_epochs=1"),  # 10 steps
                ("bf16=True", "bf16=False"),  # bfloat16 on a CPU is slow
                ("compile=True", "compile=False"),  # compiling alone takes a minute
            ],
        ),
    ],
}


@dataclass
class Cell:
    page: str
    line: int  # of the guard, 1-based
    code: str
    expected: str | None


def guarded_cells() -> list[Cell]:
    cells = []
    for page in sorted(DOCS.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            match = GUARD.match(line)
            if not match or lines[i + 1].strip() != "```python":
                continue
            indent = len(match.group(1))
            end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
            code = "\n".join(text[indent:] for text in lines[i + 2 : end]) + "\n"
            expected = None
            after = next(
                (j for j in range(end + 1, len(lines)) if lines[j].strip()), None
            )
            if after is not None and lines[after].strip() == EXPECTED:
                close = next(
                    j for j in range(after + 2, len(lines)) if lines[j].strip() == "```"
                )
                body = [text[indent:] for text in lines[after + 2 : close]]
                expected = "\n".join(body) + "\n" if body else ""
            cells.append(Cell(page.name, i + 1, code, expected))
    return cells


CELLS = guarded_cells()


def stand_in_for(cell: Cell) -> list[tuple[str, str]]:
    matches = [
        replacements
        for key, replacements in STAND_INS.get(cell.page, [])
        if key in cell.code
    ]
    assert len(matches) == 1, (
        f"{cell.page}, line {cell.line}: a guarded cell needs exactly one stand-in in "
        f"STAND_INS (found {len(matches)})"
    )
    return matches[0]


def shape(printed: str) -> list[str]:
    """The printout with numbers, booleans and quoted texts replaced by placeholders."""
    printed = re.sub(r"'[^'\n]*'|\"[^\"\n]*\"", "'…'", printed)
    printed = re.sub(r"\b(True|False)\b", "?", printed)
    printed = re.sub(r"[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?", "#", printed)
    return printed.rstrip("\n").splitlines()


def test_every_guarded_cell_is_found_and_has_an_output_to_check():
    assert len(CELLS) >= 9
    for cell in CELLS:
        stand_in_for(cell)
        assert cell.expected and cell.expected.strip(), (
            f"{cell.page}, line {cell.line}: a guarded cell shows no output"
        )
    known = sum(len(entries) for entries in STAND_INS.values())
    assert known == len(CELLS), "STAND_INS lists a cell the book no longer has"


def test_shape_keeps_words_and_frees_values():
    assert shape("loss 5.04, after epoch 12: True 'a b'\n") == [
        "loss #, after epoch #: ? '…'"
    ]
    assert shape("x 1\n") != shape("y 1\n")


class Judge(http.server.BaseHTTPRequestHandler):
    """A stand-in for Ollama: every answer is the score 40."""

    def do_POST(self):  # noqa: N802 (the name http.server calls)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(
            {"done": True, "message": {"role": "assistant", "content": "40"}}
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def judge_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A random GPT-2 of GPT-2's vocabulary and context, saved as the hub saves it."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    # imported here, not at the top: importing transformers takes seconds, which
    # every test process would pay when it collects this module
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_positions=1024, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A random Qwen 3 and a byte-level BPE of 300 tokens, saved as the hub has
    them: config.json, model.safetensors and tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["The primary colours are red and blue."], trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    Qwen3ForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("cell", CELLS, ids=[f"{c.page}:{c.line}" for c in CELLS])
def test_guarded_cell_runs_on_a_stand_in(
    cell, tmp_path, monkeypatch, tiny_gpt2, tiny_qwen3, judge_url
):
    code = cell.code
    for old, new in stand_in_for(cell):
        assert old in code, (
            f"{cell.page}, line {cell.line}: the stand-in's {old!r} is gone"
        )
        code = code.replace(old, new)
    code = code.replace("JUDGE_URL", judge_url)
    monkeypatch.chdir(tmp_path)  # the files a cell writes or reads stay here
    monkeypatch.setattr(llmbook.weights, "download_gpt2", lambda *a, **k: tiny_gpt2)
    monkeypatch.setattr(llmbook.weights, "download_hub", lambda *a, **k: tiny_qwen3)
    responses = [
        {
            "instruction": "Name a colour.",
            "input": "",
            "output": "Blue.",
            "model_response": "Red.",
        },
    ] * 3
    (tmp_path / "instruction-responses.json").write_text(json.dumps(responses))
    printed: list[str] = []
    namespace = {"__name__": "__main__", "print": _recorder(printed)}
    exec(compile(code, f"{cell.page}:{cell.line}", "exec"), namespace)
    assert cell.expected is not None
    assert shape("".join(printed)) == shape(cell.expected)


def _recorder(printed: list[str]):
    def record(*args, sep=" ", end="\n", file=None, flush=False):
        printed.append(sep.join(str(arg) for arg in args) + end)

    return record
