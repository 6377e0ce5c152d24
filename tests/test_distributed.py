"""llmbook.distributed: torchrun's environment, and DDP training on 2 CPU processes
(gloo) that equals one process with the same global batch and resumes exactly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_worker import train_run
from llmbook.checkpoint import latest_checkpoint, load_model
from llmbook.data import create_dataloader
from llmbook.distributed import (
    ProcessPlace,
    distributed,
    distributed_loader,
    mean_over_processes,
    setup_distributed,
    torchrun_place,
    world_size,
)

WORKER = Path(__file__).with_name("ddp_worker.py")
FULL = {
    "RANK": "1",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "2",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}


def test_the_place_is_read_from_torchruns_variables():
    assert torchrun_place({}) is None
    assert torchrun_place(FULL) == ProcessPlace(rank=1, local_rank=1, world_size=2)
    place = torchrun_place(FULL)
    assert place is not None and not place.is_main


@pytest.mark.parametrize("missing", ["RANK", "MASTER_PORT", "LOCAL_RANK"])
def test_a_half_set_environment_names_what_is_missing(missing):
    environ = {k: v for k, v in FULL.items() if k != missing}
    with pytest.raises(RuntimeError, match=f"half set.*but not {missing}"):
        torchrun_place(environ)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"RANK": "one"}, "whole numbers"),
        ({"RANK": "2"}, "do not fit together"),
        ({"WORLD_SIZE": "0"}, "do not fit together"),
        ({"LOCAL_RANK": "-1"}, "do not fit together"),
    ],
)
def test_inconsistent_variables_are_refused(change, message):
    with pytest.raises(RuntimeError, match=message):
        torchrun_place({**FULL, **change})


def test_without_torchrun_one_process_runs_alone(monkeypatch):
    for name in FULL:
        monkeypatch.delenv(name, raising=False)
    assert setup_distributed() == ProcessPlace(rank=0, local_rank=0, world_size=1)
    assert world_size() == 1
    assert mean_over_processes([torch.tensor(2.5), 1]) == [2.5, 1.0]


def test_a_process_left_waiting_for_the_others_says_so():
    """Issue 34: with torchrun's variables set but one process started, joining
    waited without a word (for gloo's 30 minutes)."""
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import llmbook.distributed as d; d.NOTE_AFTER = 0.2; "
            "d.setup_distributed('gloo')",
        ],
        env={
            **os.environ,
            **FULL,
            "RANK": "0",
            "LOCAL_RANK": "0",
            "MASTER_PORT": "29531",
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        line = waiting.stderr.readline()
    finally:
        waiting.kill()
        waiting.wait()
    assert line.startswith("process 0 is waiting for the other processes of 2 at ")
    assert "127.0.0.1:29531; if they were not started, start them all" in line


def test_the_loader_of_one_process_keeps_everything_but_the_order(verdict):
    loader = create_dataloader(verdict[:2000], 4, 16, 16, seed=3, drop_last=False)
    dealt = distributed_loader(loader, seed=3)
    assert len(dealt) == len(loader) and dealt.batch_size == 4
    seen = torch.cat([x for x, _ in dealt])
    assert sorted(map(tuple, seen.tolist())) == sorted(
        map(tuple, torch.cat([x for x, _ in loader]).tolist())
    )


def launch(*runs: dict) -> None:
    """Run the worker's `runs` one after another in one torchrun launch of two
    processes (each process start costs seconds)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    env = {k: v for k, v in os.environ.items() if k not in FULL}
    done = subprocess.run(
        [*launcher, "--nproc_per_node=2", str(WORKER), json.dumps(runs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def alone(out: Path, **run) -> dict:
    """The worker's run in this process, as one process without torchrun."""
    with distributed() as place:
        assert place.world_size == 1
        train_run(place, out, **run)
    return history_of(out)


def history_of(out: Path) -> dict:
    return json.loads((out / "history.json").read_text())


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """One launch of two processes for the three tests below: `global` with batches
    of 2 and 2 batches a step (a global step of 8); `straight` with dropout; and
    `stopped`, the same as `straight` but interrupted after 11 batches."""
    out = tmp_path_factory.mktemp("ddp")
    dropout = {"batch_size": 2, "drop": 0.2}
    launch(
        {"out": str(out / "global"), "batch_size": 2, "accum": 2},
        {"out": str(out / "straight"), **dropout},
        {"out": str(out / "stopped"), **dropout, "interrupt_after": 11},
    )
    return out


def test_two_processes_take_the_steps_of_one_with_the_global_batch(tmp_path, launched):
    out = launched / "global"
    history = history_of(out)
    one = alone(tmp_path, batch_size=4, accum=2)
    assert history["steps"] == one["steps"] and history["steps"]
    for key in ["train_losses", "val_losses", "learning_rates", "grad_norms"]:
        assert history[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    two_weights = load_model(out / "model.safetensors").state_dict()
    one_weights = load_model(tmp_path / "model.safetensors").state_dict()
    for name, tensor in two_weights.items():
        torch.testing.assert_close(tensor, one_weights[name], atol=2e-6, rtol=1e-4)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest",
        "step-00000014",
        "step-00000016",
    ]  # one set of checkpoints, written by process 0 only


def test_an_interrupted_two_process_run_with_dropout_resumes_exactly(launched):
    stopped = launched / "stopped"
    assert (stopped / "interrupted").exists()  # KeyboardInterrupt, in both processes
    assert not (stopped / "model.safetensors").exists()
    last = latest_checkpoint(stopped / "checkpoints")
    assert str(last).endswith("step-00000004")
    launch({"out": str(stopped), "batch_size": 2, "drop": 0.2, "resume": True})
    assert history_of(stopped) == history_of(launched / "straight")
    a = load_model(launched / "straight" / "model.safetensors").state_dict()
    b = load_model(stopped / "model.safetensors").state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_a_checkpoint_of_two_processes_is_not_resumed_by_one(tmp_path, launched):
    copy = tmp_path / "copy"
    shutil.copytree(launched / "global", copy)
    with pytest.raises(ValueError, match="written by a run of 2 process.es., and this"):
        alone(copy, batch_size=4, resume=True)
