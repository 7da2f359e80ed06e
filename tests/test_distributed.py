"""Data-parallel training on torch.distributed (gloo, 2 processes on this machine) against one process.

The spawned ranks (``torch.multiprocessing.spawn``, a file store) and this process run the same jobs of
``distributed_workers``; the same global batches and seed must give the same weights (float tolerance: the
sums are split across ranks), the same metrics exactly, and one checkpoint, written by rank 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import distributed_workers as jobs
import pytest
import torch
import torch.multiprocessing as mp

from pocketrec.train import distributed

WORLD = 2


@pytest.fixture(scope="module")
def ml100k():
    from pocketrec.data.errors import DataError

    try:
        return jobs.session_data()
    except DataError as err:  # recbole (which ships ml-100k) is installed by `make setup`
        pytest.skip(str(err))


def spawn(root: Path, job_list: list[tuple[str, list]], join: bool = True, timeout_s: float = jobs.TIMEOUT_S):
    root.mkdir(parents=True, exist_ok=True)
    store = root / "store"
    return mp.spawn(jobs.worker, args=(WORLD, str(store), str(root), job_list, timeout_s), nprocs=WORLD, join=join)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_same_run(single: dict, ranks: list[dict], atol: float) -> None:
    first, second = ranks
    for name, value in first["weights"].items():  # DDP keeps the replicas identical
        assert torch.equal(value, second["weights"][name]), name
    assert set(first["weights"]) == set(single["weights"])
    for name, value in single["weights"].items():
        # The attention's key bias has a zero gradient in exact arithmetic (a softmax ignores a shift), so
        # Adam turns the rounding noise of its gradient into steps: it is compared more loosely.
        tolerance = 1e-4 if name.endswith("qkv.bias") else atol
        torch.testing.assert_close(first["weights"][name], value, rtol=1e-4, atol=tolerance, msg=name)
    assert first["test"] == single["test"]
    assert first["valid"] == single["valid"]
    assert first["best_epoch"] == single["best_epoch"]
    assert first["losses"] == pytest.approx(single["losses"], rel=1e-5)


def test_two_processes_match_one(ml100k, tmp_path):
    """Session teacher, LightGCN teacher, OD-Rec and EODRec distillation, a resumed run: 2 gloo ranks vs 1."""
    _, num_windows = ml100k
    assert num_windows % jobs.BATCH == 1  # a 1-row batch: one rank trains on a padding row
    one, two = tmp_path / "one", tmp_path / "two"
    started = time.perf_counter()
    teacher = jobs.session_teacher(one / "session")
    single = [teacher, jobs.lightgcn_teacher(one / "lightgcn"),
              jobs.distill(one / "session" / "best", one / "odrec"),
              jobs.distill_eodrec(one / "session" / "best", one / "eodrec")]
    single_eval = jobs.evaluate_checkpoint(one / "session" / "best")
    # A run of one process resumed by two (rank 0 reads the checkpoint and broadcasts it) and by one.
    shutil.copytree(one / "session", one / "resumed")
    shutil.copytree(one / "session", two / "resumed")
    single.append(jobs.session_teacher(one / "resumed", epochs=3, resume=True))
    single_seconds = time.perf_counter() - started
    spawn(two, [("session_teacher", [two / "session"]), ("lightgcn_teacher", [two / "lightgcn"]),
                ("distill", [one / "session" / "best", two / "odrec"]),
                ("distill_eodrec", [one / "session" / "best", two / "eodrec"]),
                ("session_teacher", [two / "resumed", 3, True]),
                ("evaluate_checkpoint", [one / "session" / "best"])])
    ranks = [torch.load(two / f"rank-{r}.pt", weights_only=False) for r in range(WORLD)]
    for job, expected in enumerate(single):
        assert_same_run(expected, [ranks[0][job], ranks[1][job]], atol=1e-5)
    assert len(single[4]["losses"]) == 3
    # The same weights evaluated on 2 ranks: the metrics of one process, bit for bit.
    assert ranks[0][5] == single_eval and ranks[1][5] == single_eval
    for run in ("session", "lightgcn", "odrec", "eodrec", "resumed"):  # one checkpoint, rank 0's, as one process
        assert files_under(two / run) == files_under(one / run), run
    print(f"single process {single_seconds:.1f} s")


def test_killed_worker_fails_the_job_within_the_timeout(tmp_path):
    """Rank 1 is SIGKILLed mid-epoch: rank 0, left alone (nobody terminates it), ends with an error."""
    context = spawn(tmp_path, [("killed_mid_epoch", [tmp_path / "run"])], join=False)
    (tmp_path / "run").mkdir(exist_ok=True)
    survivor, killed = context.processes
    killed.join(60)
    assert (tmp_path / "run" / "killed").exists() and killed.exitcode == -9
    started = time.perf_counter()
    survivor.join(jobs.TIMEOUT_S + 15)
    waited = time.perf_counter() - started
    if survivor.is_alive():  # pragma: no cover - the failure this test exists for
        survivor.kill()
        pytest.fail(f"rank 0 still runs {waited:.0f} s after its peer was killed")
    assert survivor.exitcode != 0
    assert waited < jobs.TIMEOUT_S + 15
    error = (tmp_path / "error-0.txt").read_text()
    assert "Error" in error
    assert not (tmp_path / "rank-0.pt").exists()


def test_hung_worker_fails_the_job_within_the_timeout(tmp_path):
    """Rank 1 stops (SIGSTOP: alive, its sockets open) mid-epoch: rank 0's collective times out."""
    timeout = 4.0
    context = spawn(tmp_path, [("killed_mid_epoch", [tmp_path / "run", signal.SIGSTOP])], join=False,
                    timeout_s=timeout)
    (tmp_path / "run").mkdir(exist_ok=True)
    survivor, hung = context.processes
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run" / "killed").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.perf_counter()
        survivor.join(timeout + 20)
        waited = time.perf_counter() - started
        assert not survivor.is_alive(), f"rank 0 still runs {waited:.0f} s after its peer hung"
    finally:
        for process in (survivor, hung):
            if process.is_alive():
                process.kill()
                process.join(10)
    assert survivor.exitcode != 0 and waited < timeout + 20
    assert "timed out" in (tmp_path / "error-0.txt").read_text().lower()


def test_shard_batch_slices_disjointly_and_pads_empty_slices():
    from pocketrec.data.batching import Batch

    triples = torch.arange(15).view(5, 3)
    parts = [distributed.shard_batch(triples, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p for p, _ in parts]), triples) and not any(pad for _, pad in parts)
    single = triples[:1]
    assert [distributed.shard_batch(single, r, 2)[1] for r in range(2)] == [True, False]
    batch = Batch(torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 0, 0, 0]]),
                  torch.tensor([[2, 3, 7, 0], [5, 8, 0, 0], [9, 0, 0, 0]]))
    local, padding = distributed.shard_batch(batch, 1, 2)
    assert not padding and local.inputs.tolist() == [[4, 5], [6, 0]] and local.targets.tolist() == [[5, 8], [9, 0]]


def test_single_process_is_world_of_one():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard_weights(3, 0) == (1.0, 1.0)
    x = torch.ones(2, 3)
    assert distributed.gather_rows(x) == (x, 0)
    assert distributed.gather_ordered([(1, "b"), (0, "a")]) == ["a", "b"]
    assert distributed.on_main(lambda: 5) == 5


def test_launch_failure_names_the_failing_rank_not_the_one_that_lost_it(tmp_path):
    import json

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def recorded(name: str, message: str) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({"message": {"message": message, "extraInfo": {"py_callstack": "...",
                                                                                  "timestamp": "1"}}}))
        return str(path)

    boom = ProcessFailure(local_rank=1, pid=11, exitcode=1, error_file=recorded("boom.json", "ValueError: boom"))
    reset = ProcessFailure(local_rank=0, pid=10, exitcode=-15, error_file=recorded(
        "reset.json", "RuntimeError: [pair.cc:537] Read error: Connection reset by peer"))
    killed = ProcessFailure(local_rank=1, pid=11, exitcode=-9, error_file=str(tmp_path / "none.json"))
    message = distributed.describe_failure(ChildFailedError("pocketrec", {0: reset, 1: boom}))
    assert message.startswith("rank 1 failed: ValueError: boom; then rank 0: RuntimeError:")
    message = distributed.describe_failure(ChildFailedError("pocketrec", {0: reset, 1: killed}))
    assert message.startswith("rank 1 failed: killed by SIGKILL; then rank 0:")


def test_cli_nproc_two_trains_like_one_process(ml100k, tmp_path):
    """`pocketrec train --nproc 2` (torch's launcher, 2 workers) writes the checkpoint of the same run in one
    process, and prints once."""
    import subprocess
    import sys

    from pocketrec.backbones.lightgcn import LightGCN
    from pocketrec.train.checkpoint import read_meta
    from pocketrec.train.teacher import load_teacher_config, train_teacher

    overrides = ["encoder.dim=8", "encoder.layers=1", "train.epochs=1", "train.batch_size=8192", "train.seed=5"]
    cfg = load_teacher_config(None, [*overrides, "dataset=ml-100k", "backbone=lightgcn", "train.progress=false"])
    cfg.out = str(tmp_path / "one")
    train_teacher(LightGCN.load_dataset("ml-100k"), cfg)
    out = tmp_path / "two"
    done = subprocess.run([sys.executable, "-m", "pocketrec", "train", "--backbone", "lightgcn", "--dataset", "ml-100k",
                           "--quiet", *(f"--{o}" for o in overrides), "--out", str(out), "--nproc", "2"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_meta(out / "best")["test"] == read_meta(tmp_path / "one" / "best")["test"]
    assert files_under(out) == files_under(tmp_path / "one")
    assert "2 workers" in done.stderr and done.stderr.count("checkpoint:") == 1


def test_watchdog_ends_a_process_whose_training_stops_making_progress(monkeypatch, capsys):
    exits: list[int] = []
    monkeypatch.setattr(distributed.os, "_exit", exits.append)
    dog = distributed._Watchdog()
    dog.start(0.2)
    thread = dog._thread
    time.sleep(0.5)
    assert not exits  # not armed: loading data, learning codes
    dog.armed = 1
    dog.last = time.monotonic()
    deadline = time.monotonic() + 10
    while not exits and time.monotonic() < deadline:
        time.sleep(0.02)
    dog.stop()
    thread.join(5)
    assert exits and exits[0] == 3
    assert "no training progress" in capsys.readouterr().err
