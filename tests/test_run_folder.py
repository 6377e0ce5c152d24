"""Run folders (chapter 7): a manifest that names the kind of run, one writer at a
time, and nothing of a user's lost or mixed; model files checked before memory is
taken for them."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from llmbook.checkpoint import (
    RunFolderError,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    open_run_folder,
    read_manifest,
    save_checkpoint,
    save_model,
)
from llmbook.model import GPTConfig, GPTModel

# Ctrl-C works as in a terminal, also where the test run was started in the
# background (which makes its children ignore SIGINT).
HOLD = textwrap.dedent(
    """
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from llmbook.checkpoint import open_run_folder
    with open_run_folder(sys.argv[1], "pretraining"):
        print("holding", flush=True)
        time.sleep(60)
    """
)


def holder(folder) -> subprocess.Popen:
    """Another process that claims `folder` and keeps it; returns once it holds it."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "holding\n"
    return process


def claim(folder, kind: str, resume: bool = False):
    """Claim and release the folder at once, as a run that ends at once would."""
    with open_run_folder(folder, kind, resume) as run:
        return run


def test_a_new_folder_gets_a_manifest_and_a_lock_with_the_pid(tmp_path):
    folder = tmp_path / "a" / "run"
    with open_run_folder(folder, "classifier") as run:
        assert (folder / ".lock").read_text() == f"{os.getpid()}\n"
        manifest = read_manifest(folder)
        assert manifest is not None and manifest.keys() == {"kind", "id"}
        assert manifest["kind"] == "classifier" and len(manifest["id"]) == 32
        run.save_manifest(settings={"lr": 0.1})
    assert read_manifest(folder) == manifest | {"settings": {"lr": 0.1}}
    with open_run_folder(tmp_path / "b", "classifier") as other:
        assert other.manifest["id"] != manifest["id"]  # every run its own


def test_a_folder_another_process_holds_is_refused_with_its_pid(tmp_path):
    process = holder(tmp_path)
    try:
        with pytest.raises(RunFolderError, match=f"in use by process {process.pid}"):
            claim(tmp_path, "pretraining", resume=True)
    finally:
        process.kill()
        process.wait()
    # The holder was killed (SIGKILL): the operating system dropped its lock, and
    # the pid it left in .lock does not block the next run.
    with open_run_folder(tmp_path, "pretraining"):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_within_one_process_a_second_claim_is_refused_too(tmp_path):
    with open_run_folder(tmp_path, "pretraining"), pytest.raises(RunFolderError):
        claim(tmp_path, "pretraining")


def test_a_lock_file_left_behind_is_no_lock(tmp_path):
    (tmp_path / ".lock").write_text("999999999\n")  # no such process
    with open_run_folder(tmp_path, "instruction") as run:
        assert run.manifest["kind"] == "instruction"


def work(folder) -> None:
    """Leave what a run leaves that a new run must not overwrite: a model."""
    save_model(
        GPTModel(GPTConfig.preset("debug", vocab_size=10)), folder / "m.safetensors"
    )


@pytest.mark.parametrize(
    "kind, resume, message",
    [
        ("classifier", False, "holds a pretraining run, not a classifier"),
        ("instruction", True, "holds a pretraining run, not an instruction model"),
        ("pretraining", False, "holds a pretraining run already: resume it"),
    ],
)
def test_a_folder_with_a_run_refuses_another_run(tmp_path, kind, resume, message):
    with open_run_folder(tmp_path, "pretraining"):
        work(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RunFolderError, match=message):
        claim(tmp_path, kind, resume)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with open_run_folder(tmp_path, "pretraining", resume=True) as run:
        assert run.manifest["kind"] == "pretraining"


def test_folders_that_cannot_be_run_folders_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    unknown = r"files that no llmbook run wrote \(notes"
    with pytest.raises(RunFolderError, match=unknown):
        claim(tmp_path, "pretraining")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        claim(tmp_path / "notes.txt", "pretraining")
    new = r"no run to resume \(no such folder\): start a new one"
    with pytest.raises(RunFolderError, match=new):
        claim(tmp_path / "new", "pretraining", resume=True)
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text("{not json")
    with pytest.raises(RunFolderError, match=r"old/run.json is damaged"):
        claim(tmp_path / "old", "pretraining", resume=True)


def test_a_run_that_fails_before_saving_anything_leaves_the_folder_as_it_was(
    tmp_path,
):
    with (
        pytest.raises(KeyboardInterrupt),
        open_run_folder(tmp_path / "new", "pretraining"),
    ):
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()  # it made the folder: it takes it away
    with (
        pytest.raises(ValueError, match="empty"),
        open_run_folder(tmp_path, "pretraining"),
    ):
        raise ValueError("the text is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    with pytest.raises(RunFolderError, match="holds no run to resume"):
        claim(tmp_path, "pretraining", resume=True)
    # A run that saved a model keeps its manifest, whatever happens after.
    with pytest.raises(OSError), open_run_folder(tmp_path, "pretraining"):
        work(tmp_path)
        raise OSError("disk full")
    assert (read_manifest(tmp_path) or {})["kind"] == "pretraining"


def test_a_run_of_before_manifests_is_a_pretraining_run(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"command": "pretrain"}))
    work(tmp_path)
    with open_run_folder(tmp_path, "pretraining", resume=True) as run:
        assert run.manifest["kind"] == "pretraining"


def test_a_header_that_claims_a_giant_model_is_refused_before_any_memory(tmp_path):
    small = GPTModel(GPTConfig.preset("debug", vocab_size=10))
    path = tmp_path / "m.safetensors"
    save_model(small, path)
    giant = vars(small.cfg) | {"vocab_size": 10**9}  # 4 TB of embeddings in float32
    state = {k: v.contiguous() for k, v in small.state_dict().items()}
    state.pop("out_head.weight", None)
    save_file(state, str(path), {"format": "llmbook-gpt", "config": json.dumps(giant)})
    with pytest.raises(ValueError, match=r"tok_emb.weight: \(10, 32\) in the file"):
        load_model(path)


def test_weights_stored_as_integers_are_refused(tmp_path):
    model = GPTModel(GPTConfig.preset("debug", vocab_size=10))
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["final_norm.scale"] = state["final_norm.scale"].to(torch.int64)
    header = {"format": "llmbook-gpt", "config": json.dumps(vars(model.cfg))}
    save_file(state, str(path), header)
    with pytest.raises(ValueError, match="final_norm.scale: I64 numbers in the file"):
        load_model(path)


def test_a_holder_stopped_by_ctrl_c_releases_the_folder(tmp_path):
    process = holder(tmp_path)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) != 0
    with open_run_folder(tmp_path, "pretraining") as run:
        assert run.manifest["kind"] == "pretraining"


def test_what_a_killed_process_left_behind_is_cleared_at_the_next_claim(tmp_path):
    (tmp_path / "checkpoints" / ".step-00000005.x1y2").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".step-00000005.x1y2" / "model.safetensors").touch()
    (tmp_path / "checkpoints" / ".latest.tmp").write_text("step-00000005")
    (tmp_path / ".model.safetensors.4242.abcd1234.tmp").write_bytes(b"half")
    (tmp_path / "run.json").write_text('{"kind": "pretraining"}')
    with open_run_folder(tmp_path, "pretraining"):
        pass
    left = sorted(p.name for p in tmp_path.rglob("*"))
    assert left == [".lock", "checkpoints", "run.json"]


def test_checkpoints_get_the_permissions_of_any_new_folder_and_say_disk_full(
    tmp_path, monkeypatch
):
    model = GPTModel(GPTConfig.preset("debug", vocab_size=10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mask = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path, model, optimizer, {"step": 1})
    finally:
        os.umask(mask)
    assert folder.stat().st_mode & 0o777 == 0o755  # mkdtemp alone gives 0o700
    for file in ["model.safetensors", "optimizer.pt", "state.json"]:
        assert (folder / file).stat().st_mode & 0o777 == 0o644, file  # not 0o600

    def full(*args, **kwargs):  # what torch.save says when the disk is full
        raise RuntimeError("PytorchStreamWriter failed writing file data/0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"checkpoint step-00000002 in .* disk full"):
        save_checkpoint(tmp_path, model, optimizer, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001"]


def test_a_damaged_checkpoint_folder_is_named_not_parsed(tmp_path):
    """Issue 34: a damaged `latest` or checksums.json gave a JSON parser's message,
    a KeyError, or resumed from the wrong place."""
    model = GPTModel(GPTConfig.preset("debug", vocab_size=10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = save_checkpoint(tmp_path, model, optimizer, {"step": 3})
    (tmp_path / "latest").write_text("../../etc")
    with pytest.raises(ValueError, match=r"latest is damaged: it names '../../etc'"):
        load_checkpoint(tmp_path, model, optimizer)
    (tmp_path / "latest").write_text("step-00000009")  # a folder that is not there
    with pytest.raises(ValueError, match="not a checkpoint folder beside it"):
        latest_checkpoint(tmp_path)
    (tmp_path / "latest").write_text(saved.name)
    (saved / "checksums.json").write_text("{half")
    with pytest.raises(ValueError, match=r"the checkpoint .*step-00000003 is damaged"):
        load_checkpoint(tmp_path, model, optimizer)
    # A renamed folder: its name would have set the step that training resumes at.
    (saved / "checksums.json").unlink()
    saved = save_checkpoint(tmp_path, model, optimizer, {"step": 3})
    renamed = saved.rename(tmp_path / "step-99999999")
    (tmp_path / "latest").write_text(renamed.name)
    holds = r"step-99999999 holds the state of step 3, not of the step its name says"
    with pytest.raises(ValueError, match=holds):
        load_checkpoint(tmp_path, model, optimizer)
    with pytest.raises(ValueError, match=holds):
        checkpoint_step(renamed)
    # Without `latest` (deleted, or a kill before it was written), the newest folder.
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == renamed
    (tmp_path / "latest").mkdir()
    with pytest.raises(ValueError, match="latest is damaged: a folder, not the file"):
        latest_checkpoint(tmp_path)


def test_checkpoint_files_of_another_program_and_a_full_disk_are_named(
    tmp_path, monkeypatch
):
    """Issue 34's third probe: an optimizer.pt that is no torch file (its checksum
    made to match) and a disk that fills while safetensors writes gave tracebacks."""
    import llmbook.checkpoint
    from llmbook.files import file_sha256

    model = GPTModel(GPTConfig.preset("debug", vocab_size=10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = save_checkpoint(tmp_path, model, optimizer, {"step": 1})
    (saved / "optimizer.pt").write_bytes(b"not a pickle")
    sums = json.loads((saved / "checksums.json").read_text())
    sums["optimizer.pt"] = file_sha256(saved / "optimizer.pt")
    (saved / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(ValueError, match="optimizer.pt is damaged: torch cannot read"):
        load_checkpoint(tmp_path, model, optimizer)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left")

    monkeypatch.setattr(llmbook.checkpoint, "save_file", full)
    with pytest.raises(OSError, match=r"could not write .*m.safetensors \(Error"):
        save_model(model, tmp_path / "m.safetensors")
    assert not list(tmp_path.glob("*m.safetensors*"))  # no temporary file left


def test_a_full_disk_is_named_when_the_folder_is_claimed(tmp_path, monkeypatch):
    """The third probe: writing the lock's pid on a full disk raised a bare errno."""
    import llmbook.checkpoint

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(llmbook.checkpoint.os, "write", full)
    with pytest.raises(RunFolderError, match=r"cannot write in .*\(No space left"):
        claim(tmp_path / "run", "pretraining")
