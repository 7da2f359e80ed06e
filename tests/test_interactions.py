"""Interaction data for collaborative filtering: the LightGCN reader, the two splits, load_interactions."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from pocketrec.data import (
    DataError,
    InteractionDataset,
    Interactions,
    load_interactions,
    read_user_item_lines,
    registry,
    split_interactions,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def pairs(ds: InteractionDataset, split: str) -> set[tuple[str, str]]:
    users, items = ds.pairs(split)
    return set(zip(ds.users.decode(users), ds.items.decode(items), strict=True))


def check_invariants(ds: InteractionDataset) -> None:
    shape = (ds.num_users + 1, ds.num_items + 1)
    for split in ("train", "valid", "test"):
        m = ds.matrix(split)
        assert isinstance(m, sp.csr_matrix) and m.shape == shape and m.dtype == np.float32
        assert m.nnz == 0 or (m.data == 1).all()
        assert m[0].nnz == 0 and m[:, 0].nnz == 0  # padding row and column
    assert ds.train.multiply(ds.valid).nnz == 0
    assert ds.train.multiply(ds.test).nnz == 0
    assert ds.valid.multiply(ds.test).nnz == 0


# LightGCN layout: users 0..4; items 6 and 12 appear only in the test file
TRAIN = "0 0 1 2 3 4 5 7 8 9 10 11\n1 1 3 5\n2 2\n3 0 4 8 9 10\n4 1 2 3 4 5 7 8 9 10 11\n"
TEST = "0 12\n1 11 0\n2\n3 1\n4 6 0\n"


@pytest.fixture
def lightgcn_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "toy-gowalla"
    write(folder / "train.txt.gz", TRAIN)
    write(folder / "test.txt", TEST)
    return folder


# -------------------------------------------------------------------------------------------- reader


def test_read_user_item_lines_plain_and_gz(tmp_path: Path) -> None:
    plain = write(tmp_path / "test.txt", TEST + "\n")
    packed = write(tmp_path / "test.txt.gz", TEST.replace("\n", "\r\n"))
    expected = [("0", ["12"]), ("1", ["11", "0"]), ("2", []), ("3", ["1"]), ("4", ["6", "0"])]
    assert read_user_item_lines(plain) == read_user_item_lines(packed) == expected
    with pytest.raises(DataError, match=r"test\.txt:3: user '2' has no items"):
        read_user_item_lines(plain, allow_empty=False)


@pytest.mark.parametrize("text, match", [
    ("0 1 2\n1 3 x7 4\n", r"train\.txt:2: item id 'x7' is not a non-negative integer"),
    ("0 1 2\n\nu1 3\n", r"train\.txt:3: user id 'u1' is not a non-negative integer"),
    ("0 1 -2\n", r"train\.txt:1: item id '-2'"),
    ("0 1 2\n1 3\n0 4\n", r"train\.txt:3: user '0' already has a line \(line 1\)"),
    ("\n \n", r"train\.txt: no user lines"),
])
def test_read_user_item_lines_bad_input(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        read_user_item_lines(write(tmp_path / "train.txt", text))


# ------------------------------------------------------------------------------- LightGCN layout


def test_lightgcn_folder_round_trip(lightgcn_dir: Path) -> None:
    with pytest.warns(UserWarning, match=r"test\.txt: 2 test interaction\(s\) dropped"):
        ds = load_interactions(lightgcn_dir, seed=3)
    check_invariants(ds)
    assert ds.name == "toy-gowalla" and ds.protocol == "cf"
    assert ds.origin == str(lightgcn_dir.resolve())
    assert ds.source == f"{lightgcn_dir / 'train.txt.gz'} + {lightgcn_dir / 'test.txt'}"
    # vocabularies are train.txt's, by integer value: raw k -> k + 1
    assert ds.users.raw_ids == ["0", "1", "2", "3", "4"]
    assert ds.items.raw_ids == [str(i) for i in range(12) if i != 6]
    assert ds.items.encode("5") == 6 and ds.items.encode("7") == 7
    # train + valid is train.txt exactly; test is test.txt less the pairs of items 6 and 12
    train_file = {(u, i) for u, items in read_user_item_lines(lightgcn_dir / "train.txt.gz") for i in items}
    assert pairs(ds, "train") | pairs(ds, "valid") == train_file
    assert pairs(ds, "test") == {("1", "11"), ("1", "0"), ("3", "1"), ("4", "0")}
    assert ds.summary()["dropped_test"] == 2 and ds.summary()["dropped_valid"] == 0
    # validation: max(1, round(n / 10)) of a user's n >= 2 training items; a single item stays in train
    valid_per_user = np.diff(ds.valid.indptr)[1:].tolist()
    assert valid_per_user == [1, 1, 0, 1, 1]  # n = 11, 3, 1, 5, 10
    # seen(): valid excludes train, test excludes train + valid
    assert (ds.seen("valid") != ds.train).nnz == 0
    assert (ds.seen("test") != (ds.train + ds.valid)).nnz == 0
    with pytest.raises(ValueError, match="seen"):
        ds.seen("train")
    counts = ds.item_counts()
    assert counts.shape == (ds.num_items + 1,) and counts.dtype == np.int64 and counts[0] == 0
    assert counts.sum() == ds.train.nnz


def test_lightgcn_split_reproducible(lightgcn_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = load_interactions(lightgcn_dir, seed=1), load_interactions(lightgcn_dir, seed=1)
        others = [load_interactions(lightgcn_dir, seed=s) for s in range(2, 8)]
        none = load_interactions(lightgcn_dir, valid_fraction=0.0)
    assert pairs(a, "valid") == pairs(b, "valid") and a.fingerprint() == b.fingerprint()
    assert any(pairs(o, "valid") != pairs(a, "valid") for o in others)
    assert none.valid.nnz == 0 and pairs(none, "train") == pairs(a, "train") | pairs(a, "valid")


def test_lightgcn_user_without_training_items(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "0 1 2\n1\n2 3\n")
    write(tmp_path / "test.txt", "0 3\n")
    with pytest.raises(DataError, match=r"train\.txt:2: user '1' has no items"):
        load_interactions(tmp_path)


def test_lightgcn_test_only_items_and_overlap(tmp_path: Path) -> None:
    write(tmp_path / "train.txt", "0 1 2 3\n1 2 3\n")
    write(tmp_path / "test.txt", "0 9\n1 1 1\n7 2\n")  # 9: item only in test; 7: user only in test
    with pytest.warns(UserWarning) as record:
        ds = load_interactions(tmp_path, valid_fraction=0.0)
    messages = [str(w.message) for w in record]
    assert any("2 test interaction(s) dropped" in m for m in messages)
    assert ds.test.nnz == 1 and pairs(ds, "test") == {("1", "1")}
    write(tmp_path / "test.txt", "0 3\n1 1\n")  # 0-3 is also in train.txt: stays in train only
    with pytest.warns(UserWarning, match="1 test interaction\\(s\\) also in"):
        ds = load_interactions(tmp_path, valid_fraction=0.0)
    assert pairs(ds, "test") == {("1", "1")} and ("0", "3") in pairs(ds, "train")
    write(tmp_path / "test.txt", "0 9\n")
    with pytest.raises(DataError, match=r"test\.txt: the test split is empty"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_interactions(tmp_path)
    with pytest.raises(DataError, match="min_rating given, but the data has no ratings"):
        load_interactions(tmp_path, min_rating=4)


# ------------------------------------------------------------------------------------ random split


def table(rows: list[tuple[str, str, float]]) -> Interactions:
    return Interactions([u for u, _, _ in rows], [i for _, i, _ in rows], np.arange(len(rows)),
                        np.array([r for _, _, r in rows]), "ratings.csv")


def test_random_split_disjoint_reproducible(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{int(i)}", float(rng.integers(1, 6))) for u in range(40)
            for i in rng.choice(60, size=int(rng.integers(1, 30)), replace=False)]
    rows += rows[:25]  # duplicate (user, item) rows collapse to one
    path = write(tmp_path / "ratings.csv", "user_id,item_id,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    ds = load_interactions(path, seed=5)
    check_invariants(ds)
    distinct = {(u, i) for u, i, _ in rows}
    splits = [pairs(ds, s) for s in ("train", "valid", "test")]
    assert sum(len(s) for s in splits) + ds.dropped["valid"] + ds.dropped["test"] == len(distinct)
    assert set().union(*splits) <= distinct
    # per user: max(1, round(n * 0.1)) to test and to valid once n >= 3, else everything in train
    for user in {u for u, _ in distinct}:
        n = sum(1 for u, _ in distinct if u == user)
        uid = ds.users.encode(user)
        got = [ds.matrix(s)[uid].nnz for s in ("valid", "test")]
        expect = 0 if n < 3 else max(1, int(np.floor(n * 0.1 + 0.5)))
        assert all(g <= expect for g in got) and (n >= 3 or got == [0, 0])
    # vocabularies: training users and items only, integer-free ids sorted as strings
    assert ds.items.raw_ids == sorted({i for _, i in splits[0]})
    assert ds.users.raw_ids == sorted(ds.users.raw_ids) and ds.num_users == 40
    again, other = load_interactions(path, seed=5), load_interactions(path, seed=6)
    assert all(pairs(again, s) == pairs(ds, s) for s in ("train", "valid", "test"))
    assert pairs(other, "test") != pairs(ds, "test")
    summary = json.loads(repr(ds)[len("InteractionDataset("):-1])
    assert summary["test_interactions"] == ds.test.nnz and summary["users"] == 40
    # ratios, min_rating and k_core
    halves = load_interactions(path, ratios=(0.5, 0.0, 0.5))
    assert halves.valid.nnz == 0 and halves.test.nnz > 0.3 * len(distinct)
    good = load_interactions(path, min_rating=4)
    assert set().union(*(pairs(good, s) for s in ("train", "valid", "test"))) <= {(u, i) for u, i, r in rows if r >= 4}
    core = load_interactions(path, k_core=5)  # on distinct pairs: every kept user and item has >= 5
    kept = set().union(*(pairs(core, s) for s in ("train", "valid", "test")))
    assert 0 < core.num_users < ds.num_users
    assert all(sum(1 for u, _ in distinct if u == user) >= 5 for user, _ in kept)
    assert all(sum(1 for _, i in distinct if i == item) >= 5 for _, item in kept)
    with pytest.raises(ValueError, match="ratios"):
        load_interactions(path, ratios=(0.5, 0.3, 0.3))


def test_split_sizes_for_small_users() -> None:
    rows = [("a", str(i), 1.0) for i in range(3)] + [("b", "0", 1.0), ("b", "1", 1.0)] + [("c", "2", 1.0)]
    ds = split_interactions("tiny", table(rows), seed=0)
    assert [ds.matrix(s)[ds.users.encode("a")].nnz for s in ("train", "valid", "test")] == [1, 1, 1]
    for user in ("b", "c"):  # fewer than 3 distinct items: all in train
        assert ds.valid[ds.users.encode(user)].nnz == ds.test[ds.users.encode(user)].nnz == 0
    assert ds.items.raw_ids == sorted(ds.items.raw_ids, key=int)  # integer ids: by value
    with pytest.raises(DataError, match=r"ratings\.csv: the valid split is empty"):
        split_interactions("tiny", table(rows[3:]))


def test_sequences_file_and_registry_errors(tmp_path: Path) -> None:
    seqs = write(tmp_path / "shop.txt", "".join(f"{u} " + " ".join(str(u + k) for k in range(6)) + f" {u}\n"
                                                for u in range(1, 21)))
    ds = load_interactions(seqs)  # sniffed as user sequences; the repeated item collapses
    check_invariants(ds)
    assert ds.name == "shop" and ds.num_users == 20 and ds.origin == str(seqs.resolve())
    assert ds.train.nnz + ds.valid.nnz + ds.test.nnz + sum(ds.dropped.values()) == 20 * 6
    with pytest.raises(DataError, match="'tmall' is session data"):
        load_interactions("tmall")
    with pytest.raises(DataError, match="not a registered dataset"):
        load_interactions("no-such-dataset")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder holds no interaction data"):
        load_interactions(tmp_path / "empty")
    with pytest.raises(DataError, match="min_rating given, but the data has no ratings"):
        load_interactions(seqs, min_rating=3)


def test_fingerprint_tracks_both_vocabularies() -> None:
    rows = [(u, str(i), 1.0) for u in "abcd" for i in range(6)]
    a = split_interactions("x", table(rows))
    fewer_users = split_interactions("x", table([r for r in rows if r[0] != "d"]))
    assert a.items.raw_ids == fewer_users.items.raw_ids and a.fingerprint() != fewer_users.fingerprint()
    assert len(a.fingerprint()) == 16


def test_importing_data_does_not_import_scipy() -> None:
    code = "import sys, pocketrec.data; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def ml100k() -> InteractionDataset:
    """ml-100k from the recbole wheel, else from the shared folder; skipped where neither is there."""
    try:
        return load_interactions("ml-100k")
    except DataError as e:
        pytest.skip(f"ml-100k not available: {e}")


def test_ml100k(ml100k: InteractionDataset) -> None:
    ds = ml100k
    check_invariants(ds)
    assert ds.origin == "ml-100k" and ds.num_users == 943 and ds.num_items <= 1682
    total = ds.train.nnz + ds.valid.nnz + ds.test.nnz + ds.dropped["valid"] + ds.dropped["test"]
    assert total == 100000  # no repeated (user, item) rating in ml-100k
    assert 0.79 < ds.train.nnz / total < 0.81 and 0.09 < ds.test.nnz / total < 0.11
    assert ds.users.raw_ids == [str(u) for u in range(1, 944)]  # integer ids by value: user k -> k
    assert ds.items.encode("1") == 1 and ds.item_counts()[1] == ds.train[:, 1].nnz


def test_ml100k_shared_folder_matches(ml100k: InteractionDataset, shared_data: Path) -> None:
    ds = load_interactions("ml-100k", root=shared_data)  # u.data.gz: same rows in the same order
    assert ds.source.endswith("u.data.gz")
    assert ds.fingerprint() == ml100k.fingerprint()
    assert all((ds.matrix(s) != ml100k.matrix(s)).nnz == 0 for s in ("train", "valid", "test"))


def test_beauty_as_interactions(shared_data: Path) -> None:
    ds = load_interactions("beauty", root=shared_data)
    check_invariants(ds)
    assert ds.origin == "beauty" and ds.num_users == 22363 and ds.num_items <= 12101
    total = ds.train.nnz + ds.valid.nnz + ds.test.nnz + ds.dropped["valid"] + ds.dropped["test"]
    assert total == 198502
    # 5-core: every user reaches every split, unless its one test item was dropped (unseen in train)
    assert (np.diff(ds.test.indptr)[1:] == 0).sum() <= ds.dropped["test"]
    assert (np.diff(ds.train.indptr)[1:] >= 3).all()
    assert registry.load_interactions is load_interactions
