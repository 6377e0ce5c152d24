"""Probe the `llmbook` command line as a careless user, a hostile file and a failing
disk would, and classify every outcome.

Run it from a clone of the repository, with the book's data files at hand:

    LLMBOOK_DATA_DIR=DATA python tools/probe_cli.py [--keep DIR] [--only SUBSTRING]

The probes run this clone's `src` (the tool puts it first on PYTHONPATH). The tool
builds a scratch workspace (a temporary folder that is deleted at the end, or DIR
with --keep, which stays), makes the few small runs the probes start from (a tiny
pretraining run, a classifier and an instruction model finetuned from it, built
only when a probe needs them), then runs each probe as a real process,
`python -m llmbook ...`, with a timeout and standard input from /dev/null unless the
probe feeds it. --only runs the probes whose name or kind holds SUBSTRING. Run one
at a time: the timings assume a core of its own. A full run takes 7 to 8 minutes.

Each probe expects a refusal (with words its message must hold, where it says) or
a command that works (with a check of what it made), and protects files that must
come out of it unchanged. Its outcome is one of:

  HANG          it ran past its timeout
  DATA-LOSS     a protected file changed or vanished, or trained work was thrown
                away (a finetuning run that trained, then could not save)
  SILENT-WRONG  a refusal was due and it exited 0; or it was to work and failed,
                or what it made is wrong (a class count, a file, an output)
  UNCLEAR       it refused, but not in one clear line: a traceback, a raw errno
                text, Python's words (KeyError, NoneType, ...), several lines, or a
                line that does not start with `error:` (after Ctrl-C, `interrupted`)
  CLEAR         it refused in one clear line
  OK            it worked, and the checks hold
  SKIP          it cannot run here: a full disk is a tmpfs that only root can
                mount (with `unshare`), and root writes in a read-only folder
                unless it is mounted read-only; counted apart

The tool prints a line per probe (outcome, kind, name, the reason where there is
one, and the first 100 characters of the last line of stderr), then the counts per
outcome and per kind, and exits 1 if any probe is HANG, DATA-LOSS or SILENT-WRONG.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TIMEOUT = 120.0  # seconds a probe may run
OUTCOMES = ["HANG", "DATA-LOSS", "SILENT-WRONG", "UNCLEAR", "CLEAR", "OK", "SKIP"]
FAILING = {"HANG", "DATA-LOSS", "SILENT-WRONG"}
# Words that show a user Python's insides instead of a message.
INSIDES = [
    "Traceback",
    '.py", line',
    "[Errno",
    "KeyError",
    "NoneType",
    "object has no attribute",
]

# ---------------------------------------------------------------------------------
# Probes and their results


@dataclass
class Result:
    """What a probe's command (or the last of its commands) did."""

    rc: int | None
    out: str = ""
    err: str = ""
    timed_out: bool = False
    seconds: float = 0.0
    # A runner's own verdict on a step before the last: (outcome, reason).
    finding: tuple[str, str] | None = None


Check = Callable[["Ctx", Result], "str | None"]  # a problem, or None


@dataclass
class Probe:
    """One attack on the command line and what a careful user expects of it."""

    kind: str
    name: str
    cmd: list[str]  # "llmbook" and "python" start this Python; $VARS (see Workspace)
    expect: str = "refuse"  # or "work"
    says: str | None = None  # words the refusal must hold (any case)
    check: Check | None = None  # what else must hold (else SILENT-WRONG)
    loss: Check | None = None  # work thrown away (else DATA-LOSS)
    setup: Callable[[Ctx], object] | None = None
    stdin: bytes | None = None
    protect: list[str] = field(default_factory=list)  # paths in the probe's folder
    env: dict[str, str] = field(default_factory=dict)
    readonly: str | None = None  # a folder mounted read-only for the command
    disk: tuple[str, int, bool] | None = None  # a tmpfs (folder, bytes, filled)
    shell: str | None = None  # sh code to run before the command (umask 027, say)
    runner: Callable[[Ctx], Result] | None = None  # several steps, its own way
    timeout: float = TIMEOUT


# ---------------------------------------------------------------------------------
# Running commands


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_group(proc: subprocess.Popen) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def finish(proc: subprocess.Popen, timeout: float, stdin: bytes | None = None):
    """Wait for `proc` (feeding it `stdin`) and return its Result; past `timeout`
    its process group is killed and the result says it timed out."""
    start = time.monotonic()
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        timed_out = True
    return Result(
        proc.returncode,
        (out or b"").decode(errors="replace"),
        (err or b"").decode(errors="replace"),
        timed_out,
        time.monotonic() - start,
    )


def wait_until(condition: Callable[[], bool], seconds: float, proc=None) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass or `proc` ends."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(0.02)
    return False


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def unclear(err: str, interrupt: bool = False) -> str | None:
    """Why a refusal's stderr is not one clear line, or None if it is."""
    lines = [line for line in err.splitlines() if line.strip()]
    if not lines:
        return "refused without a word"
    for words in INSIDES:
        if words in err:
            return f"shows {words!r}"
    if len(lines) > 1:
        return f"{len(lines)} lines on stderr"
    starts = ("error:", "interrupted") if interrupt else ("error:",)
    if not lines[0].startswith(starts):
        return "does not start with 'error:'"
    return None


def is_root() -> bool:
    return os.geteuid() == 0


def can_mount() -> bool:
    """Whether this process may mount a tmpfs or a read-only folder privately."""
    return is_root() and shutil.which("unshare") is not None


# ---------------------------------------------------------------------------------
# The workspace: data, base runs, a judge server


@dataclass
class Ctx:
    """A probe's folder in the workspace, and how to run commands there."""

    ws: Workspace
    dir: Path
    probe: Probe

    def path(self, rel: str) -> Path:
        return self.dir / rel

    def write(self, rel: str, content: str | bytes) -> Path:
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_bytes(content.encode("utf-8"))
        else:
            path.write_bytes(content)
        return path

    def copy_run(self, base: str, rel: str = "run") -> Path:
        target = self.dir / rel
        shutil.copytree(self.ws.base(base), target, symlinks=True)
        return target

    def expand(self, cmd: list[str]) -> list[str]:
        return self.ws.expand(cmd)

    def start(self, cmd: list[str], cwd: Path | None = None, env=None, stdin=None):
        return subprocess.Popen(
            self.expand(cmd),
            cwd=cwd or self.dir,
            env=self.ws.environ(env),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def run(self, cmd, cwd=None, env=None, stdin=None, timeout=None) -> Result:
        proc = self.start(cmd, cwd, env, stdin)
        return finish(proc, timeout or self.probe.timeout, stdin)


class Vars(Mapping[str, str]):
    """The $NAMES a probe's command may use; base runs are built on first use."""

    def __init__(self, ws: Workspace):
        self.ws = ws

    def __getitem__(self, key: str) -> str:
        return str(self.ws.value(key))

    def __iter__(self) -> Iterator[str]:
        return iter([])

    def __len__(self) -> int:
        return 0


def tiny(steps: int = 4) -> list[str]:
    """Options that make a pretraining run take a few seconds."""
    return (
        "--preset debug --context-length 64 --tokenizer $TOK --eval-freq 2 "
        f"--checkpoint-every 2 --device cpu --quiet --max-steps {steps}"
    ).split()


# Options of a quick classifier finetuning from the base run.
FINETUNE = "--checkpoint $BASE --epochs 1 --batch-size 8 --eval-freq 50".split()
FINETUNE += "--checkpoint-every 50 --quiet --device cpu".split()
STORY = "$VERDICT"
# The base runs, built in the workspace's bases/ folder when a probe first needs one.
SMALL = "--epochs 1 --batch-size 4 --eval-freq 2 --checkpoint-every 2 --quiet"
BASES: dict[str, list[str]] = {
    "base": (
        "llmbook pretrain $VERDICT --out base --preset debug --context-length 256 "
        "--tokenizer bpe:500 --max-steps 4 --eval-freq 2 --checkpoint-every 2 --quiet"
    ).split(),
    "clf": (
        f"llmbook finetune classify --data $SMS --out clf --checkpoint $BASE {SMALL}"
    ).split(),
    "inst": (
        f"llmbook finetune instruct --data $INST --out inst --checkpoint $BASE {SMALL}"
        " --max-new-tokens 4"
    ).split(),
    # With --config too, for the probes of both.
    "cosine": [
        *"llmbook pretrain $VERDICT --out cosine --config cfg.json --cosine".split(),
        *tiny()[2:],
    ],
    "warmup": [
        *"llmbook pretrain $VERDICT --out warmup --warmup-steps 100".split(),
        *tiny(),
    ],
}
CONFIG = {"emb_dim": 32, "n_heads": 2, "n_layers": 2, "context_length": 64}


class Workspace:
    """The scratch folder: small data files, base runs, one folder per probe."""

    def __init__(self, root: Path, judge: str):
        self.root = root
        self.judge = judge
        self.built: dict[str, Path] = {}
        self.closed_port = free_port()  # where no judge listens
        self.vars = Vars(self)
        self.data = {
            name: data_path(name)
            for name in [
                "the-verdict.txt",
                "SMSSpamCollection",
                "instruction-data.json",
            ]
        }
        (root / "bases").mkdir(parents=True, exist_ok=True)
        (root / "p").mkdir(exist_ok=True)
        self.ham, self.spam = sms_texts(self.data["SMSSpamCollection"])
        sms = [("ham", t) for t in self.ham[:20]]
        sms += [("spam", t) for t in self.spam[:20]]
        (root / "sms.tsv").write_text(tsv(sms), encoding="utf-8")
        entries = json.loads(self.data["instruction-data.json"].read_text("utf-8"))
        short = [e for e in entries if len(json.dumps(e)) < 170][:24]
        self.entries = short
        (root / "inst.json").write_text(json.dumps(short), encoding="utf-8")
        answers = [e | {"model_response": e["output"][:20]} for e in short[:3]]
        (root / "responses.json").write_text(json.dumps(answers), encoding="utf-8")
        (root / "bases" / "cfg.json").write_text(json.dumps(CONFIG), encoding="utf-8")

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("LLMBOOK_DEBUG", None)  # tracebacks are what the probes look for
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(SRC) + (os.pathsep + path if path else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        env["LLMBOOK_CACHE_DIR"] = str(self.root / "cache")  # no stray downloads
        return env | dict(extra or {})

    def value(self, key: str) -> str | Path:
        fixed: dict[str, str | Path] = {
            "PY": sys.executable,
            "VERDICT": self.data["the-verdict.txt"],
            "SMS": self.root / "sms.tsv",
            "INST": self.root / "inst.json",
            "RESP": self.root / "responses.json",
            "JUDGE": self.judge,
            "PORT": str(self.closed_port),
        }
        if key in fixed:
            return fixed[key]
        if key == "TOK":
            return self.base("base") / "tokenizer.json"
        if key.lower() in BASES:
            return self.base(key.lower())
        raise KeyError(key)

    def expand(self, cmd: list[str]) -> list[str]:
        words = [string.Template(word).safe_substitute(self.vars) for word in cmd]
        if words and words[0] == "llmbook":
            return [sys.executable, "-m", "llmbook", *words[1:]]
        if words and words[0] == "python":
            return [sys.executable, *words[1:]]
        return words

    def base(self, name: str) -> Path:
        """The base run `name`, built the first time it is asked for."""
        if name not in self.built:
            cmd = self.expand(BASES[name])
            result = subprocess.run(
                cmd,
                cwd=self.root / "bases",
                env=self.environ(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if result.returncode != 0:
                sys.exit(f"the base run {name} failed:\n{result.stderr}")
            self.built[name] = self.root / "bases" / name
        return self.built[name]


def data_path(name: str) -> Path:
    """A data file of the book: from $LLMBOOK_DATA_DIR, else the library's cache."""
    folder = os.environ.get("LLMBOOK_DATA_DIR")
    if folder and (Path(folder) / name).is_file():
        return Path(folder) / name
    sys.path.insert(0, str(SRC))
    from llmbook.data import data_file

    return data_file(name)


def sms_texts(path: Path) -> tuple[list[str], list[str]]:
    """Short texts of each label, without tabs, quotes or commas."""
    ham: list[str] = []
    spam: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        if len(text) < 50 and not set(text) & set('"\t,'):
            (ham if label == "ham" else spam).append(text)
    return ham[:30], spam[:30]


def tsv(rows: list[tuple[str, str]], header: str = "", newline: str = "\n") -> str:
    lines = ([header] if header else []) + [f"{label}\t{text}" for label, text in rows]
    return newline.join(lines) + newline


def csv_file(header: list[str], rows: list[list[str]], newline: str = "\n") -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=newline).writerows([header, *rows])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------
# A judge server that misbehaves on demand: POST /NAME/api/chat runs BEHAVIOURS[NAME]


def send(handler, status: int, body: bytes, headers: dict | None = None) -> None:
    handler.send_response(status)
    for key, value in (headers or {"Content-Type": "application/json"}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def says(text: object, api: str = "ollama") -> Callable:
    """A judge that answers `text` (the content of its message)."""

    def behave(handler, count: int) -> None:
        message = {"role": "assistant", "content": text}
        reply: object = {"message": message}
        if api == "openai":
            reply = {"choices": [{"message": message}]}
        send(handler, 200, json.dumps(reply).encode())

    return behave


def trickles(handler, count: int) -> None:
    """Headers at once, then the body a byte every half second."""
    body = json.dumps({"message": {"content": "Score: 50"}}).encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    with suppress(OSError):
        for byte in body:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.5)


def fails_second(handler, count: int) -> None:
    if count == 1:
        says("Score: 80")(handler, count)
    else:
        send(handler, 500, b"Internal Server Error", {"Content-Type": "text/plain"})


BEHAVIOURS: dict[str, Callable] = {
    "eight-of-ten": says("I'd say 8/10: close, but not quite."),
    "120-of-100": says("Score: 120/100"),
    "12-of-10": says("12/10, perfect"),
    "7.5-of-10": says("7.5/10"),
    "openai": says("Score: 90", api="openai"),
    "trickle": trickles,
    "not-json": lambda h, c: send(h, 200, b"<html>hello</html>"),
    "not-utf8": lambda h, c: send(h, 200, b'{"message": {"content": "\xff\xfe 80"}}'),
    "redirect": lambda h, c: send(h, 302, b"", {"Location": "http://127.0.0.1:1/"}),
    "not-string": says(85),
    "fails-second": fails_second,
}


class JudgeHandler(http.server.BaseHTTPRequestHandler):
    counts: Counter[str] = Counter()

    def log_message(self, format, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        name = self.path.strip("/").split("/")[0]
        self.counts[name] += 1
        with suppress(OSError):
            BEHAVIOURS.get(name, says("Score: 50"))(self, self.counts[name])


@contextmanager
def judge_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------
# Checks


def exists(*rels: str) -> Check:
    def check(ctx: Ctx, res: Result) -> str | None:
        missing = [rel for rel in rels if not ctx.path(rel).exists()]
        return f"no {', '.join(missing)}" if missing else None

    return check


def absent(*rels: str) -> Check:
    def check(ctx: Ctx, res: Result) -> str | None:
        left = [rel for rel in rels if ctx.path(rel).exists()]
        return f"left {', '.join(left)} behind" if left else None

    return check


def output_has(*texts: str) -> Check:
    def check(ctx: Ctx, res: Result) -> str | None:
        missing = [text for text in texts if text not in res.out]
        return f"stdout lacks {missing[0]!r}" if missing else None

    return check


def every(*checks: Check) -> Check:
    def check(ctx: Ctx, res: Result) -> str | None:
        for one in checks:
            problem = one(ctx, res)
            if problem:
                return problem
        return None

    return check


def manifest(rel: str, test: Callable[[dict], str | None]) -> Check:
    """A check of what a run's run.json says."""

    def check(ctx: Ctx, res: Result) -> str | None:
        try:
            data = json.loads((ctx.path(rel) / "run.json").read_text("utf-8"))
        except (OSError, ValueError) as error:
            return f"no readable run.json ({error})"
        return test(data)

    return check


def resumed_to(step: int) -> Check:
    """The run in `run` went on to `step`: its run.json and its latest checkpoint."""

    def check(ctx: Ctx, res: Result) -> str | None:
        manifest = json.loads(ctx.path("run/run.json").read_text())
        latest = ctx.path("run/checkpoints/latest").read_text().strip()
        if manifest.get("finished_step") != step or latest != f"step-{step:08d}":
            return f"finished_step {manifest.get('finished_step')}, latest {latest}"
        return None

    return check


def trained(ctx: Ctx, res: Result) -> str | None:
    """DATA-LOSS test of a refused finetuning: it must not have trained first."""
    if re.search(r"accuracy|^step \d+", res.out, re.MULTILINE):
        return "trained, then refused: the training was thrown away"
    return None


def classes(expected: dict[str, int]) -> Check:
    """The class counts that `finetune classify` prints must be `expected`."""

    def check(ctx: Ctx, res: Result) -> str | None:
        found = re.search(r"^([\d,]+) texts of (\d+) classes: (.*)$", res.out, re.M)
        if not found:
            return "no line of class counts"
        counts = {}
        for part in found[3].split(", "):
            label, _, count = part.rpartition(" ")
            counts[label] = int(count.replace(",", ""))
        if counts != expected:
            return f"counted {counts}, not {expected}"
        if not ctx.path("out/classifier.safetensors").is_file():
            return "no out/classifier.safetensors"
        return None

    return check


def modes(rel: str, file_mode: int, dir_mode: int) -> Check:
    def check(ctx: Ctx, res: Result) -> str | None:
        top = ctx.path(rel)
        for path in [top, *top.rglob("*")]:
            want = dir_mode if path.is_dir() else file_mode
            mode = path.stat().st_mode & 0o777
            if mode != want:
                return f"{path.relative_to(ctx.dir)} has mode {mode:o}, not {want:o}"
        return None

    return check


def tensors(path: Path) -> tuple[dict, dict[str, bytes]]:
    """A safetensors file's metadata and each tensor's dtype, shape and bytes (its
    bytes on disk vary: the header's order is not fixed)."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    meta = header.pop("__metadata__", {})
    body = data[8 + size :]
    return meta, {
        name: repr((t["dtype"], t["shape"])).encode()
        + body[t["data_offsets"][0] : t["data_offsets"][1]]
        for name, t in header.items()
    }


def same_weights(a: str, b: str) -> Check:
    """The model files `a` and `b` hold the same metadata and the same tensors."""

    def check(ctx: Ctx, res: Result) -> str | None:
        if tensors(ctx.path(a)) != tensors(ctx.path(b)):
            return f"{a} and {b} hold different weights"
        return None

    return check


# ---------------------------------------------------------------------------------
# Setups


def writes(files: dict[str, str | bytes]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for rel, content in files.items():
            ctx.write(rel, content)

    return setup


def copies(base: str, rel: str = "run", then=None) -> Callable[[Ctx], None]:
    """Copy a base run into the probe's folder, then change it with `then`."""

    def setup(ctx: Ctx) -> None:
        ctx.copy_run(base, rel)
        if then is not None:
            then(ctx, ctx.path(rel))

    return setup


def edit_json(rel: str, change: Callable[[dict], object]) -> Callable:
    """A `then` that changes a JSON file of the run in place."""

    def then(ctx: Ctx, run: Path) -> None:
        data = json.loads((run / rel).read_text("utf-8"))
        change(data)
        text = json.dumps(data, indent=2, ensure_ascii=False)  # as llmbook writes
        (run / rel).write_text(text, encoding="utf-8")

    return then


def put(rel: str, content: str | bytes | None) -> Callable:
    """A `then` that writes (or, with None, deletes) a file of the run."""

    def then(ctx: Ctx, run: Path) -> None:
        path = run / rel
        if content is None:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return then


def resum(step: str, file: str, content: bytes) -> Callable:
    """A `then` that replaces a checkpoint's file and records its new checksum, as
    a hostile (or merely confused) hand would."""

    def then(ctx: Ctx, run: Path) -> None:
        folder = run / "checkpoints" / step
        (folder / file).write_bytes(content)
        sums = json.loads((folder / "checksums.json").read_text("utf-8"))
        sums[file] = sha256(folder / file)
        (folder / "checksums.json").write_text(json.dumps(sums), encoding="utf-8")

    return then


def both(*thens: Callable) -> Callable:
    def then(ctx: Ctx, run: Path) -> None:
        for one in thens:
            one(ctx, run)

    return then


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], meta: dict) -> bytes:
    """A safetensors file of zero-filled tensors (name: dtype, shape) and a header
    `meta`, made by hand: no library, so that it can say anything."""
    sizes = {"F32": 4, "F16": 2, "I64": 8, "I32": 4}
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = sizes[dtype]
        for dim in shape:
            size *= dim
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(offset)


# A header that claims a GPT of a trillion parameters, over a file of 64 bytes.
HUGE: dict[str, object] = {"vocab_size": 10**9, "context_length": 10**6}
HUGE |= {"emb_dim": 4096, "n_heads": 32, "n_layers": 96, "drop_rate": 0.0}
HUGE_MODEL = safetensors_bytes(
    {"tok_emb.weight": ("F32", [4, 4])},
    {
        "format": "llmbook-gpt",
        "config": json.dumps(HUGE),
        "tokenizer": "tokenizer.json",
    },
)


# ---------------------------------------------------------------------------------
# Runners: probes of several steps


def concurrent_pretrain(ctx: Ctx) -> Result:
    """Two `pretrain` processes on one --out at once: one runs, one refuses."""
    cmd = ["llmbook", "pretrain", STORY, "--out", "run", *tiny()]
    procs = [ctx.start(cmd), ctx.start(cmd)]
    results = [finish(proc, ctx.probe.timeout) for proc in procs]
    if any(r.timed_out for r in results):
        return next(r for r in results if r.timed_out)
    done = [r for r in results if r.rc == 0]
    refused = [r for r in results if r.rc != 0]
    if len(done) != 1:
        last = refused[-1] if refused else results[-1]
        last.finding = ("SILENT-WRONG", f"{len(done)} of the 2 processes ran")
        return last
    if not ctx.path("run/model.safetensors").is_file():
        refused[0].finding = ("SILENT-WRONG", "the process that ran saved no model")
    return refused[0]


def long_pretrain(ctx: Ctx) -> subprocess.Popen:
    """A pretraining run of many steps, started; returns once it has a checkpoint."""
    cmd = ["llmbook", "pretrain", STORY, "--out", "run", *tiny(100000)]
    proc = ctx.start(cmd + ["--checkpoint-every", "3"])
    latest = ctx.path("run/checkpoints/latest")
    if not wait_until(latest.is_file, 60, proc):
        kill_group(proc)
        raise RuntimeError(f"the long run made no checkpoint: {finish(proc, 10).err}")
    return proc


def running(ctx: Ctx) -> Result:
    """`pretrain --resume` on a run another process is training."""
    proc = long_pretrain(ctx)
    try:
        return ctx.run(["llmbook", "pretrain", "--out", "run", "--resume", "--quiet"])
    finally:
        proc.send_signal(signal.SIGINT)
        finish(proc, 30)


def killed_then_resumed(ctx: Ctx) -> Result:
    """A run killed by SIGKILL (its .lock and half-written files left behind) must
    resume, and the leftovers be cleaned."""
    proc = long_pretrain(ctx)
    kill_group(proc)
    finish(proc, 30)
    leftovers = ["run/.run.json.99999.deadbeef.tmp", "run/checkpoints/.latest.tmp"]
    for rel in leftovers:
        ctx.write(rel, "half")
    ctx.write("run/checkpoints/.step-00099999.x1y2/model.safetensors", b"half")
    leftovers.append("run/checkpoints/.step-00099999.x1y2")
    step = int(ctx.path("run/checkpoints/latest").read_text().strip()[5:])
    cmd = ["llmbook", "pretrain", "--out", "run", "--resume", "--quiet"]
    res = ctx.run(cmd + ["--max-steps", str(step + 2)])
    left = [rel for rel in leftovers if ctx.path(rel).exists()]
    if res.rc == 0 and left:
        res.finding = ("SILENT-WRONG", f"left {', '.join(left)}")
    return res


def interrupted_instruct(ctx: Ctx) -> Result:
    """`finetune instruct` stopped by Ctrl-C, then --resume: it must finish with
    the weights of an uninterrupted run."""
    cmd = (
        "llmbook finetune instruct --data $INST --checkpoint $BASE --epochs 4 "
        "--batch-size 4 --eval-freq 3 --checkpoint-every 1 --max-new-tokens 2 --quiet"
    ).split()
    proc = ctx.start([*cmd, "--out", "run"])
    wait_until(ctx.path("run/checkpoints/latest").is_file, 60, proc)
    proc.send_signal(signal.SIGINT)
    first = finish(proc, 60)
    if first.timed_out:
        return first
    if first.rc == 0:
        first.finding = ("SILENT-WRONG", "finished before Ctrl-C: probe too slow")
        return first
    why = unclear(first.err, interrupt=True)
    if first.rc != 130 or why or "--resume" not in first.err:
        first.finding = ("UNCLEAR", f"after Ctrl-C: exit {first.rc}, {why}")
        return first
    again = ctx.run("llmbook finetune instruct --out run --resume --quiet".split())
    if again.rc != 0 or again.timed_out:
        return again
    whole = ctx.run([*cmd, "--out", "whole"])
    if whole.rc != 0:
        whole.finding = ("SILENT-WRONG", "the uninterrupted run failed")
        return whole
    if same_weights("run/model.safetensors", "whole/model.safetensors")(ctx, again):
        again.finding = ("SILENT-WRONG", "resumed weights differ from a whole run's")
    return again


def warmup_extended(ctx: Ctx) -> Result:
    """A warmup-only run of 4 steps, given --max-steps 8 on --resume, must end with
    the weights of a run of 8 steps (only a cosine depends on the length)."""
    ctx.copy_run("warmup")
    res = ctx.run("llmbook pretrain --out run --resume --max-steps 8 --quiet".split())
    if res.rc != 0 or res.timed_out:
        return res
    whole = ["llmbook", "pretrain", STORY, "--out", "whole", *tiny(8)]
    ctx.run([*whole, "--warmup-steps", "100"])
    if same_weights("run/model.safetensors", "whole/model.safetensors")(ctx, res):
        res.finding = ("SILENT-WRONG", "weights differ from an 8-step run's")
    return res


def relative_paths(ctx: Ctx) -> Result:
    """A run started with relative --config and --tokenizer paths, both deleted
    since, generates and resumes from another working folder."""
    a, b = ctx.path("a"), ctx.path("b")
    b.mkdir(parents=True)
    ctx.write("a/cfg.json", json.dumps(CONFIG))
    shutil.copy(ctx.ws.value("TOK"), a / "tok.json")
    start = (
        "llmbook pretrain $VERDICT --out run --config cfg.json --tokenizer tok.json "
        "--max-steps 2 --eval-freq 2 --checkpoint-every 2 --quiet"
    )
    res = ctx.run(start.split(), cwd=a)
    if res.rc != 0:
        res.finding = ("SILENT-WRONG", "the first run failed")
        return res
    (a / "cfg.json").unlink()
    (a / "tok.json").unlink()
    generate = "llmbook generate --checkpoint ../a/run --prompt I --max-new-tokens 3"
    res = ctx.run(generate.split(), cwd=b)
    if res.rc != 0:
        return res
    more = "llmbook pretrain --out ../a/run --resume --max-steps 4 --quiet"
    return ctx.run(more.split(), cwd=b)


def fifo_text(ctx: Ctx) -> Result:
    """A FIFO as TEXT, written by a thread: what `<(cat story)` would give."""
    fifo = ctx.path("story.fifo")
    os.mkfifo(fifo)
    text = ctx.ws.data["the-verdict.txt"].read_bytes()

    def feed() -> None:
        with suppress(OSError), open(fifo, "wb") as writer:
            writer.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    res = ctx.run(["llmbook", "pretrain", "story.fifo", "--out", "run", *tiny()])
    if writer.is_alive():  # never opened: let the thread go
        with suppress(OSError):
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    return res


def torchrun_alone(ctx: Ctx) -> Result:
    """A full torchrun environment whose other process never comes: within 15 s the
    process must say what it waits for (or refuse), not wait in silence."""
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    proc = ctx.start(["llmbook", "pretrain", STORY, "--out", "run", *tiny()], env=env)
    lines: list[tuple[float, str]] = []
    start = time.monotonic()

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append((time.monotonic() - start, raw.decode(errors="replace")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: bool(lines), 20, proc)
    ended = proc.poll() is not None
    if not ended:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
    reader.join(5)
    err = "".join(text for _, text in lines)
    if not lines:
        return Result(None, "", err, True, time.monotonic() - start)
    if ended:  # a refusal does as well as a note, if it is clear
        res = Result(0, "", err, False, time.monotonic() - start)
        why = unclear(err) if proc.returncode else "exit 0"
        if why:
            res.finding = ("UNCLEAR", f"ended at once: {why}")
        return res
    res = Result(0, "", lines[0][1], False, lines[0][0])
    if "Traceback" in err:
        res.finding = ("UNCLEAR", "a traceback while it waits")
    elif lines[0][0] > 15:
        res.finding = ("SILENT-WRONG", f"silent for {lines[0][0]:.0f} s")
    return res


# ---------------------------------------------------------------------------------
# The probes


def refuse(kind: str, name: str, cmd: list[str], says: str | None = None, **kw):
    return Probe(kind, name, cmd, "refuse", says, **kw)


def work(kind: str, name: str, cmd: list[str], check: Check | None = None, **kw):
    return Probe(kind, name, cmd, "work", None, check, **kw)


PRETRAIN = ["llmbook", "pretrain", STORY, "--out", "run", *tiny()]
RESUME = "llmbook pretrain --out run --resume --max-steps 8 --quiet".split()
GENERATE = "llmbook generate --checkpoint run --prompt I --max-new-tokens 3".split()
CLASSIFY = ["llmbook", "finetune", "classify", "--data", "$SMS", *FINETUNE]
INSTRUCT = ["llmbook", "finetune", "instruct", "--data", "$INST", *FINETUNE]


def run_folder_probes() -> list[Probe]:
    k = "run-folder"

    def onto(name: str, cmd: list[str], base: str, says: str) -> Probe:
        """`cmd --out run` where run is a copy of the base run `base`."""
        return refuse(k, name, cmd, says, setup=copies(base), protect=["run"])

    pretrain = ["llmbook", "pretrain", STORY, *tiny(), "--out"]
    return [
        onto("pretrain-out-instruct-run", PRETRAIN, "inst", "instruction model"),
        onto("pretrain-out-classifier", PRETRAIN, "clf", "classifier"),
        onto("pretrain-out-pretrain-run", PRETRAIN, "base", "--resume"),
        onto("instruct-out-classifier", [*INSTRUCT, "--out", "run"], "clf", "classif"),
        refuse(
            k,
            "classify-checkpoint-is-out",
            "llmbook finetune classify --data $SMS --checkpoint run --out run".split(),
            "pretraining run",
            setup=copies("base"),
            protect=["run"],
            loss=trained,
        ),
        refuse(
            k,
            "pretrain-out-file",
            PRETRAIN,
            "file",
            setup=writes({"run": "my notes\n"}),
            protect=["run"],
        ),
        refuse(
            k,
            "pretrain-out-readonly",
            PRETRAIN,
            "run",
            setup=writes({"run/.keep": ""}),
            readonly="run",
        ),
        refuse(
            k,
            "pretrain-out-unrelated-files",
            PRETRAIN,
            "no llmbook run",
            setup=writes({"run/notes.txt": "mine", "run/photo.jpg": b"\xff"}),
            protect=["run"],
        ),
        refuse(
            k,
            "pretrain-out-empty-string",
            [*pretrain, ""],
            "empty",
            setup=writes({"mine.txt": "x"}),
            protect=["mine.txt"],
        ),
        refuse(k, "pretrain-two-at-once", [], runner=concurrent_pretrain),
        refuse(k, "pretrain-resume-while-running", [], "in use", runner=running),
        work(
            k,
            "pretrain-killed-then-resumed",
            [],
            exists("run/model.safetensors"),
            runner=killed_then_resumed,
        ),
        refuse(
            k,
            "pretrain-resume-empty-folder",
            RESUME,
            "holds no run",
            setup=writes({"run/.keep": ""}),
        ),
        refuse(
            k,
            "pretrain-resume-missing-folder",
            RESUME,
            "no such folder",
            check=absent("run"),
        ),
    ]


def finetune_probes(ws: Workspace) -> list[Probe]:
    k = "finetune"
    long = [dict(e) for e in ws.entries]
    long[13]["output"] = "word " * 400
    unfinish = edit_json("run.json", lambda d: d.pop("finished"))
    other_entries = json.dumps(ws.entries[:20] + ws.entries[:4])
    other_texts = tsv(
        [("ham", t) for t in ws.ham[:12]] + [("spam", t) for t in ws.spam[:12]]
    )

    def bad_out(name: str, cmd: list[str], out: str, says: str, **kw) -> Probe:
        """An --out that must be refused before any training."""
        return refuse(k, name, [*cmd, "--out", out], says, loss=trained, **kw)

    def other_data(name: str, command: str, base: str, file: str, content: str):
        """--resume of an unfinished run with another --data file."""
        cmd = ["llmbook", "finetune", command, "--out", "run", "--resume"]

        def setup(ctx: Ctx) -> None:
            copies(base, then=unfinish)(ctx)
            ctx.write(file, content)

        return refuse(
            k, name, [*cmd, "--data", file], "data file", setup=setup, protect=["run"]
        )

    ro = {"setup": writes({"ro/.keep": ""}), "readonly": "ro"}
    taken = {"setup": writes({"taken": "mine"}), "protect": ["taken"]}
    full = {"setup": writes({"disk/.keep": ""}), "disk": ("disk", 65536, True)}
    return [
        bad_out("classify-out-file", CLASSIFY, "taken", "file", **taken),
        bad_out("classify-out-readonly", CLASSIFY, "ro", "ro", **ro),
        bad_out("instruct-out-file", INSTRUCT, "taken", "file", **taken),
        bad_out("instruct-out-readonly", INSTRUCT, "ro", "ro", **ro),
        bad_out("instruct-out-full-disk", INSTRUCT, "disk/run", "disk/run", **full),
        refuse(
            k,
            "classify-disk-fills-while-training",
            (
                "llmbook finetune classify --data $SMS --checkpoint $BASE --quiet "
                "--batch-size 4 --checkpoint-every 1 --out disk/run"
            ).split(),
            "disk/run",
            setup=writes({"disk/.keep": ""}),
            disk=("disk", 32768, False),
        ),
        refuse(
            k,
            "instruct-entry-too-long",
            "llmbook finetune instruct --data long.json --out run".split() + FINETUNE,
            "entry 13",
            setup=writes({"long.json": json.dumps(long)}),
            loss=trained,
        ),
        work(
            k,
            "instruct-ctrl-c-then-resume",
            [],
            manifest("run", lambda d: None if d.get("finished") else "not finished"),
            runner=interrupted_instruct,
        ),
        other_data(
            "instruct-resume-other-data", "instruct", "inst", "o.json", other_entries
        ),
        other_data(
            "classify-resume-other-data", "classify", "clf", "o.tsv", other_texts
        ),
        refuse(
            k,
            "instruct-gpt2-without-network",
            "llmbook finetune instruct --data $INST --gpt2 gpt2-small --out o".split(),
            timeout=60,
        ),
    ]


def labelled_probes(ws: Workspace) -> list[Probe]:
    """Files for `finetune classify --data`: the right ones must train with the right
    class counts, the ambiguous ones be refused naming their line."""
    k = "labelled"
    ham, spam = ws.ham, ws.spam
    pairs = [("ham", t) for t in ham[:10]] + [("spam", t) for t in spam[:10]]
    two = {"ham": 10, "spam": 10}
    rows = [[t, label] for label, t in pairs]  # text, label
    quoted = [[f'{t},\nsaid "he"', label] for label, t in pairs]

    def good(name: str, content: str, suffix: str = ".tsv") -> Probe:
        """A file that must train, with 10 texts of ham and 10 of spam."""
        cmd = f"llmbook finetune classify --data data{suffix} --out out".split()
        setup = writes({f"data{suffix}": content})
        return work(k, name, cmd + FINETUNE, classes(two), setup=setup)

    def bad(name: str, content: str | bytes, says: str, suffix: str = ".tsv"):
        """A file that must be refused, before any training."""
        cmd = f"llmbook finetune classify --data data{suffix} --out out".split()
        setup = writes({f"data{suffix}": content})
        return refuse(k, name, cmd + FINETUNE, says, setup=setup, loss=trained)

    def with_line(n: int, line: str) -> str:
        """The plain TSV with its line `n` replaced by `line`."""
        lines = tsv(pairs).splitlines()
        lines[n - 1] = line
        return "\n".join(lines) + "\n"

    ids = [(str(i), t) for i, (_, t) in enumerate(pairs)]
    csv_ = ".csv"
    return [
        good("csv-header-text-label", csv_file(["text", "label"], rows), csv_),
        good(
            "csv-header-label-text-any-case",
            csv_file(["Label", "TEXT"], [row[::-1] for row in rows]),
            csv_,
        ),
        good(
            "csv-extra-columns-bom-crlf",
            "\ufeff"
            + csv_file(
                ["id", "text", "label", "source"],
                [[str(i), t, label, "phone"] for i, (t, label) in enumerate(rows)],
                "\r\n",
            ),
            csv_,
        ),
        good("csv-quoted-newlines", csv_file(["text", "label"], quoted), csv_),
        good(
            "tsv-header-text-label", tsv([(t, lab) for lab, t in pairs], "Text\tLabel")
        ),
        good("tsv-no-header-bom-crlf", "\ufeff" + tsv(pairs, newline="\r\n")),
        bad("tsv-three-columns", with_line(5, f"ham\t{ham[4]}\textra"), ":5:"),
        bad("tsv-labels-differ-in-case", with_line(12, f"Spam\t{spam[1]}"), ":12:"),
        bad(
            "tsv-labels-1-and-1.0",
            tsv([("1" if lab == "ham" else "0", t) for lab, t in pairs[:19]])
            + f"1.0\t{spam[9]}\n",
            ":20:",
        ),
        bad("tsv-empty-label", with_line(7, f"\t{ham[6]}"), ":7:"),
        bad("tsv-one-class", tsv([("ham", t) for t in ham[:20]]), "two labels"),
        bad("tsv-id-as-label", tsv(ids), "labels for"),
        bad("tsv-not-utf8", tsv(pairs).encode() + b"ham\tcaf\xe9 ok\n", "UTF-8"),
        bad("csv-no-header", csv_file(rows[0], rows[1:]), ":1:", csv_),
        bad(
            "csv-bad-row-after-quoted-newlines",
            csv_file(["text", "label"], [*quoted[:3], [ham[3], ""], *quoted[4:]]),
            ":8:",  # the header, 3 rows of 2 lines each, then the bad row
            csv_,
        ),
        bad(
            "tsv-header-repeated-mid-file",
            tsv(pairs[:10], "label\ttext") + "label\ttext\n" + tsv(pairs[10:]),
            ":12:",
        ),
        # A careful user expects a field too long for Python's csv module to be a
        # line of error, like every other flaw of the file.
        bad(
            "csv-huge-field",
            csv_file(["text", "label"], [*rows, ["x" * 200_000, "ham"]]),
            "data.csv",
            csv_,
        ),
    ]


def resume_probes() -> list[Probe]:
    k = "resume"
    resume = "llmbook pretrain --out run --resume --quiet".split()
    edited = json.dumps(CONFIG | {"n_layers": 3})

    def lengthened(data: dict) -> str | None:
        settings = data.get("settings", {})
        length = settings.get("epochs"), settings.get("max_steps")
        if length != (2, None):
            return f"run.json has epochs, max_steps = {length}, not (2, None)"
        if data.get("finished_step") != 8:
            return f"finished_step {data.get('finished_step')}, not 8"
        return None

    def edit_config(ctx: Ctx) -> None:
        copies("cosine")(ctx)
        ctx.write("cfg.json", edited)

    def spoil(ctx: Ctx, run: Path) -> None:
        (run / "checkpoints/step-00000004/model.safetensors").write_bytes(b"spoilt")

    return [
        refuse(
            k,
            "max-steps-where-the-run-stands",
            [*resume, "--max-steps", "4"],
            "step 4",
            setup=copies("base"),
            protect=["run"],
        ),
        refuse(
            k,
            "max-steps-below-the-run",
            [*resume, "--max-steps", "2"],
            "step 4",
            setup=copies("base"),
            protect=["run"],
        ),
        work(
            k,
            "epochs-replace-saved-max-steps",
            [*resume, "--epochs", "2"],
            manifest("run", lengthened),
            setup=copies("base"),
        ),
        work(k, "warmup-only-extended", [], runner=warmup_extended),
        # Only a cosine's curve depends on the run's length: refused, and the run
        # keeps the length it had.
        refuse(
            k,
            "cosine-extended",
            [*resume, "--max-steps", "8"],
            "--cosine keeps the length",
            setup=copies("cosine"),
            protect=["run"],
        ),
        refuse(
            k,
            "new-length-refused-keeps-run-json",
            [*resume, "--max-steps", "8"],
            "step-00000004",
            setup=copies("base", then=spoil),
            protect=["run/run.json"],
        ),
        refuse(
            k,
            "config-edited",
            [*resume, "--config", "cfg.json", "--max-steps", "8"],
            "changed",
            setup=edit_config,
            protect=["run"],
        ),
        work(k, "relative-paths-other-folder", [], runner=relative_paths),
    ]


def damaged_probes() -> list[Probe]:
    """Run folders damaged by hand or by a disk: each must be refused in one line,
    and the folder's other files stay as they were. `pretrain --resume` meets
    them in a run stopped before its end, as after Ctrl-C (no final model yet, and
    no new length given, so that run.json has no reason to change)."""
    k = "damaged"
    step = "checkpoints/step-00000004"
    latest = "checkpoints/latest"
    stopped = both(
        put("model.safetensors", None),
        edit_json("run.json", lambda d: d.pop("finished_step")),
        edit_json("run.json", lambda d: d["settings"].update(max_steps=8)),
    )
    renamed = both(
        lambda c, r: (r / step).rename(r / "checkpoints/step-00000006"),
        put(latest, "step-00000006"),
    )

    def foreign(ctx: Ctx, run: Path) -> None:
        """The latest checkpoint of another run (the instruction model, same shape)."""
        other = ctx.ws.base("inst") / "checkpoints"
        name = (other / "latest").read_text().strip()
        shutil.rmtree(run / "checkpoints")
        (run / "checkpoints").mkdir()
        shutil.copytree(other / name, run / "checkpoints" / name)
        (run / latest).write_text(name)

    def truncate(rel: str) -> Callable:
        def then(ctx: Ctx, run: Path) -> None:
            data = (run / rel).read_bytes()
            (run / rel).write_bytes(data[: len(data) // 2])

        return then

    def r(name: str, then, says: str, but: str) -> Probe:
        """A stopped run, damaged by `then`, that `pretrain --resume` must refuse;
        every file but `but` protected."""
        files = ["run.json", "history.json", "tokenizer.json", step, latest]
        protect = [f"run/{file}" for file in files if file != but]
        resume = "llmbook pretrain --out run --resume --quiet".split()
        setup = copies("base", then=both(stopped, then))
        return refuse(k, name, resume, says, setup=setup, protect=protect)

    def finished(name: str, then, says: str) -> Probe:
        """A finished run, damaged by `then`, given a new length by --resume."""
        keep = ["run/model.safetensors", "run/checkpoints"]
        setup = copies("base", then=then)
        return refuse(k, name, RESUME, says, setup=setup, protect=keep)

    def g(name: str, then, says: str) -> Probe:
        """A damaged run that `generate` must refuse."""
        setup = copies("base", then=then)
        return refuse(k, name, GENERATE, says, setup=setup, protect=["run"])

    def classifier(ctx: Ctx, run: Path) -> None:
        shutil.copy(
            ctx.ws.base("clf") / "classifier.safetensors", run / "model.safetensors"
        )

    as_folder = both(put(latest, None), lambda c, run: (run / latest).mkdir())
    garbage = b"garbage" * 10
    ckpt = "step-00000004"
    return [
        r(
            "latest-names-missing-folder",
            put(latest, "step-00000099"),
            "latest",
            latest,
        ),
        r("latest-binary", put(latest, b"\x00\xff\xfe" * 30), "latest", latest),
        # Without its pointer the checkpoints are still there: the run resumes from
        # the newest (as a resume is exact, its weights are those of a run from
        # step 0 either way; tests/test_run_folder.py checks which folder is used).
        work(
            k,
            "latest-deleted-then-new-length",
            RESUME,
            resumed_to(8),
            setup=copies("base", then=put(latest, None)),
        ),
        finished("latest-is-a-folder-then-new-length", as_folder, "latest"),
        r("run-json-garbage", put("run.json", "{not json"), "run.json", "run.json"),
        r(
            "run-json-no-settings",
            edit_json("run.json", lambda d: d.pop("settings")),
            "run.json",
            "run.json",
        ),
        r(
            "run-json-model-garbage",
            edit_json("run.json", lambda d: d["model"].update(emb_dim="wide")),
            "run.json",
            "run.json",
        ),
        r("checksums-garbage", put(f"{step}/checksums.json", "[[["), ckpt, step),
        r("checksums-missing", put(f"{step}/checksums.json", None), ckpt, step),
        r("state-garbage", put(f"{step}/state.json", "nope"), ckpt, step),
        r("state-missing", put(f"{step}/state.json", None), ckpt, step),
        r("checkpoint-of-another-run", foreign, "another run", step),
        r("checkpoint-renamed-to-other-step", renamed, "step", step),
        r(
            "checkpoint-model-truncated",
            truncate(f"{step}/model.safetensors"),
            ckpt,
            step,
        ),
        r(
            "checkpoint-optimizer-garbage-resummed",
            resum(ckpt, "optimizer.pt", garbage),
            "optimizer.pt",
            step,
        ),
        r(
            "checkpoint-rng-garbage-resummed",
            resum(ckpt, "rng.pt", garbage),
            "rng.pt",
            step,
        ),
        r(
            "checkpoint-model-not-safetensors-resummed",
            resum(ckpt, "model.safetensors", garbage),
            "model.safetensors",
            step,
        ),
        g("model-not-safetensors", put("model.safetensors", "<html/>"), "model.safet"),
        g(
            "model-header-claims-huge-config",
            put("model.safetensors", HUGE_MODEL),
            "model",
        ),
        g("model-is-a-classifier", classifier, "classifier"),
        g("tokenizer-missing", put("tokenizer.json", None), "tokenizer"),
    ]


def judge_probes() -> list[Probe]:
    k = "judge"

    def ev(name: str, *more: str) -> list[str]:
        cmd = "llmbook evaluate --responses $RESP --judge-timeout 2 --judge-url"
        return [*cmd.split(), f"$JUDGE/{name}", *more]

    def mean(name: str, behaviour: str, value: str, *more: str) -> Probe:
        """Every answer the judge gives must count as `value` (or none)."""
        return work(k, name, ev(behaviour, *more), output_has(f"mean {value} of 100"))

    def kept_scores(ctx: Ctx, res: Result) -> str | None:
        try:
            entries = json.loads(ctx.path("scores.json").read_text("utf-8"))
        except (OSError, ValueError):
            return "the score given before the failure was not kept"
        if entries[0].get("judge_score") != 80:
            return f"kept {entries[0].get('judge_score')!r}, not 80"
        return None

    url = "llmbook evaluate --responses $RESP --judge-url".split()
    return [
        mean("score-8-of-10", "eight-of-ten", "80.0"),
        mean("score-7.5-of-10", "7.5-of-10", "75.0"),
        mean("score-120-of-100-is-none", "120-of-100", "no score"),
        mean("score-12-of-10-is-none", "12-of-10", "no score"),
        mean("score-openai-api", "openai", "90.0", "--judge-api", "openai"),
        refuse(k, "trickling-reply", ev("trickle"), "within", timeout=40),
        refuse(k, "reply-not-json", ev("not-json"), "without an answer"),
        refuse(k, "reply-not-utf8", ev("not-utf8"), "without an answer"),
        refuse(k, "redirect", ev("redirect"), "redirect"),
        refuse(k, "content-not-a-string", ev("not-string"), "without an answer"),
        refuse(
            k,
            "500-after-one-score",
            ev("fails-second", "--out", "scores.json"),
            "scores so far",
            loss=kept_scores,
        ),
        refuse(k, "url-without-scheme", [*url, "127.0.0.1:11434"], "http://"),
        refuse(k, "url-with-space", [*url, "http://127.0.0.1 :11434"], "space"),
        refuse(k, "url-bad-port", [*url, "http://127.0.0.1:99999"], "99999"),
        refuse(k, "nothing-listening", [*url, "http://127.0.0.1:$PORT"], "no judge"),
    ]


def smaller_probes() -> list[Probe]:
    k = "smaller"
    stdin = ["llmbook", "pretrain", "-", "--out", "run", *tiny()]
    story = "llmbook pretrain $VERDICT --out run".split()
    ran = exists("run/model.safetensors")
    pipe = every(ran, manifest("run", lambda d: pipe_named(d["data"]["files"])))
    broken = (
        '"$0" -m llmbook generate --checkpoint "$1" --prompt "I had always" '
        "--max-new-tokens 300 --seed 1 --device cpu | head -c 10 >/dev/null; "
        'exit "${PIPESTATUS[0]}"'
    )
    substitution = '"$0" -m llmbook pretrain <(cat "$1") "${@:2}"'
    classify = "llmbook classify --checkpoint $CLF".split()
    disk = {"setup": writes({"disk/.keep": ""})}

    def no_stderr(ctx: Ctx, res: Result) -> str | None:
        return f"stderr: {last_line(res.err)!r}" if res.err.strip() else None

    def two_labels(ctx: Ctx, res: Result) -> str | None:
        labels = [line.split("\t")[0] for line in res.out.splitlines()]
        wrong = len(labels) != 2 or not set(labels) <= {"ham", "spam"}
        return f"stdout: {res.out[:80]!r}" if wrong else None

    def option(name: str, value: str, shown: str | None = None) -> Probe:
        """A value the option must refuse."""
        cmd = [*story, f"--{name}", value]
        return refuse(k, f"{name}-{shown or value}", cmd, f"--{name}")

    return [
        refuse(k, "stdin-closed", stdin, "closed", shell="exec <&-"),
        refuse(k, "stdin-not-utf8", stdin, "UTF-8", stdin=b"caf\xe9 " * 3000),
        work(k, "fifo-text", [], pipe, runner=fifo_text),
        work(
            k,
            "process-substitution-text",
            ["bash", "-c", substitution, "$PY", STORY, "--out", "run", *tiny()],
            pipe,
        ),
        option("val-share", "0"),
        option("val-share", "1"),
        option("val-share", "nan"),
        option("lr", "nan"),
        option("lr", "inf"),
        option("seed", str(2**64), "2**64"),
        # A careful user expects a batch larger than the text to be refused in
        # words that name the batch, not the context.
        refuse(
            k,
            "batch-larger-than-text",
            [*PRETRAIN, "--batch-size", "100000"],
            "batch",
        ),
        work(
            k,
            "generate-into-closed-pipe",
            ["bash", "-c", broken, "$PY", "$BASE"],
            no_stderr,
        ),
        refuse(
            k,
            "torchrun-half-set",
            PRETRAIN,
            "half set",
            env={"RANK": "0", "WORLD_SIZE": "2"},
            check=absent("run"),
        ),
        work(k, "torchrun-others-never-come", [], runner=torchrun_alone, timeout=40),
        work(
            k,
            "umask-027",
            PRETRAIN,
            every(ran, modes("run", 0o640, 0o750)),
            shell="umask 027",
        ),
        refuse(
            k,
            "disk-full-pretrain",
            ["llmbook", "pretrain", STORY, "--out", "disk/run", *tiny()],
            "disk/run",
            disk=("disk", 65536, True),
            **disk,
        ),
        refuse(
            k,
            "disk-fills-at-first-checkpoint",
            ["llmbook", "pretrain", STORY, "--out", "disk/run", *tiny()],
            "disk/run",
            disk=("disk", 36864, False),
            **disk,
        ),
        refuse(
            k,
            "disk-full-evaluate-out",
            ["llmbook", "evaluate", "--responses", "$RESP", "--out", "disk/s.json"],
            "disk/s.json",
            disk=("disk", 65536, True),
            **disk,
        ),
        work(
            k, "classify-texts", [*classify, "Win a prize now!", "At one?"], two_labels
        ),
    ]


def pipe_named(files: list[str]) -> str | None:
    return None if files == ["<pipe>"] else f"run.json records {files}"


LIBRARY = """\
import resource
import sys

import torch

resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # no swapping the box
try:
{body}
except (ValueError, OSError) as error:
    print("error: " + " ".join(str(error).split()), file=sys.stderr)
    sys.exit(1)
"""
MODEL = """
from llmbook.model import GPTConfig, GPTModel
torch.manual_seed(0)
model = GPTModel(GPTConfig.preset("debug", vocab_size=300))
"""
SAVE_AS = """
from safetensors.torch import save_file
state = {{k: v.to({dtype}) for k, v in model.state_dict().items()}}
meta = {{"format": "llmbook-gpt", "config": __import__("json").dumps(vars(model.cfg))}}
save_file(state, "w.safetensors", metadata=meta)
from llmbook.checkpoint import load_model
loaded = load_model("w.safetensors")
assert torch.isfinite(loaded(torch.tensor([[1, 2, 3]]))).all()
"""
LORA = MODEL + "from llmbook.lora import replace_linear_with_lora\n"
MERGED_TIED = """
from llmbook.model import GPTConfig, GPTModel
from llmbook.lora import replace_linear_with_lora, merge_lora
from llmbook.checkpoint import save_model, load_model
torch.manual_seed(0)
model = GPTModel(GPTConfig.preset("debug", vocab_size=300, tie_weights=True)).eval()
replace_linear_with_lora(model, 4, 8)
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith(".B"):
            p.normal_()
merge_lora(model)
save_model(model, "merged.safetensors")
loaded = load_model("merged.safetensors").eval()
ids = torch.tensor([[1, 2, 3, 4]])
with torch.no_grad():
    assert torch.allclose(model(ids), loaded(ids), atol=1e-5), "outputs differ"
"""


def library_probes() -> list[Probe]:
    k = "library"

    def lib(name: str, body: str, says: str | None, **files: bytes) -> Probe:
        """`body` in a script that turns ValueError and OSError into one line; with
        `says` it must refuse, else work."""
        lines = body.strip().splitlines()
        code = LIBRARY.format(body="\n".join("    " + line for line in lines))
        setup = writes(
            {"probe.py": code, **{f"{n}.safetensors": b for n, b in files.items()}}
        )
        expect = "refuse" if says else "work"
        return Probe(
            k, name, ["python", "probe.py"], expect, says, setup=setup, timeout=60
        )

    load = "from llmbook.checkpoint import load_model\nload_model('{}.safetensors')"

    def quick(ctx: Ctx, res: Result) -> str | None:
        return f"took {res.seconds:.0f} s" if res.seconds > 30 else None

    huge = lib("load-model-huge-header", load.format("huge"), "huge", huge=HUGE_MODEL)
    huge.check = quick
    return [
        huge,
        lib("load-model-data-cut-off", load.format("cut"), "cut", cut=HUGE_MODEL[:-64]),
        lib(
            "load-model-integer-weights",
            MODEL + SAVE_AS.format(dtype="torch.int32"),
            "numbers",
        ),
        lib(
            "load-model-half-weights",
            MODEL + SAVE_AS.format(dtype="torch.float16"),
            None,
        ),
        lib(
            "lora-alpha-nan",
            LORA + "replace_linear_with_lora(model, 4, float('nan'))",
            "alpha",
        ),
        lib(
            "lora-alpha-inf",
            LORA + "replace_linear_with_lora(model, 4, float('inf'))",
            "alpha",
        ),
        lib(
            "lora-train-whole-misspelt",
            LORA + "replace_linear_with_lora(model, 4, 8, train_whole=['out_haed'])",
            "out_haed",
        ),
        lib("lora-merged-tied-model-saved-and-loaded", MERGED_TIED, None),
    ]


def all_probes(ws: Workspace) -> list[Probe]:
    probes = [
        *run_folder_probes(),
        *finetune_probes(ws),
        *labelled_probes(ws),
        *resume_probes(),
        *damaged_probes(),
        *judge_probes(),
        *smaller_probes(),
        *library_probes(),
    ]
    return probes


# ---------------------------------------------------------------------------------
# Running a probe and judging its outcome


def snapshot(root: Path, rels: list[str]) -> dict[str, str]:
    """sha256 of every file under the paths `rels` (a lock file aside)."""
    sums = {}
    for rel in rels:
        top = root / rel
        files = (
            [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
        )
        for path in files:
            if path.is_file() and path.name != ".lock":
                sums[str(path.relative_to(root))] = sha256(path)
    return sums


def wrapped(probe: Probe, cmd: list[str]) -> list[str] | None:
    """The command inside the shell, mount or umask the probe asks for; None where
    this machine cannot give it."""
    if probe.shell:
        cmd = ["sh", "-c", probe.shell + ' && exec "$@"', "sh", *cmd]
    if (probe.disk or (probe.readonly and is_root())) and not can_mount():
        return None  # root writes in any folder: only a read-only mount stops it
    if probe.readonly and is_root():
        mount = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1"'
        cmd = [
            "unshare",
            "-m",
            "sh",
            "-c",
            mount + ' && shift && exec "$@"',
            "sh",
            probe.readonly,
            *cmd,
        ]
    if probe.disk:
        folder, size, fill = probe.disk
        mount = 'mount -t tmpfs -o size="$2" tmpfs "$1"'
        filled = 'cat /dev/zero > "$1/.fill" 2>/dev/null; '
        cmd = [
            "unshare",
            "-m",
            "sh",
            "-c",
            mount + " && { " + (filled if fill else "") + 'shift 2; exec "$@"; }',
            "sh",
            folder,
            str(size),
            *cmd,
        ]
    return cmd


def run_probe(ws: Workspace, probe: Probe, folder: Path) -> tuple[str, str, Result]:
    """Run one probe in `folder`; its outcome, the reason, and what it did."""
    folder.mkdir(parents=True)
    ctx = Ctx(ws, folder, probe)
    JudgeHandler.counts.clear()
    if probe.setup:
        probe.setup(ctx)
    before = snapshot(folder, probe.protect)
    if probe.runner:
        res = probe.runner(ctx)
    else:
        cmd = wrapped(probe, ctx.expand(probe.cmd))
        if cmd is None:
            return "SKIP", "needs root and unshare", Result(None)
        locked = folder / probe.readonly if probe.readonly and not is_root() else None
        if locked:
            locked.chmod(0o555)  # what a read-only mount does, for a user not root
        try:
            res = ctx.run(cmd, env=probe.env, stdin=probe.stdin)
        finally:
            if locked:
                locked.chmod(0o755)
    outcome, reason = judge(ctx, probe, res, before)
    return outcome, reason, res


def judge(ctx: Ctx, probe: Probe, res: Result, before: dict) -> tuple[str, str]:
    if res.timed_out:
        return "HANG", f"still running after {res.seconds:.0f} s"
    after = snapshot(ctx.dir, probe.protect)
    gone = [p for p in before if p not in after]
    changed = [p for p in before if p in after and before[p] != after[p]]
    if gone or changed:
        return "DATA-LOSS", ", ".join(
            [f"{p} vanished" for p in gone[:2]] + [f"{p} changed" for p in changed[:2]]
        )
    lost = probe.loss(ctx, res) if probe.loss else None
    if lost and res.rc != 0:
        return "DATA-LOSS", lost
    if res.finding:
        return res.finding
    added = [p for p in after if p not in before and ".tmp" not in p]
    if probe.expect == "work":
        if res.rc != 0:
            return "SILENT-WRONG", f"exit {res.rc} where it should work"
        problem = probe.check(ctx, res) if probe.check else None
        if problem:
            return "SILENT-WRONG", problem
        if "Traceback" in res.err:
            return "UNCLEAR", "worked, with a traceback on stderr"
        return "OK", ""
    if res.rc == 0:
        return "SILENT-WRONG", "exit 0 where a refusal was due"
    problem = probe.check(ctx, res) if probe.check else None
    if problem:
        return "SILENT-WRONG", problem
    if added:
        return "SILENT-WRONG", f"refused, but wrote {added[0]} into protected files"
    why = unclear(res.err)
    if why:
        return "UNCLEAR", why
    if probe.says and probe.says.lower() not in res.err.lower():
        return "UNCLEAR", f"does not say {probe.says!r}"
    return "CLEAR", ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep", type=Path, help="make the workspace here, and keep it"
    )
    parser.add_argument(
        "--only", default="", help="probes whose name or kind holds this"
    )
    args = parser.parse_args(argv)
    # Children get SIGINT's default action even if this process was started with it
    # ignored (in the background): a handled signal is reset by exec, an ignored one
    # is not, and the Ctrl-C probes need it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.keep:
        if args.keep.exists():
            shutil.rmtree(args.keep)
        args.keep.mkdir(parents=True)
        root = args.keep.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="probe-cli-"))
    started = time.monotonic()
    results: list[tuple[str, Probe]] = []
    try:
        with judge_server() as url:
            ws = Workspace(root, url)
            probes = [p for p in all_probes(ws) if args.only in p.name + " " + p.kind]
            if not probes:
                print(f"no probe matches {args.only!r}", file=sys.stderr)
                return 2
            names = Counter(p.name for p in probes)
            assert max(names.values()) == 1, names.most_common(3)
            for number, probe in enumerate(probes, 1):
                folder = root / "p" / f"{number:03d}-{probe.name}"
                outcome, reason, res = run_probe(ws, probe, folder)
                results.append((outcome, probe))
                reason = f"[{reason}] " if reason else ""
                print(
                    f"{outcome:<12} {probe.kind:<10} {probe.name:<42} {reason}"
                    f"{last_line(res.err)[:100]}",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    counts = Counter(outcome for outcome, _ in results)
    print("\n" + "  ".join(f"{o} {counts[o]}" for o in OUTCOMES if counts[o]))
    kinds = list(dict.fromkeys(p.kind for _, p in results))
    print(f"{'':<12}" + "".join(f"{o:>13}" for o in OUTCOMES))
    for kind in kinds:
        row = Counter(o for o, p in results if p.kind == kind)
        print(f"{kind:<12}" + "".join(f"{row[o]:>13}" for o in OUTCOMES))
    print(f"{len(results)} probes in {time.monotonic() - started:.0f} s")
    return 1 if any(o in FAILING for o, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
