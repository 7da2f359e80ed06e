"""Named datasets, folder discovery, and load_dataset on paths."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from pocketrec.data import DataError, Dataset, available_datasets, load_dataset, registry, sniff_format


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def expanded(ds: Dataset) -> tuple[int, int]:
    return ds.train.num_examples + ds.valid.num_examples, ds.test.num_examples


@pytest.fixture(scope="module")
def tmall(shared_data: Path) -> Dataset:
    return load_dataset("tmall", root=shared_data)


@pytest.fixture(scope="module")
def ml100k_recbole() -> Dataset:
    if registry._recbole_ml100k_dir() is None:
        pytest.skip("recbole wheel (pip install --no-deps recbole==1.2.1) not installed")
    mp = pytest.MonkeyPatch()
    mp.setattr(registry, "data_roots", lambda root=None: [Path("/nonexistent-pocketrec-data")])
    try:
        return load_dataset("ml-100k")
    finally:
        mp.undo()


# ------------------------------------------------------------------------------- session datasets


def test_tmall_published_counts(tmall: Dataset) -> None:
    assert tmall.protocol == "session"
    assert tmall.num_items == 40727
    assert expanded(tmall) == (351268, 25898)
    assert len(tmall.train) + len(tmall.valid) == 65286
    assert len(tmall.valid) == round(65286 * 0.1)
    # ids were assigned in first-appearance order, so the mapping is the identity
    assert tmall.vocab.raw_ids[:3] == ["1", "2", "3"] and tmall.vocab.encode("40727") == 40727
    assert tmall.train.sequences[0].tolist() == [1, 2]


def test_diginetica_published_counts(shared_data: Path) -> None:
    ds = load_dataset("diginetica", root=shared_data / "diginetica")  # the dataset folder itself
    assert ds.num_items == 43097
    assert expanded(ds) == (719470, 60858)
    assert ds.vocab.decode([1, 43097]) == ["1", "43097"]
    with pytest.raises(DataError, match="dataset 'tmall' not found"):
        load_dataset("tmall", root=shared_data / "diginetica")  # same layout, other dataset


def test_session_valid_fraction(tmall: Dataset, shared_data: Path) -> None:
    ds = load_dataset("tmall", root=shared_data, valid_fraction=0.2)
    assert expanded(ds)[0] == expanded(tmall)[0]
    assert len(ds.valid) == round(65286 * 0.2)


def test_session_folder_from_env_and_bad_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "tmall" / "train_sessions.txt.gz", "1 2 3\n4 5\n2 6\n1 4\n3 5 6\n")
    write(tmp_path / "tmall" / "test_sessions.txt", "6 1 7\n7 8\n")
    monkeypatch.setenv(registry.ENV_DATA, str(tmp_path))
    ds = load_dataset("tmall", valid_fraction=0.2)
    assert ds.source.startswith(str(tmp_path))
    assert len(ds.train) == 4 and len(ds.valid) == 1
    assert [s.tolist() for s in ds.test.sequences] == [[6, 1]]  # unseen 7 and 8 dropped
    write(tmp_path / "tmall" / "train_sessions.txt.gz", "1 2 3\n4 5\n2 x6\n")
    with pytest.raises(DataError, match=r"train_sessions\.txt\.gz:3: item id 'x6'"):
        load_dataset("tmall")


def test_session_folder_all_sessions_too_short(tmp_path: Path) -> None:
    write(tmp_path / "train_sessions.txt", "1\n2\n3\n")
    write(tmp_path / "test_sessions.txt", "1 2\n")
    with pytest.raises(DataError, match=r"train_sessions\.txt: no training session has 2 or more items"):
        load_dataset(tmp_path)


# --------------------------------------------------------------------------------------- ml-100k


def test_ml100k_from_recbole_wheel_without_shared_folder(ml100k_recbole: Dataset) -> None:
    ds = ml100k_recbole
    assert ds.source.endswith("ml-100k.inter") and "recbole" in ds.source
    assert ds.protocol == "leave-one-out"
    assert ds.num_items == 1682
    assert ds.test.num_examples == 943 and ds.valid.num_examples == 943
    assert ds.train.num_examples == 100000 - 3 * 943  # every user: n - 3 training targets
    assert ds.item_titles is not None and len(ds.item_titles) == 1682
    toy_story = ds.vocab.encode("1")
    assert ds.item_titles[toy_story] == "Toy Story (1995)"


def test_ml100k_shared_fallback_matches_wheel(ml100k_recbole: Dataset, shared_data: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_recbole_ml100k_dir", lambda: None)
    monkeypatch.setattr(registry, "data_roots", lambda root=None: [shared_data])
    ds = load_dataset("ml-100k")
    assert ds.source.endswith("u.data.gz")
    assert ds.vocab.raw_ids == ml100k_recbole.vocab.raw_ids
    for a, b in zip(ds.test.sequences, ml100k_recbole.test.sequences, strict=True):
        assert np.array_equal(a, b)
    assert ds.item_titles[ds.vocab.encode("1")] == "Toy Story (1995)"


def test_ml100k_missing_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry, "_recbole_ml100k_dir", lambda: None)
    monkeypatch.setattr(registry, "data_roots", lambda root=None: [tmp_path])
    with pytest.raises(DataError, match="dataset 'ml-100k' not found.*recbole"):
        load_dataset("ml-100k")
    info = {d.name: d for d in available_datasets()}
    assert not info["ml-100k"].available and "not found" in info["ml-100k"].reason
    assert set(info) == set(registry.dataset_names())


def test_chronological_order_within_user(ml100k_recbole: Dataset, shared_data: Path) -> None:
    from pocketrec.data import read_interactions

    rows = read_interactions(shared_data / "ml-100k" / "u.data.gz")
    per_user: dict[str, list[tuple[float, int]]] = {}
    for k, (user, t) in enumerate(zip(rows.users, rows.timestamps, strict=True)):
        per_user.setdefault(user, []).append((t, k))  # (time, row): ties keep file order
    expected = sorted(tuple(rows.items[k] for _, k in sorted(v)) for v in per_user.values())
    got = sorted(tuple(ml100k_recbole.vocab.decode(s)) for s in ml100k_recbole.test.sequences)
    assert got == expected


# ----------------------------------------------------------------------------- other named datasets


@pytest.mark.parametrize("name, users, items", [("beauty", 22363, 12101), ("toys", 19412, 11924),
                                                ("musical-instruments", 1429, 900)])
def test_leave_one_out_datasets(shared_data: Path, name: str, users: int, items: int) -> None:
    ds = load_dataset(name, root=shared_data)
    assert ds.num_items == items
    assert ds.test.num_examples == users and ds.valid.num_examples == users


def test_available_datasets(shared_data: Path) -> None:
    infos = available_datasets(shared_data)
    assert [i.name for i in infos] == registry.dataset_names()
    assert all(i.available for i in infos if i.name != "ml-100k" or (shared_data / "ml-100k").is_dir())
    assert {i.protocol for i in infos} == {"session", "leave-one-out"}


# ------------------------------------------------------------------------------------------ paths


def test_load_csv_file_leave_one_out(tmp_path: Path) -> None:
    rows = [f"u{u},{item},{t}" for u in range(5) for t, item in enumerate("abcdef")]
    rows += [f"few,{item},{t}" for t, item in enumerate("abc")]
    path = write(tmp_path / "clicks.csv", "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    assert sniff_format(path) == "interactions"
    ds = load_dataset(path)
    assert ds.name == "clicks" and ds.protocol == "leave-one-out" and ds.num_items == 6
    assert ds.test.num_examples == 6 and ds.valid.num_examples == 6
    assert ds.train.num_examples == 5 * 3  # "few" has 3 items: valid and test only
    core = load_dataset(path, k_core=5)  # "few" has only 3 rows
    assert core.test.num_examples == 5 and core.num_items == 6


def test_load_user_sequence_file(shared_data: Path) -> None:
    path = shared_data / "amazon-yelp-seq" / "Toys_and_Games.txt.gz"
    assert sniff_format(path) == "user-sequences"
    ds = load_dataset(path)
    assert ds.num_items == 11924 and ds.test.num_examples == 19412


def test_sniff_formats(tmp_path: Path, shared_data: Path) -> None:
    assert sniff_format(shared_data / "tmall" / "test_sessions.txt.gz") == "sessions"
    assert sniff_format(shared_data / "ml-100k" / "u.data.gz") == "interactions"
    assert sniff_format(write(tmp_path / "x.inter", "user_id:token item_id:token\n1 2\n")) == "interactions"
    assert sniff_format(write(tmp_path / "u.txt", "alice 1 2 3\nbob 2 3\n")) == "user-sequences"


def test_load_session_lines_file_and_inter_folder(tmp_path: Path) -> None:
    sessions = write(tmp_path / "s.txt", "5 6 7 8\n5 9 6 7\n8 8 9 5 6\n")
    ds = load_dataset(sessions)  # each line is one history, split leave-one-out
    assert ds.protocol == "leave-one-out" and ds.test.num_examples == 3
    folder = tmp_path / "toy"
    write(folder / "toy.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
                                + "".join(f"{u}\t{i}\t{i}\n" for u in range(3) for i in range(5)))
    ds = load_dataset(folder)
    assert ds.name == "toy" and ds.num_items == 5 and ds.test.num_examples == 3


def test_registered_layout_folders(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "my-movies"  # laid out like ml-100k: loads with ml-100k's loader
    write(folder / "u.data", "".join(f"{u}\t{i}\t{1 + (u + i) % 5}\t{100 * i}\n"
                                     for u in (1, 2) for i in range(10, 15)))
    write(folder / "u.item", "".join(f"{i}|Movie {i} (1990)|x\n" for i in range(10, 15)))
    ds = load_dataset(folder)
    assert ds.name == "my-movies" and ds.num_items == 5 and ds.test.num_examples == 2
    assert ds.item_titles == {ds.vocab.encode(str(i)): f"Movie {i} (1990)" for i in range(10, 15)}
    with pytest.raises(DataError, match="no known dataset layout"):
        load_dataset(shared_data / "amazon-yelp-seq")  # three datasets: which one is a guess


def test_bad_paths_and_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a registered dataset"):
        load_dataset("no-such-dataset")
    with pytest.raises(DataError, match="folder holds no known dataset layout"):
        load_dataset(tmp_path)
    empty = write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match=r"empty\.csv: no rows"):
        load_dataset(empty)
    bad = write(tmp_path / "bad.csv", "user_id,item_id,timestamp\n1,2,3\n1,2\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: expected 3 fields, found 2"):
        load_dataset(bad)
