"""The `llmbook` command on tiny settings: through `main` in this process, and as a
user runs it, in a process of its own, where that matters (signals, exit codes, the
installed script). Appendix A's cell runs `llmbook pretrain` under torchrun."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmbook.bpe import BPETokenizer
from llmbook.checkpoint import load_model
from llmbook.classify import (
    add_classification_head,
    classifier_settings,
    classify,
    load_classifier,
    save_classifier,
)
from llmbook.cli import main
from llmbook.cli.common import CommandError, load_tokenizer, read_texts
from llmbook.cli.generate import TokenPrinter
from llmbook.data import data_file
from llmbook.generate import generate

SCRIPT = Path(sys.executable).with_name("llmbook")  # the installed console script
COMMAND = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "llmbook"]
# A small model with its own small BPE, so that every run takes seconds.
TINY = ["--preset", "debug", "--tokenizer", "bpe:300", "--batch-size", "4"]
TINY += ["--device", "cpu", "--quiet", "--seed", "7", "--eval-batches", "2"]


def llmbook(*args, cwd=None, env=None, check=None) -> subprocess.CompletedProcess:
    """Run `llmbook ARGS` and return what it did; `check` is the exit code it must
    end with (and then a failure shows its stderr)."""
    result = subprocess.run(
        [*COMMAND, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    if check is not None:
        assert result.returncode == check, result.stderr
    return result


def command(*args, cwd=None, env=None, check=None) -> subprocess.CompletedProcess:
    """`llmbook ARGS` run in this process, through the `main` that the console script
    calls, with what it prints captured: as `llmbook(...)` does, without the 3 s that
    a new process spends importing PyTorch and its compiler. (A real process is kept
    for what needs one: signals, the installed script and its exit codes.)"""
    argv = [str(arg) for arg in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        code = main(argv)
    result = subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
    if check is not None:
        assert result.returncode == check, result.stderr
    return result


@pytest.fixture(scope="module")
def verdict() -> Path:
    return data_file("the-verdict.txt")


@pytest.fixture(scope="module")
def run(tmp_path_factory, verdict) -> Path:
    """A finished pretraining run, context 256 (instruction prompts fit)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    command(
        "pretrain",
        verdict,
        "--out",
        out,
        *TINY,
        "--context-length",
        256,
        "--max-steps",
        6,
        "--eval-freq",
        3,
        "--checkpoint-every",
        3,
        check=0,
    )
    return out


def test_every_command_explains_itself_with_defaults_and_an_example(capsys):
    for command in [
        ["pretrain"],
        ["generate"],
        ["finetune", "classify"],
        ["finetune", "instruct"],
        ["finetune", "prefer"],
        ["classify"],
        ["evaluate"],
    ]:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        shown = capsys.readouterr().out
        assert done.value.code == 0
        assert "(default:" in shown, command
        assert f"example:\n  llmbook {' '.join(command)}" in shown, command
    assert "pretrain" in llmbook("--help", check=0).stdout  # the installed script


def test_text_comes_from_files_folders_globs_and_standard_input(tmp_path, monkeypatch):
    (tmp_path / "notes" / "old").mkdir(parents=True)
    (tmp_path / "notes" / "a.txt").write_text("first")
    (tmp_path / "notes" / "old" / "b.txt").write_text("second")
    (tmp_path / "notes" / "c.md").write_text("not text for training")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"piped")))
    texts = [text for _, text in read_texts(["notes", "notes/*.txt", "-"])]
    assert texts == ["first", "second", "first", "piped"]
    # Issue 34: standard input not UTF-8, or closed; a FIFO, as <(...) gives.
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9")))
    with pytest.raises(CommandError, match="standard input is not UTF-8 text"):
        read_texts(["-"])
    monkeypatch.setattr("sys.stdin", None)
    with pytest.raises(CommandError, match="standard input, but it is closed"):
        read_texts(["-"])
    os.mkfifo(tmp_path / "fifo")
    writer = threading.Thread(target=(tmp_path / "fifo").write_text, args=("fed",))
    writer.start()
    assert [text for _, text in read_texts(["fifo"])] == ["fed"]
    writer.join()
    with pytest.raises(CommandError, match="not a UTF-8 text file"):
        read_texts(["latin1.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CommandError, match="no .txt file"):
        read_texts(["empty"])
    with pytest.raises(CommandError, match="no such file, folder or pattern"):
        read_texts(["*.csv"])


def test_pretraining_writes_model_checkpoints_settings_and_a_loss_plot(run):
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock",  # held while a command writes the folder
        "checkpoints",
        "history.json",
        "losses.svg",
        "metrics.jsonl",  # a line per evaluation, as it is made
        "model.safetensors",
        "run.json",
        "tokenizer.json",
    ]
    assert (run / "losses.svg").read_text().startswith("<?xml")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [line["step"] for line in lines] == [3, 6]
    assert all(line["tokens_per_s"] > 0 for line in lines)
    assert (run / "checkpoints" / "latest").read_text() == "step-00000006"
    history = json.loads((run / "history.json").read_text())
    assert history["steps"] == [3, 6] and history["train_losses"][1] < 6.0
    assert [line["val_loss"] for line in lines] == history["val_losses"]
    settings = json.loads((run / "run.json").read_text())
    assert settings["kind"] == "pretraining" and settings["finished_step"] == 6
    assert settings["tokenizer"] == "tokenizer.json"
    assert settings["settings"]["context_length"] == 256
    assert settings["model"]["context_length"] == 256
    model = load_model(run / "model.safetensors")
    assert model.cfg.vocab_size == load_tokenizer("tokenizer.json", run).vocab_size


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, verdict):
    common = [verdict, *TINY, "--context-length", 32, "--eval-freq", 2]
    common += ["--checkpoint-every", 3]
    command("pretrain", *common, "--out", tmp_path / "whole", "--max-steps", 8, check=0)
    # Stopped after 4 steps (its last checkpoint is step 3), then continued.
    command("pretrain", *common, "--out", tmp_path / "cut", "--max-steps", 4, check=0)
    resumed = command(
        "pretrain",
        "--out",
        tmp_path / "cut",
        "--resume",
        "--max-steps",
        8,
        "--device",
        "cpu",
        "--quiet",
        check=0,
    )
    assert resumed.stdout.startswith("resuming")
    whole = tensors(tmp_path / "whole" / "model.safetensors")
    cut = tensors(tmp_path / "cut" / "model.safetensors")
    assert whole.keys() == cut.keys()
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    history = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert history["steps"] == [2, 4, 6, 8]  # the run's whole history
    # step 4 was measured before the stop and again after: its line is there once
    metrics = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").open()]
    assert [line["step"] for line in metrics] == [2, 4, 6, 8]
    assert [line["val_loss"] for line in metrics] == history["val_losses"]


# `llmbook`, in a process of its own, that presses Ctrl-C itself (sends itself SIGINT)
# as soon as its first checkpoint is on disk: the same interrupt at the same step in
# every run, however fast the machine. Ctrl-C is first made to work as in a terminal:
# a test run started in the background ignores SIGINT, and its children inherit that.
CTRL_C_AFTER_FIRST_CHECKPOINT = """
import os, signal
signal.signal(signal.SIGINT, signal.default_int_handler)
import llmbook.train
from llmbook.cli import run

save = llmbook.train.save_checkpoint

def save_then_ctrl_c(*args, **kwargs):
    llmbook.train.save_checkpoint = save
    saved = save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGINT)
    return saved

llmbook.train.save_checkpoint = save_then_ctrl_c
run()
"""


def pretrain_with(script: str, *args) -> subprocess.CompletedProcess:
    """`llmbook pretrain ARGS` in a process of its own, started by `script`, which
    arranges for a Ctrl-C at some moment; the process must end as Ctrl-C ends it."""
    stopped = subprocess.run(
        [sys.executable, "-c", script, "pretrain", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == 130, stopped.stderr
    return stopped


def test_ctrl_c_stops_at_a_checkpoint_and_the_hint_finishes_the_run(tmp_path, verdict):
    out = tmp_path / "run"
    settings = [*TINY, "--context-length", 32, "--max-steps", 20]
    settings += ["--eval-freq", 1000, "--checkpoint-every", 5]
    stopped = pretrain_with(
        CTRL_C_AFTER_FIRST_CHECKPOINT, verdict, "--out", out, *settings
    )
    assert "Traceback" not in stopped.stderr
    hint = f"continue with: llmbook pretrain --out {out} --resume"
    assert stopped.stderr.rstrip().endswith(hint)
    # Ctrl-C waits for the end of the step under way, 6, which is saved
    assert (out / "checkpoints" / "latest").read_text() == "step-00000006"
    assert not (out / "model.safetensors").exists()
    # The hint as given: the run keeps its own length and checkpoint interval.
    command("pretrain", "--out", out, "--resume", check=0)
    assert (out / "checkpoints" / "latest").read_text() == "step-00000020"
    assert (out / "model.safetensors").is_file()


# Ctrl-C in the first batch of a run that would make its first checkpoint at step 100.
CTRL_C_IN_THE_FIRST_BATCH = """
import os, signal
signal.signal(signal.SIGINT, signal.default_int_handler)
import llmbook.train
from llmbook.cli import run

loss = llmbook.train.calc_loss_batch

def ctrl_c_then_loss(*args):
    llmbook.train.calc_loss_batch = loss
    os.kill(os.getpid(), signal.SIGINT)
    return loss(*args)

llmbook.train.calc_loss_batch = ctrl_c_then_loss
run()
"""


def test_ctrl_c_before_the_first_checkpoint_loses_one_step_at_most(tmp_path, verdict):
    out = tmp_path / "run"
    settings = [*TINY, "--context-length", 32, "--max-steps", 6]
    settings += ["--eval-freq", 1000, "--checkpoint-every", 100]
    stopped = pretrain_with(CTRL_C_IN_THE_FIRST_BATCH, verdict, "--out", out, *settings)
    assert "continue with: llmbook pretrain --out" in stopped.stderr
    assert (out / "checkpoints" / "latest").read_text() == "step-00000001"
    command("pretrain", "--out", out, "--resume", check=0)
    whole = tmp_path / "whole"
    command("pretrain", verdict, "--out", whole, *settings, check=0)
    assert (
        tensors(out / "model.safetensors").keys()
        == tensors(whole / "model.safetensors").keys()
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            tensors(out / "model.safetensors").values(),
            tensors(whole / "model.safetensors").values(),
            strict=True,
        )
    )  # the stopped and resumed run ends as an uninterrupted one


def test_mistakes_end_in_one_line_with_code_2_for_usage_and_1_for_failures(
    tmp_path, run, verdict, capsys, monkeypatch
):
    monkeypatch.setenv("LLMBOOK_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("Too short.")
    (tmp_path / "bad.json").write_text('[{"instruction": "Say hi", "output": 5}]')
    (tmp_path / "typed.json").write_text('{"emb_dim": "wide"}')
    (tmp_path / "bpe.json").write_text('{"ranks": 5}')
    out = tmp_path / "out"
    cases = [
        (["pretrain", tmp_path / "empty.txt", "--out", out], 1, "text is empty"),
        (["pretrain", tmp_path / "short.txt", "--out", out, *TINY], 1, "too short"),
        (["pretrain", verdict, "--out", out, "--preset", "huge"], 2, "invalid choice"),
        (["pretrain", verdict, "--out", run], 2, "add --resume"),
        (["pretrain", "--out", out, "--resume"], 2, "leave out --resume to start"),
        (["pretrain", verdict, "--out", ""], 2, "--out: an empty path"),
        (["classify", "--checkpoint", " ", "Hi"], 2, "--checkpoint: an empty path"),
        (["pretrain", "--out", run, "--resume", "--lr", "0.1"], 2, "the run has --lr"),
        (["pretrain", verdict, "--out", out, "--batch-size", "0"], 2, "must be >= 1"),
        (
            ["pretrain", verdict, "--out", out, *TINY, "--batch-size", "100000"],
            1,
            "fewer than one batch of --batch-size 100000",
        ),
        (["pretrain", verdict, "--out", out, "--lr", "nan"], 2, "must be a finite"),
        (["pretrain", verdict, "--out", out, "--val-share", "1"], 2, "must be < 1.0"),
        (["pretrain", verdict, "--out", out, "--seed", "1" + "0" * 20], 2, "must be <"),
        (["pretrain", verdict, "--out", out, "--config", verdict], 1, "--config"),
        (
            ["pretrain", verdict, "--out", out, "--config", tmp_path / "typed.json"],
            1,
            "emb_dim must be an int",
        ),
        (
            ["pretrain", verdict, "--out", out, "--tokenizer", tmp_path / "bpe.json"],
            1,
            "not a tokenizer file that llmbook wrote",
        ),
        (["generate", "--checkpoint", out / "no", "--prompt", "x"], 1, "no such file"),
        (["generate", "--checkpoint", run, "--prompt", ""], 2, "--prompt is empty"),
        (["generate", "--prompt", "x"], 2, "one of the arguments"),
        (
            [
                "finetune",
                "classify",
                "--data",
                verdict,
                "--checkpoint",
                run,
                "--out",
                out,
            ],
            1,
            "no tab after the label",
        ),
        (
            ["finetune", "instruct", "--data", out / "no"]
            + ["--checkpoint", run, "--out", out],
            1,
            "no such file",
        ),
        (
            ["finetune", "instruct", "--data", tmp_path / "bad.json"]
            + ["--checkpoint", run, "--out", out],
            1,
            "bad.json: entry 0 has no 'output' text",
        ),
        (["classify", "--checkpoint", run, "Hello"], 1, "holds no classifier"),
        (["evaluate", "--responses", verdict], 1, "not JSON"),
        (["evaluate", "--data", verdict], 2, "give --responses"),
    ]
    for args, code, message in cases:
        assert main([str(arg) for arg in args]) == code, args
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, lines)
        assert message in lines[0], (args, lines[0])
    assert not out.exists()  # no failed command left anything behind
    # The same, as a user meets them: one line and the exit code, no traceback.
    for args, code, message in [
        (["pretrain", tmp_path / "missing.txt", "--out", out], 1, "no such file"),
        (
            ["generate", "--checkpoint", run, "--prompt", "x", "--temperature", "-1"],
            2,
            "must be >= 0",
        ),
    ]:
        result = llmbook(*args)
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert result.stderr.count("\n") == 1
    alone = llmbook()
    assert alone.returncode == 2 and "commands:" in alone.stderr


def test_a_bug_shows_its_traceback_and_a_setup_problem_one_line(monkeypatch, capsys):
    """A TypeError in the code is not the user's mistake: main lets it through.
    A SetupError (a data file, a cache, a judge, torchrun) is reported in one line."""
    import llmbook.cli.generate as generate_module
    from llmbook.files import SetupError

    def broken(args):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(generate_module, "generate_command", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["generate", "--checkpoint", "x", "--prompt", "y"])

    def unset(args):
        raise SetupError("the torchrun environment is half set")

    monkeypatch.setattr(generate_module, "generate_command", unset)
    assert main(["generate", "--checkpoint", "x", "--prompt", "y"]) == 1
    assert capsys.readouterr().err == "error: the torchrun environment is half set\n"


def test_a_step_folder_is_a_model_with_its_runs_tokenizer(run, capsys):
    step = run / "checkpoints" / "step-00000006"
    greedy = ["--prompt", "I had", "--temperature", 0, "--device", "cpu"]
    from_step = command("generate", "--checkpoint", step, *greedy, check=0)
    assert from_step.stdout == command("generate", "--checkpoint", run, *greedy).stdout
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("llmbook 0.")


def test_generate_prints_what_the_library_generates(run):
    sampling = ["--max-new-tokens", 12, "--temperature", 1.5, "--top-k", 20]
    asked = ["generate", "--checkpoint", run, "--prompt", "I had", *sampling]
    result = command(*asked, "--seed", 5, "--device", "cpu", check=0)
    model = load_model(run / "model.safetensors").eval()
    tokenizer = load_tokenizer("tokenizer.json", run)
    ids = tokenizer.encode("I had", allowed_special={"<|endoftext|>"})
    eos = tokenizer.special_tokens["<|endoftext|>"]
    generator = torch.Generator().manual_seed(5)
    row = generate(model, torch.tensor([ids]), 12, 256, 1.5, 20, eos, generator)[0]
    expected = tokenizer.decode([i for i in row.tolist() if i != eos])
    assert result.stdout == expected + "\n"
    # The same seed gives the same text again; another seed, another text.
    assert command(*asked, "--seed", 5, check=0).stdout == result.stdout
    assert command(*asked, "--seed", 6, check=0).stdout != result.stdout


def test_several_prompts_are_continued_in_a_batch_as_each_would_be_alone(run, tmp_path):
    """Issue 38: a batch of prompts of different lengths, with weights in int8, from
    --prompt and --prompts-file (blank lines skipped), printed as JSON lines."""
    greedy = ["--max-new-tokens", 6, "--temperature", 0, "--dtype", "int8"]
    base = ["generate", "--checkpoint", run, *greedy, "--device", "cpu"]
    texts = tmp_path / "prompts.txt"
    texts.write_text("It was the\n\nShe had\n", encoding="utf-8")
    result = command(
        *base, "--prompt", "I", "--prompts-file", texts, "--jsonl", check=0
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prompt"] for line in lines] == ["I", "It was the", "She had"]
    for line in lines:
        alone = command(*base, "--prompt", line["prompt"], check=0).stdout
        assert alone == line["prompt"] + line["text"] + "\n"
    # batches of one give the same, and plain text puts a blank line between texts
    plain = command(*base, "--prompt", "I", "--prompts-file", texts, "--batch-size", 1)
    expected = "\n\n".join(line["prompt"] + line["text"] for line in lines)
    assert plain.returncode == 0 and plain.stdout == expected + "\n"


def test_generate_refuses_prompts_it_cannot_use(run, tmp_path):
    base = ["generate", "--checkpoint", run, "--device", "cpu"]
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    cases = [
        ([], "give a text to continue: --prompt TEXT or --prompts-file"),
        (["--prompts-file", blank], "give a text to continue"),
        (["--prompt", ""], "--prompt is empty"),
        (["--prompts-file", tmp_path / "none.txt"], "--prompts-file: cannot read it"),
        (["--prompt", "x", "--dtype", "int4"], "invalid choice: 'int4'"),
    ]
    for extra, message in cases:
        result = command(*base, *extra)
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_tokens_are_printed_one_by_one_as_they_come(run):
    model = load_model(run / "model.safetensors").eval()
    tokenizer = load_tokenizer("tokenizer.json", run)

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass

    out = Recorder()
    ids = tokenizer.encode("It was")
    printer = TokenPrinter(tokenizer, None, out)
    row = generate(model, torch.tensor([ids]), 10, 256, on_token=printer.add)[0]
    printer.finish()
    pieces = [w for w in out.writes if w]
    assert len(pieces) >= 5  # one write a token, not one at the end
    assert "".join(out.writes) == tokenizer.decode(row[len(ids) :].tolist()) + "\n"
    # The same without the cache: generate calls on_token, however it runs the model.
    out.writes.clear()
    printer = TokenPrinter(tokenizer, None, out)
    plain = generate(
        model, torch.tensor([ids]), 10, 256, use_cache=False, on_token=printer.add
    )[0]
    printer.finish()
    assert torch.equal(plain, row) and len([w for w in out.writes if w]) >= 5


def test_generate_from_gpt2_weights_in_the_download_cache(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    folder = tmp_path / "gpt2" / "gpt2-small"  # where download_gpt2 looks first
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    result = command(
        "generate",
        "--gpt2",
        "gpt2-small",
        "--prompt",
        "Hello world",
        "--max-new-tokens",
        4,
        "--temperature",
        0,
        "--device",
        "cpu",
        env={"LLMBOOK_CACHE_DIR": str(tmp_path)},
        check=0,
    )
    assert result.stdout.startswith("Hello world") and len(result.stdout) > 12


def test_finetune_a_classifier_then_label_texts(tmp_path, run):
    lines = data_file("SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    (tmp_path / "sms.tsv").write_text("\n".join(lines[:80]) + "\n", encoding="utf-8")
    result = command(
        "finetune",
        "classify",
        "--data",
        tmp_path / "sms.tsv",
        "--checkpoint",
        run,
        "--out",
        tmp_path / "spam",
        "--epochs",
        2,
        "--eval-freq",
        5,
        "--device",
        "cpu",
        "--quiet",
        check=0,
    )
    assert "test accuracy" in result.stdout
    assert re.search(r"^80 texts of 2 classes: ham \d+, spam \d+$", result.stdout, re.M)
    accuracy = json.loads((tmp_path / "spam" / "accuracy.json").read_text())
    assert set(accuracy) == {"training", "validation", "test", "majority_baseline"}
    assert "the yardstick: always answering 'ham'" in result.stdout
    header = (
        r"^\d+ training, \d+ validation and \d+ test texts, each read as \d+ tokens$"
    )
    assert re.search(header, result.stdout, re.M)
    texts = ["WINNER! Claim your free prize now", "See you at the station at six"]
    labelled = command(
        "classify",
        "--checkpoint",
        tmp_path / "spam",
        *texts,
        "--device",
        "cpu",
        check=0,
    )
    rows = [line.split("\t") for line in labelled.stdout.splitlines()]
    assert [row[2] for row in rows] == texts
    assert {row[0] for row in rows} <= {"ham", "spam"}
    assert all(0.5 <= float(row[1]) <= 1.0 for row in rows)
    with pytest.MonkeyPatch.context() as patch:  # `-`: a text a line of stdin
        piped_in = ("\n".join(texts) + "\n\n").encode()
        patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(piped_in)))
        piped = command("classify", "--checkpoint", tmp_path / "spam", "-", check=0)
    assert piped.stdout == labelled.stdout
    # A classifier is not a text generator: the command says what to use.
    wrong = command("generate", "--checkpoint", tmp_path / "spam", "--prompt", "Hi")
    assert wrong.returncode == 1 and "llmbook classify" in wrong.stderr
    # A text longer than the classifier's input is refused, or cut when asked.
    settings = classifier_settings(tmp_path / "spam" / "classifier.safetensors")
    long_text = "call me now " * settings["max_length"]
    refused = command("classify", "--checkpoint", tmp_path / "spam", long_text)
    assert refused.returncode == 1 and "pass truncate=True" not in refused.stderr
    assert "--truncate" in refused.stderr
    cut = command(
        "classify", "--checkpoint", tmp_path / "spam", "--truncate", long_text, check=0
    )
    assert f"(first {settings['max_length']} tokens)" in cut.stdout


def test_classifier_files_are_the_same_for_the_library_and_the_command_line(
    tmp_path, run
):
    """A classifier written by `llmbook finetune classify` loads with chapter 8's
    `load_classifier`, and one written by `save_classifier` labels texts with
    `llmbook classify`."""
    lines = data_file("SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    (tmp_path / "sms.tsv").write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    command(
        "finetune",
        "classify",
        "--data",
        tmp_path / "sms.tsv",
        "--checkpoint",
        run,
        "--out",
        tmp_path / "cli",
        "--epochs",
        1,
        "--device",
        "cpu",
        "--quiet",
        check=0,
    )
    from_cli = tmp_path / "cli" / "classifier.safetensors"
    settings = classifier_settings(from_cli)
    assert settings["labels"] == ["ham", "spam"]
    assert settings["tokenizer"] == "tokenizer.json"  # the run's BPE, copied beside it
    model = load_classifier(from_cli)
    tokenizer = load_tokenizer(settings["tokenizer"], from_cli.parent)
    label, probability = classify(
        "Free entry, text WIN",
        model,
        tokenizer,
        settings["max_length"],
        settings["pad_token_id"],
    )
    assert label in (0, 1) and 0.5 <= probability <= 1
    # The other way: a classifier the library saves, labelled by the command line.
    base = load_model(Path(run) / "model.safetensors")
    torch.manual_seed(0)
    add_classification_head(base, num_classes=3)
    (tmp_path / "lib").mkdir()
    shutil.copy(Path(run) / "tokenizer.json", tmp_path / "lib" / "tokenizer.json")
    save_classifier(
        base,
        tmp_path / "lib" / "three.safetensors",
        labels=["a", "b", "c"],
        tokenizer="tokenizer.json",
        max_length=16,
        pad_token_id=0,
    )
    labelled = command(
        "classify",
        "--checkpoint",
        tmp_path / "lib" / "three.safetensors",
        "some text",
        "--device",
        "cpu",
        check=0,
    )
    label, probability, text = labelled.stdout.rstrip("\n").split("\t")
    assert label in {"a", "b", "c"} and text == "some text"
    expected = classify(
        "some text",
        base.eval(),
        load_tokenizer("tokenizer.json", tmp_path / "lib"),
        16,
        0,
    )
    assert label == "abc"[expected[0]] and float(probability) == pytest.approx(
        expected[1], abs=0.006
    )


class Judge(http.server.BaseHTTPRequestHandler):
    """A stand-in for an Ollama server: it gives every answer 70 of 100."""

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        request = json.loads(self.rfile.read(length))
        assert request["messages"][0]["role"] == "user"
        body = json.dumps({"message": {"content": "Score: 70"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_preference_tuning_leaves_out_pairs_without_a_preference(tmp_path, run):
    name = "instruction-data-with-preference.json"
    entries = [  # short ones: a prompt and its longer answer fit the context of 256
        e
        for e in json.loads(data_file(name).read_text("utf-8"))
        if len(e["instruction"] + e["input"] + max(e["chosen"], e["rejected"], key=len))
        < 150
    ][:40]
    entries[3]["rejected"] = entries[3]["chosen"]  # no preference
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(entries))
    out = tmp_path / "polite"
    options = ["--batch-size", 4, "--lr", 1e-3, "--eval-freq", 4, "--device", "cpu"]
    done = command(
        "finetune",
        "prefer",
        "--data",
        data,
        "--checkpoint",
        run,
        "--out",
        out,
        *options,
        "--quiet",
        check=0,
    )
    assert "left out 1 pair(s) whose two answers are the same (entry 3)" in done.stdout
    assert re.search(
        r"ranks first: 50% before, \d+% after \(chance: 50%\)", done.stdout
    )
    assert json.loads((out / "run.json").read_text())["kind"] == "preference"
    command(
        "generate",
        "--checkpoint",
        out,
        "--prompt",
        "Hi",
        "--max-new-tokens",
        3,
        "--device",
        "cpu",
        check=0,
    )
    long = r"\d+ tokens with its chosen answer, more than the 256 the model reads"
    for chosen, message in [
        ("", "entry 5: its 'chosen' is empty"),
        ("Yes. " * 200, f"entry 5 has {long}; shorten it or leave it out"),
    ]:
        entries[5] = {**entries[5], "chosen": chosen}
        data.write_text(json.dumps(entries))
        failed = command("finetune", "prefer", "--data", data, "--checkpoint", run,
                         "--out", tmp_path / "other", *options, check=1)  # fmt: skip
        assert re.fullmatch(
            f"error: {re.escape(str(data))}: {message}\n", failed.stderr
        )
        assert not (tmp_path / "other" / "model.safetensors").exists()


def test_finetune_on_instructions_then_evaluate_with_a_judge(tmp_path, run):
    entries = json.loads(data_file("instruction-data.json").read_text("utf-8"))
    (tmp_path / "tasks.json").write_text(json.dumps(entries[:40]), encoding="utf-8")
    command(
        "finetune",
        "instruct",
        "--data",
        tmp_path / "tasks.json",
        "--checkpoint",
        run,
        "--out",
        tmp_path / "chat",
        "--epochs",
        1,
        "--eval-freq",
        2,
        "--max-new-tokens",
        4,
        "--device",
        "cpu",
        "--quiet",
        check=0,
    )
    answers = json.loads((tmp_path / "chat" / "test-responses.json").read_text())
    assert len(answers) == 2 and all("model_response" in a for a in answers)
    server = http.server.HTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        result = command(
            "evaluate",
            "--responses",
            tmp_path / "chat" / "test-responses.json",
            "--judge-url",
            url,
            "--out",
            tmp_path / "scored.json",
            check=0,
        )
    finally:
        server.shutdown()
    assert "ROUGE-L: " in result.stdout
    assert "mean 70.0 of 100" in result.stdout
    scored = json.loads((tmp_path / "scored.json").read_text())
    assert [entry["judge_score"] for entry in scored] == [70, 70]


def test_lora_gradient_accumulation_and_bf16_reach_the_finetune(tmp_path, run):
    entries = json.loads(data_file("instruction-data.json").read_text("utf-8"))
    (tmp_path / "tasks.json").write_text(json.dumps(entries[:40]), encoding="utf-8")
    result = command(
        "finetune", "instruct", "--data", tmp_path / "tasks.json", "--checkpoint",
        run, "--out", tmp_path / "lora", "--lora", 2, "--grad-accum", 2, "--bf16",
        "--max-steps", 2, "--eval-freq", 1, "--max-new-tokens", 300, "--device",
        "cpu", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # the test prompts leave less of the context of 256 than 300 tokens
    assert re.search(
        r"test answers stop at \d+ \(--max-new-tokens 300\)", result.stderr
    )
    settings = json.loads((tmp_path / "lora" / "run.json").read_text())["settings"]
    assert (settings["lora"], settings["grad_accum"], settings["bf16"]) == (2, 2, True)
    assert settings["max_steps"] == 2
    base = tensors(run / "model.safetensors")
    tuned = tensors(tmp_path / "lora" / "model.safetensors")  # merged: plain names
    assert tuned.keys() == base.keys()
    assert torch.equal(tuned["tok_emb.weight"], base["tok_emb.weight"])  # frozen
    block = "trf_blocks.0.att.W_query.weight"
    assert not torch.equal(tuned[block], base[block])  # moved by LoRA's update
    lines = (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    # 12 entries leave none for a test part (5%): said, not silent
    tiny = json.dumps(entries[:12])
    (tmp_path / "tiny.json").write_text(tiny, encoding="utf-8")
    small = command(
        "finetune", "instruct", "--data", tmp_path / "tiny.json", "--checkpoint", run,
        "--out", tmp_path / "small", "--batch-size", 2, "--max-steps", 1,
        "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert small.returncode == 0, small.stderr
    assert "too small to leave entries for a test part" in small.stderr


def test_a_toml_config_gives_options_and_the_command_line_wins(tmp_path, verdict):
    (tmp_path / "run.toml").write_text(
        f'text = ["{verdict}"]\npreset = "debug"\ntokenizer = "bpe:300"\n'
        'batch_size = 4\nmax_steps = 2\nlr = 0.5\nquiet = true\ndevice = "cpu"\n'
        "cosine = true\n",
        encoding="utf-8",
    )
    config = ["--config", tmp_path / "run.toml"]
    command("pretrain", "--out", tmp_path / "run", *config, "--lr", 1e-3, check=0)
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["settings"]
    assert (settings["preset"], settings["batch_size"], settings["lr"]) == (
        "debug", 4, 1e-3,
    )  # fmt: skip
    assert settings["cosine"] is True and settings["max_steps"] == 2
    (tmp_path / "model.toml").write_text(
        "[model]\nemb_dim = 16\nn_heads = 2\nn_layers = 1\n", encoding="utf-8"
    )
    small = [verdict, *TINY[2:], "--max-steps", 1]  # TINY without its preset
    done = command("pretrain", "--out", tmp_path / "m", "--config",
                   tmp_path / "model.toml", *small, check=0)  # fmt: skip
    assert (
        json.loads((tmp_path / "m" / "run.json").read_text())["model"]["emb_dim"] == 16
    )
    assert done.stdout.startswith("training a ")
    for line, code, message in [
        ("lr = -1", 2, "lr: must be > 0.0, got -1"),
        (
            "batchsize = 1",
            2,
            "no option is called 'batchsize' (did you mean batch_size",
        ),
        ('out = "x"', 2, "give --out on the command line"),
        ("cosine = 1", 2, "cosine must be true or false"),
        ('preset = "gpt5"', 2, "preset must be one of"),
        ('preset = "mini"\n[model]\nemb_dim = 8', 2, "a preset or a [model], not both"),
        ("[model]\nemb_dim = 32", 1, "GPTConfig's defaults, GPT-2 small's"),
        ("lr = ", 1, "--config"),  # not TOML at all
    ]:
        (tmp_path / "bad.toml").write_text(line + "\n", encoding="utf-8")
        bad = command("pretrain", verdict, "--out", tmp_path / "bad", "--config",
                      tmp_path / "bad.toml", "--tokenizer", "gpt2")  # fmt: skip
        assert bad.returncode == code and message in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()
    # a preset on the command line with options from a file
    both = command("pretrain", "--out", tmp_path / "both", "--config",
                   tmp_path / "run.toml", "--preset", "micro", "--max-steps", 1,
                   "--context-length", 32)  # fmt: skip
    assert both.returncode == 0, both.stderr
    run_json = json.loads((tmp_path / "both" / "run.json").read_text())
    assert run_json["settings"]["preset"] == "micro"
    lines = (tmp_path / "both" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1]  # measured at its end


def test_without_a_preset_a_cpu_gets_a_model_sized_for_it():
    from llmbook.cli import build_parser
    from llmbook.cli.settings import pretrain_settings

    parser = build_parser()
    on = {"cpu": "mini", "cuda": "gpt2-small"}
    for device, preset in on.items():
        args = parser.parse_args(["pretrain", "x", "--out", "y", "--device", device])
        assert pretrain_settings(args, None)["preset"] == preset
    given = parser.parse_args(["pretrain", "x", "--out", "y", "--preset", "debug"])
    assert pretrain_settings(given, None)["preset"] == "debug"


def test_tensorboard_gets_each_evaluation(tmp_path, verdict):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    out = tmp_path / "run"
    command("pretrain", verdict, "--out", out, *TINY, "--context-length", 32,
            "--max-steps", 4, "--eval-freq", 2, "--tensorboard", check=0)  # fmt: skip
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train_loss", "val_loss", "lr", "tokens_per_s"} <= set(
        events.Tags()["scalars"]
    )
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    logged = events.Scalars("val_loss")
    assert [e.step for e in logged] == [line["step"] for line in metrics] == [2, 4]
    assert [e.value for e in logged] == pytest.approx([m["val_loss"] for m in metrics])


def test_two_processes_on_one_out_exactly_one_runs(tmp_path, verdict):
    """Issue 34: two `pretrain`s on one --out both started, and the folder ended
    with one run's settings and the other's model."""
    out = tmp_path / "run"
    first = subprocess.Popen(
        [*COMMAND, "pretrain", str(verdict), "--out", str(out), *map(str, TINY)]
        + ["--context-length", "32", "--max-steps", "100000", "--eval-freq", "1000"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock, manifest_file = out / ".lock", out / "run.json"

        def training() -> bool:  # the folder claimed and its manifest complete
            if not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
                return False
            return manifest_file.is_file() and '"model"' in manifest_file.read_text()

        deadline = time.monotonic() + 120
        while not training():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        manifest = manifest_file.read_text()
        for resume in [[], ["--resume"]]:
            second = command("pretrain", verdict, "--out", out, *TINY, *resume)
            assert second.returncode == 2
            assert second.stderr.splitlines() == [
                f"error: --out {out} is in use by process {first.pid}: wait until it "
                "ends (or stop it), or choose another folder"
            ]
        assert (out / "run.json").read_text() == manifest  # untouched
        assert first.poll() is None  # the first one goes on
    finally:
        first.kill()
        first.wait()


def folder_state(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_no_command_writes_into_a_folder_it_did_not_make(tmp_path, run, verdict):
    """Issue 34: pretrain over an instruction model replaced its model, finetune
    classify --out RUN replaced a pretraining run's history, and so on."""
    before = folder_state(run)
    (tmp_path / "sms.tsv").write_text("ham\tHello there\nspam\tWin now\n" * 10)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (tmp_path / "file").write_text("a file")
    start = ["--checkpoint", run, "--device", "cpu", "--quiet"]
    cases = [
        (["pretrain", verdict, *TINY, "--out", run], "holds a pretraining run already"),
        (
            [
                "finetune",
                "classify",
                "--data",
                tmp_path / "sms.tsv",
                *start,
                "--out",
                run,
            ],
            "holds a pretraining run, not a classifier",
        ),
        (
            ["finetune", "instruct", "--data", verdict, *start, "--out", run],
            "holds a pretraining run, not an instruction model",
        ),
        (
            ["pretrain", verdict, *TINY, "--out", mine],
            "files that no llmbook run wrote",
        ),
        (["pretrain", verdict, *TINY, "--out", tmp_path / "file"], "is a file"),
    ]
    for args, message in cases:
        result = command(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert folder_state(run) == before
    assert folder_state(mine) == {"notes.txt": b"my notes"}
    assert (tmp_path / "file").read_text() == "a file"


def test_a_run_is_whole_and_resumes_from_anywhere(tmp_path, verdict):
    """A run copies its tokenizer and records its configuration: generate and
    --resume work from another folder once the files it started from are gone
    or changed; a --config given again but edited since is refused."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    tokenizer = BPETokenizer().train(verdict.read_text("utf-8")[:5000], vocab_size=300)
    tokenizer.save(here / "bpe.json")
    fields = {"emb_dim": 32, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0}
    (here / "model.json").write_text(json.dumps(fields))
    settings: list = ["--tokenizer", "bpe.json", "--config", "model.json"]
    settings += ["--device", "cpu", "--quiet", "--context-length", 32]
    settings += ["--checkpoint-every", 2]
    command("pretrain", verdict, "--out", "run", *settings, "--max-steps", 2, cwd=here)
    run = here / "run"
    assert (run / "tokenizer.json").read_bytes() == (here / "bpe.json").read_bytes()
    (here / "bpe.json").unlink()
    (here / "model.json").write_text(json.dumps(fields | {"emb_dim": 64}))
    edited = command(
        "pretrain",
        "--out",
        run,
        "--resume",
        "--max-steps",
        4,
        "--config",
        here / "model.json",
        cwd=elsewhere,
    )
    assert edited.returncode == 2 and "model.json has changed" in edited.stderr
    command(
        "pretrain", "--out", run, "--resume", "--max-steps", 4, cwd=elsewhere, check=0
    )
    assert load_model(run / "model.safetensors").cfg.emb_dim == 32
    said = command("generate", "--checkpoint", run, "--prompt", "I had", cwd=elsewhere)
    assert said.returncode == 0 and said.stdout.startswith("I had")


def test_the_length_of_a_resumed_run(tmp_path, verdict):
    """Issue 34: `--resume --max-steps 3` on a run at step 4 re-saved the model, a
    saved --max-steps capped a new --epochs, and a warmup alone pinned the length."""
    out = tmp_path / "run"
    settings = [*TINY, "--context-length", 64, "--warmup-steps", 2]
    settings += ["--checkpoint-every", 2, "--eval-freq", 2]
    command("pretrain", verdict, "--out", out, *settings, "--max-steps", 4, check=0)
    before = folder_state(out)
    for length in [["--max-steps", 3], ["--max-steps", 4], []]:
        refused = command("pretrain", "--out", out, "--resume", *length)
        assert refused.returncode == 2, refused.stderr
        assert "the run is at step 4 already" in refused.stderr
    assert folder_state(out) == before
    longer = command("pretrain", "--out", out, "--resume", "--epochs", 2, check=0)
    steps_an_epoch = int(longer.stdout.split("; ")[1].split()[0])
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["finished_step"] == 2 * steps_an_epoch > 4
    assert manifest["settings"]["max_steps"] is None


def test_a_refused_resume_changes_nothing(tmp_path, verdict):
    """Issue 34's third probe: a cosine run resumed with a new length was refused
    by the checkpoint's schedule after run.json took the new length; a run whose
    `latest` was deleted started afresh over its checkpoints and model."""
    out = tmp_path / "run"
    settings = [*TINY, "--context-length", 64, "--cosine", "--warmup-steps", 1]
    settings += ["--checkpoint-every", 2, "--eval-freq", 2, "--max-steps", 4]
    command("pretrain", verdict, "--out", out, *settings, check=0)
    before = folder_state(out)
    refused = command("pretrain", "--out", out, "--resume", "--max-steps", 6)
    assert refused.returncode == 2, refused.stderr
    assert "--cosine keeps the length it started with (4 steps)" in refused.stderr
    assert folder_state(out) == before
    (out / "checkpoints" / "latest").unlink()  # the newest folder is found without
    again = command("pretrain", "--out", out, "--resume", "--max-steps", 4)
    assert "the run is at step 4 already" in again.stderr
    shutil.rmtree(out / "checkpoints")
    gone = command("pretrain", "--out", out, "--resume", "--max-steps", 8)
    assert gone.returncode == 2 and "holds no checkpoint to continue" in gone.stderr
    assert (out / "model.safetensors").is_file()


def test_errors_of_the_os_read_as_words():
    """No `[Errno 28]` reaches the terminal; a full disk says what to do."""
    from llmbook.cli.common import one_line

    full = OSError(28, "No space left on device")
    assert one_line(full) == (
        "No space left on device; free some space, then run the command again "
        "(with --resume where a run saved a checkpoint)"
    )
    offline = ValueError(
        "could not download https://x.org/a (<urlopen error [Errno -3] Temporary "
        "failure in name resolution>)"
    )
    assert one_line(offline) == (
        "could not download https://x.org/a (Temporary failure in name resolution)"
    )
    rust = OSError("could not write m.safetensors (I/O error: disk full (os error 28))")
    assert one_line(rust) == "could not write m.safetensors (I/O error: disk full)"


def test_finetuning_checks_every_entry_first_and_resumes_after_ctrl_c(tmp_path, run):
    entries = json.loads(data_file("instruction-data.json").read_text("utf-8"))[:40]
    long = dict(entries[0], output="word " * 400)
    (tmp_path / "long.json").write_text(
        json.dumps([*entries[:30], long, *entries[30:]])
    )
    start = ["--checkpoint", run, "--device", "cpu", "--quiet", "--max-new-tokens", 2]
    refused = command(
        "finetune",
        "instruct",
        "--data",
        tmp_path / "long.json",
        *start,
        "--out",
        tmp_path / "chat",
    )
    assert refused.returncode == 1
    assert "long.json: entry 30 has" in refused.stderr
    assert "more than the 256 the model reads" in refused.stderr
    assert not (tmp_path / "chat").exists()
    (tmp_path / "tasks.json").write_text(json.dumps(entries))
    common = ["--data", tmp_path / "tasks.json", *start, "--epochs", 2]
    common += ["--checkpoint-every", 2, "--eval-freq", 2]
    whole = tmp_path / "whole"
    command("finetune", "instruct", *common, "--out", whole, check=0)
    cut = tmp_path / "cut"
    stopped = subprocess.run(
        [sys.executable, "-c", CTRL_C_AFTER_FIRST_CHECKPOINT, "finetune", "instruct"]
        + [str(arg) for arg in [*common, "--out", cut]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == 130, stopped.stderr
    hint = f"continue with: llmbook finetune instruct --out {cut} --resume"
    assert stopped.stderr.rstrip().endswith(hint)
    assert not (cut / "model.safetensors").exists()
    lr = command("finetune", "instruct", "--out", cut, "--resume", "--lr", 0.1)
    assert lr.returncode == 2 and "the run has --lr 5e-05" in lr.stderr
    command("finetune", "instruct", "--out", cut, "--resume", "--quiet", check=0)
    a, b = tensors(whole / "model.safetensors"), tensors(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class StoppingJudge(Judge):
    """Judge's stand-in that answers once and then fails."""

    served = 0

    def do_POST(self):
        StoppingJudge.served += 1
        if StoppingJudge.served > 1:
            self.send_error(500)
            return
        super().do_POST()


def test_a_judge_that_stops_partway_loses_no_score(tmp_path):
    """Issue 34: one failure discarded every score collected so far."""
    answered = [
        {"instruction": f"Say {word}.", "output": word, "model_response": word}
        for word in ["one", "two", "three"]
    ]
    (tmp_path / "answers.json").write_text(json.dumps(answered))
    server = http.server.HTTPServer(("127.0.0.1", 0), StoppingJudge)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        scored = tmp_path / "scored.json"
        result = command(
            "evaluate",
            "--responses",
            tmp_path / "answers.json",
            "--judge-url",
            url,
            "--out",
            scored,
        )
    finally:
        server.shutdown()
    assert result.returncode == 1
    assert "(after 1 of 3 answers); the 1 scores so far are in" in result.stderr
    assert [e.get("judge_score") for e in json.loads(scored.read_text())] == [
        70,
        None,
        None,
    ]
    no_scheme = command(
        "evaluate",
        "--responses",
        tmp_path / "answers.json",
        "--judge-url",
        "localhost:11434",
    )
    assert no_scheme.returncode == 2 and "begin it with http://" in no_scheme.stderr


def test_a_reader_that_stops_early_ends_generate_quietly(run):
    """Issue 34: `llmbook generate ... | head` ended in a broken-pipe error."""
    process = subprocess.Popen(
        [*COMMAND, "generate", "--checkpoint", str(run), "--prompt", "I had"]
        + ["--max-new-tokens", "200", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdout.read(2) == b"I "
    process.stdout.close()  # as head does once it has its lines
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and err == b""


def test_checkpoints_copied_from_another_run_are_refused(tmp_path, verdict):
    """Issue 34: another run's checkpoints, copied in, were trained on."""
    settings = [*TINY, "--context-length", 32, "--checkpoint-every", 2]
    for name, seed in [("a", "7"), ("b", "8")]:
        out = tmp_path / name
        command(
            "pretrain",
            verdict,
            "--out",
            out,
            *settings,
            "--seed",
            seed,
            "--max-steps",
            2,
            check=0,
        )
    shutil.rmtree(tmp_path / "b" / "checkpoints")
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    mixed = command("pretrain", "--out", tmp_path / "b", "--resume", "--max-steps", 4)
    assert mixed.returncode == 1
    assert "belongs to another run" in mixed.stderr and "copied in" in mixed.stderr


def test_a_config_files_context_length_is_the_runs(tmp_path, verdict):
    """Issue 34: --context-length's default silently replaced the file's, and the
    run recorded a preset that it did not use."""
    fields = {"emb_dim": 32, "n_heads": 2, "n_layers": 1, "context_length": 32}
    (tmp_path / "model.json").write_text(json.dumps(fields))
    settings: list = ["--tokenizer", "bpe:300", "--device", "cpu", "--quiet"]
    settings += ["--config", tmp_path / "model.json", "--max-steps", 1]
    both = command(
        "pretrain", verdict, "--out", tmp_path / "a", *settings, "--context-length", 64
    )
    assert both.returncode == 2 and "disagree; give the length once" in both.stderr
    command("pretrain", verdict, "--out", tmp_path / "b", *settings, check=0)
    manifest = json.loads((tmp_path / "b" / "run.json").read_text())
    assert manifest["model"]["context_length"] == 32
    assert manifest["settings"]["preset"] is None


def test_evaluate_writes_no_file_it_would_replace(tmp_path, run):
    """Issue 34: evaluate --out replaced a model, a run.json or a data file, and a
    folder as --out was found only after all the judging."""
    answered = [{"instruction": "Say hi.", "output": "hi", "model_response": "hi"}]
    (tmp_path / "answers.json").write_text(json.dumps(answered))
    before = folder_state(run)
    for out, message in [
        (run / "run.json", "exists already: choose a new file name"),
        (run / "model.safetensors", "exists already"),
        (tmp_path, "exists already"),
    ]:
        result = command(
            "evaluate",
            "--responses",
            tmp_path / "answers.json",
            "--judge-url",
            "http://127.0.0.1:9",
            "--out",
            out,
        )
        assert result.returncode == 2 and message in result.stderr
    assert folder_state(run) == before


def test_finetuning_a_classifier_refuses_texts_it_would_cut(tmp_path, run):
    long = "spam\t" + "win money now " * 300 + "\n"
    (tmp_path / "long.tsv").write_text("ham\tHello there\nspam\tWin now\n" * 10 + long)
    start = ["--checkpoint", run, "--device", "cpu", "--quiet", "--epochs", 1]
    cut = command(
        "finetune",
        "classify",
        "--data",
        tmp_path / "long.tsv",
        *start,
        "--out",
        tmp_path / "a",
    )
    assert cut.returncode == 1
    assert "long.tsv: text 21 has" in cut.stderr and "--max-length 256" in cut.stderr
    wide = command(
        "finetune",
        "classify",
        "--data",
        tmp_path / "long.tsv",
        *start,
        "--out",
        tmp_path / "b",
        "--max-length",
        1000,
    )
    assert wide.returncode == 2 and "the model reads 256 at most" in wide.stderr
    command(
        "finetune",
        "classify",
        "--data",
        tmp_path / "long.tsv",
        *start,
        "--out",
        tmp_path / "c",
        "--max-length",
        64,
        "--checkpoint-every",
        1,
        check=0,
    )
    again = command("finetune", "classify", "--out", tmp_path / "c", "--resume")
    assert again.returncode == 2 and "has finished" in again.stderr
