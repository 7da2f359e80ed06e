"""Preprocessing: vocabulary, encoding, k-core, chronological grouping, the two split protocols."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pocketrec.data import (
    DataError,
    Interactions,
    Vocabulary,
    build_vocabulary,
    encode_sequences,
    group_by_user_chronological,
    k_core,
    leave_one_out_split,
    read_session_lines,
    session_split,
)
from pocketrec.data.preprocess import encode_integer_sessions
from pocketrec.data.readers import read_session_arrays


def arrays(*seqs: list[int]) -> list[np.ndarray]:
    return [np.array(s, dtype=np.int64) for s in seqs]


def inter(users: str, items: str, times: list[float], ratings: list[float] | None = None) -> Interactions:
    return Interactions(users.split(), items.split(), np.array(times, dtype=float),
                        None if ratings is None else np.array(ratings, dtype=float), "toy.csv")


# ---------------------------------------------------------------------------------------- vocabulary


def test_vocabulary_first_appearance_and_round_trip() -> None:
    vocab = build_vocabulary([["b", "a"], ["c", "a", "d"]])
    assert vocab.raw_ids == ["b", "a", "c", "d"]
    seqs = encode_sequences([["a", "d", "b"]], vocab)
    assert seqs[0].tolist() == [2, 4, 1]
    assert vocab.decode(seqs[0]) == ["a", "d", "b"]
    assert Vocabulary.from_json(vocab.to_json()).fingerprint() == vocab.fingerprint()


def test_encode_drops_unknown_test_items() -> None:
    vocab = build_vocabulary([["1", "2", "3"]])
    assert [s.tolist() for s in encode_sequences([["1", "9", "3"], ["9", "8"]], vocab)] == [[1, 3], []]
    with pytest.raises(DataError, match=r"test\.txt: sequence 1: item id '9' is not in the vocabulary"):
        encode_sequences([["1", "9"]], vocab, drop_unknown=False, source="test.txt")


def test_encode_accepts_integer_raw_ids() -> None:
    vocab = build_vocabulary([[10, 20]])
    assert vocab.raw_ids == ["10", "20"]
    assert encode_sequences([[20, 10]], vocab)[0].tolist() == [2, 1]


def test_integer_session_fast_path_equals_string_path(tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    test = tmp_path / "test.txt"
    train.write_text("30 10 30\n20 10\n\n40 50 10\n")
    test.write_text("10 99 20\n99 98\n50 40\n")
    vocab, train_ids, test_ids = encode_integer_sessions(read_session_arrays(train),
                                                         read_session_arrays(test))
    ref_vocab = build_vocabulary(read_session_lines(train))
    assert vocab.raw_ids == ref_vocab.raw_ids == ["30", "10", "20", "40", "50"]
    for fast, path in ((train_ids, train), (test_ids, test)):
        slow = encode_sequences(read_session_lines(path), ref_vocab)
        assert [s.tolist() for s in fast] == [s.tolist() for s in slow]


def test_integer_session_fast_path_on_real_files(shared_data: Path) -> None:
    # Diginetica's test sessions as "training" and Tmall's as "test": a vocabulary that is not the
    # identity, and test sessions that lose most of their items as unknown.
    train = shared_data / "diginetica" / "test_sessions.txt.gz"
    test = shared_data / "tmall" / "test_sessions.txt.gz"
    vocab, train_ids, test_ids = encode_integer_sessions(read_session_arrays(train),
                                                         read_session_arrays(test))
    ref_vocab = build_vocabulary(read_session_lines(train))
    assert vocab.raw_ids == ref_vocab.raw_ids
    for fast, path in ((train_ids, train), (test_ids, test)):
        slow = encode_sequences(read_session_lines(path), ref_vocab)
        assert len(slow) == len(fast)
        assert all(np.array_equal(a, b) for a, b in zip(slow, fast, strict=True))


# --------------------------------------------------------------------------------------- k-core


def test_k_core_iterates_to_fixed_point() -> None:
    # item z has 1 row -> removed; then user c has 1 row -> removed; then item y has 1 row -> removed...
    data = inter("a a b b c c", "x y x y y z", [1, 2, 3, 4, 5, 6])
    core = k_core(data, 2, 2)
    assert core.users == ["a", "a", "b", "b"] and core.items == ["x", "y", "x", "y"]
    assert core.timestamps.tolist() == [1, 2, 3, 4]
    with pytest.raises(DataError, match=r"toy\.csv: k-core filtering \(k_user=3, k_item=3\) removed every"):
        k_core(data, 3, 3)


# ------------------------------------------------------------------------------ chronological grouping


def test_group_by_user_chronological_is_stable_for_ties() -> None:
    data = inter("u v u u v", "a b c d e", [5, 1, 2, 5, 1], ratings=[5, 1, 4, 3, 4])
    # u's times: a=5, c=2, d=5 -> c, a, d (a before d: file order on the tie); v starts first (t=1)
    assert group_by_user_chronological(data) == [("v", ["b", "e"]), ("u", ["c", "a", "d"])]
    assert group_by_user_chronological(data, min_rating=4) == [("v", ["e"]), ("u", ["c", "a"])]
    with pytest.raises(DataError, match="no ratings"):
        group_by_user_chronological(inter("u", "a", [1]), min_rating=4)


# --------------------------------------------------------------------------------- session protocol


def test_session_split_valid_is_last_fraction_in_file_order() -> None:
    train = arrays(*[[i, i + 1, i + 2] for i in range(1, 21)])
    test = arrays([1, 2], [3, 4, 5])
    tr, va, te = session_split(train, test, valid_fraction=0.1)
    assert len(tr) == 18 and len(va) == 2
    assert [s.tolist() for s in va.sequences] == [[19, 20, 21], [20, 21, 22]]
    assert tr.num_examples == 36 and va.num_examples == 4 and te.num_examples == 3
    prefixes, targets = te.expand()  # SR-GNN expansion order within a session
    assert [p.tolist() for p in prefixes] == [[1], [3], [3, 4]] and targets.tolist() == [2, 4, 5]


def test_session_split_drops_short_sessions() -> None:
    train = arrays([1], [1, 2], [3], [2, 3, 4], [5, 6], [])
    tr, va, te = session_split(train, arrays([1], [2, 3]), valid_fraction=0.34)
    assert [s.tolist() for s in tr.sequences] == [[1, 2], [2, 3, 4]]
    assert [s.tolist() for s in va.sequences] == [[5, 6]]
    assert [s.tolist() for s in te.sequences] == [[2, 3]]


def test_session_split_all_too_short() -> None:
    with pytest.raises(DataError, match=r"train_sessions\.txt: no training session has 2 or more items"):
        session_split(arrays([1], [2]), arrays([1, 2]), train_source="train_sessions.txt")
    with pytest.raises(DataError, match=r"test_sessions\.txt: no test session has 2 or more known items"):
        session_split(arrays([1, 2], [2, 3]), arrays([1], []), test_source="test_sessions.txt")
    with pytest.raises(DataError, match=r"t\.txt: 1 usable training session\(s\) are too few"):
        session_split(arrays([1, 2]), arrays([1, 2]), train_source="t.txt")
    tr, va, _ = session_split(arrays([1, 2]), arrays([1, 2]), valid_fraction=0.0)
    assert len(tr) == 1 and len(va) == 0


# ------------------------------------------------------------------------------------- leave-one-out


def test_leave_one_out_split() -> None:
    seqs = arrays([1, 2, 3, 4, 5], [6, 7, 8], [9, 10], [11], [1, 2, 3, 4])
    tr, va, te = leave_one_out_split(seqs)
    assert [s.tolist() for s in tr.sequences] == [[1, 2, 3], [1, 2]]  # seq[:-2] with >= 2 items
    assert tr.first_target.tolist() == [1, 1]
    assert [s.tolist() for s in va.sequences] == [[1, 2, 3, 4], [6, 7], [1, 2, 3]]
    _, valid_targets = va.expand()
    assert valid_targets.tolist() == [4, 7, 3]
    prefixes, test_targets = te.expand()
    assert test_targets.tolist() == [5, 8, 10, 4]  # the 2-item user is a test target only (RecBole)
    assert prefixes[2].tolist() == [9]
    assert te.num_examples == 4 and va.num_examples == 3 and tr.num_examples == 3


def test_leave_one_out_too_short() -> None:
    with pytest.raises(DataError, match=r"seq\.txt: the training split is empty"):
        leave_one_out_split(arrays([1, 2, 3], [4, 5]), source="seq.txt")
