"""Smoke run of benchmarks/lightgcn_peer.py: the RecBole split export and the pocketrec side in --quick mode.

RecBole itself is not needed (its side runs in .venv-recbole); the export is checked against the split.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def peer():
    sys.path.insert(0, str(BENCH))
    try:
        import lightgcn_peer
    finally:
        sys.path.remove(str(BENCH))
    return lightgcn_peer


@pytest.fixture(scope="module")
def quick_split(peer):
    from pocketrec.data.errors import DataError

    try:
        return peer.load_split("ml-100k", quick=True)
    except (DataError, FileNotFoundError) as err:
        pytest.skip(f"ml-100k is not available here: {err}")


def test_export_writes_the_same_pairs(peer, quick_split, tmp_path):
    data = quick_split
    assert data.num_users == peer.QUICK["users"]
    assert (data.item_counts()[1:] > 0).all()  # the subset's catalogue is its training items
    counts = peer.export_split(data, tmp_path, "ml-100k-split")
    assert counts == {s: int(data.matrix(s).nnz) for s in peer.SPLITS}
    seen = set()
    for s in peer.SPLITS:
        lines = (tmp_path / "ml-100k-split" / f"ml-100k-split.{s}.inter").read_text().splitlines()
        assert lines[0] == "user_id:token\titem_id:token"
        pairs = {tuple(map(int, ln.split("\t"))) for ln in lines[1:]}
        users, items = data.pairs(s)
        assert pairs == set(zip(users.tolist(), items.tolist(), strict=True))
        assert not pairs & seen  # the splits are disjoint
        seen |= pairs


def test_pocketrec_side_quick(quick_split, tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "lightgcn_peer.py"), "--side", "pocketrec", "--dataset",
                           "ml-100k", "--quick", "--threads", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")][-1][4:])
    assert row["epochs_trained"] == 3 and 1 <= row["best_epoch"] <= 3
    assert row["users"] == 300 and row["dim"] == 64 and row["layers"] == 3
    assert all(0.0 < row["test"][f"{m}@{k}"] <= 1.0 for m in ("recall", "ndcg") for k in (10, 20, 50))
    assert row["test"]["recall@20"] > 0.05  # 3 epochs already beat chance (~20/1464 of the catalogue)
    assert row["epoch_seconds"] > 0 and row["peak_rss_mib"] > 0
