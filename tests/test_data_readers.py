"""Readers: real samples from the shared folder, small realistic files, and bad input -> DataError."""

from __future__ import annotations

import gzip
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from pocketrec.data import (
    DataError,
    read_interactions,
    read_item_titles,
    read_session_lines,
    read_session_log,
    read_user_sequences,
)
from pocketrec.data.readers import read_session_arrays, read_text


def write(path: Path, text: str, *, gz: bool = False, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ------------------------------------------------------------------------------------------- text


def test_data_error_message_and_copy() -> None:
    import copy

    err = DataError("tmall/train.txt", 17, "non-integer item id 'abc'")
    assert str(err) == "tmall/train.txt:17: non-integer item id 'abc'"
    assert isinstance(err, ValueError)
    assert str(DataError(Path("a.csv"), None, "empty")) == "a.csv: empty"
    clone = copy.deepcopy(err)  # same __reduce__ path as crossing into a worker process
    assert (clone.path, clone.line, clone.reason) == (err.path, err.line, err.reason)


def test_gzip_and_plain_read_the_same(tmp_path: Path) -> None:
    text = "1 2 3\n4 5\n"
    plain = write(tmp_path / "s.txt", text)
    packed = write(tmp_path / "s.txt.gz", text, gz=True)
    misnamed = write(tmp_path / "s2.txt", text, gz=True)  # gzip is recognised by content, not name
    assert read_text(plain) == read_text(packed) == read_text(misnamed) == text


def test_latin1_fallback(tmp_path: Path) -> None:
    path = write(tmp_path / "u.item", "1|Café Society (1995)|x\n", encoding="latin-1")
    assert read_item_titles(path) == {"1": "Café Society (1995)"}


def _missing(tmp: Path) -> Path:
    return tmp / "missing.txt"


def _directory(tmp: Path) -> Path:
    return tmp


def _truncated_gzip(tmp: Path) -> Path:
    path = tmp / "broken.txt.gz"
    path.write_bytes(gzip.compress(b"1 2 3\n" * 100)[:30])
    return path


def _pickle(tmp: Path) -> Path:
    path = tmp / "train.txt"  # SR-GNN's train.txt is a pickle
    path.write_bytes(b"\x80\x04\x95\x00\x00\x00\x00]\x94.")
    return path


@pytest.mark.parametrize("make, expected", [(_missing, "no such file"), (_directory, "is a directory"),
                                            (_truncated_gzip, "corrupt gzip"), (_pickle, "binary file")])
def test_unreadable_files_are_data_errors(tmp_path: Path, make, expected: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError, match=expected) as err:
        read_session_lines(path)
    assert str(err.value).startswith(f"{path}: ")


# -------------------------------------------------------------------------------- session lines


def test_session_lines_skip_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", "1 2 3\n\n4\t5\r\n6 7 8 9\n\n")
    assert read_session_lines(path) == [["1", "2", "3"], ["4", "5"], ["6", "7", "8", "9"]]
    items, lengths = read_session_arrays(path)
    assert items.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert lengths.tolist() == [3, 2, 4]


def test_session_lines_non_integer_id_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", "1 2 3\n4 5\n6 abc 7\n")
    with pytest.raises(DataError) as err:
        read_session_lines(path)
    assert f"{path}:3:" in str(err.value)
    assert "'abc'" in str(err.value)
    with pytest.raises(DataError, match=r"train\.txt:3:"):
        read_session_arrays(path)


def test_session_lines_negative_id(tmp_path: Path) -> None:
    path = write(tmp_path / "test.txt.gz", "1 2\n3 -4\n", gz=True)
    with pytest.raises(DataError, match=r"test\.txt\.gz:2: item id '-4'"):
        read_session_lines(path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_session_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "empty.txt", text)
    with pytest.raises(DataError, match="empty.txt: no sessions"):
        read_session_lines(path)


def test_tmall_session_files(shared_data: Path) -> None:
    test = read_session_lines(shared_data / "tmall" / "test_sessions.txt.gz")
    assert len(test) == 1027
    assert sum(map(len, test)) == 26925
    items, lengths = read_session_arrays(shared_data / "tmall" / "test_sessions.txt.gz")
    assert lengths.tolist() == [len(s) for s in test]
    assert items.tolist() == [int(i) for s in test for i in s]


def test_diginetica_session_files(shared_data: Path) -> None:
    items, lengths = read_session_arrays(shared_data / "diginetica" / "train_sessions.txt.gz")
    assert len(lengths) == 186670
    assert len(items) == 906140
    assert len(np.unique(items)) == 43097 and items.min() == 1 and items.max() == 43097


# ------------------------------------------------------------------------------- user sequences


def test_user_sequences_small(tmp_path: Path) -> None:
    path = write(tmp_path / "seq.txt", "u1 a b c\nu2 d\n\nu3 a d e f\n")
    assert read_user_sequences(path) == [("u1", ["a", "b", "c"]), ("u2", ["d"]),
                                          ("u3", ["a", "d", "e", "f"])]


def test_user_sequences_duplicate_user(tmp_path: Path) -> None:
    path = write(tmp_path / "seq.txt", "1 5 6\n2 7 8\n1 9\n")
    with pytest.raises(DataError, match=r"seq\.txt:3: user '1' already has a line \(line 1\)"):
        read_user_sequences(path)


def test_amazon_beauty_sequences(shared_data: Path) -> None:
    users = read_user_sequences(shared_data / "amazon-yelp-seq" / "Beauty.txt.gz")
    assert len(users) == 22363
    assert sum(len(items) for _, items in users) == 198502
    assert len({i for _, items in users for i in items}) == 12101
    assert min(len(items) for _, items in users) == 5
    assert users[0] == ("1", ["1", "2", "3", "4", "5"])


# ------------------------------------------------------------------------------ interaction tables


def test_movielens_udata_layout(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data",
                 "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n")
    inter = read_interactions(path)
    assert inter.users == ["196", "186", "22"]
    assert inter.items == ["242", "302", "377"]
    assert inter.ratings.tolist() == [3.0, 3.0, 1.0]
    assert inter.timestamps.dtype == np.float64
    assert inter.timestamps.tolist() == [881250949.0, 891717742.0, 878887116.0]
    assert inter.source == str(path)


def test_csv_with_header_finds_columns_by_name(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv",
                 "timestamp,rating,movieId,userId\n100,4.5,m1,u1\n90,3,m2,u1\n95,5,\"m,3\",u2\n")
    inter = read_interactions(path)
    assert inter.users == ["u1", "u1", "u2"]
    assert inter.items == ["m1", "m2", "m,3"]  # CSV quoting honoured
    assert inter.timestamps.tolist() == [100.0, 90.0, 95.0]
    assert inter.ratings.tolist() == [4.5, 3.0, 5.0]


def test_semicolon_and_explicit_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "who;what;when\nA;x;3\nB;y;1\n")
    inter = read_interactions(path, user_col="who", item_col="what", time_col="when")
    assert (inter.users, inter.items, inter.timestamps.tolist()) == (["A", "B"], ["x", "y"], [3.0, 1.0])
    assert inter.ratings is None
    with pytest.raises(DataError, match=r"log\.csv:1: no user column named 'nobody'"):
        read_interactions(path, user_col="nobody", item_col="what")


def test_recbole_atomic_header(tmp_path: Path) -> None:
    path = write(tmp_path / "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                         "1\t10\t4\t5\n2\t11\t2\t6\n")
    inter = read_interactions(path)
    assert inter.users == ["1", "2"] and inter.items == ["10", "11"]
    assert inter.ratings.tolist() == [4.0, 2.0] and inter.timestamps.tolist() == [5.0, 6.0]


def test_headerless_amazon_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", "A2IB,B001,5.0,1393545600\nA14V,B001,4.0,1363392000\n")
    inter = read_interactions(path)
    assert inter.users == ["A2IB", "A14V"]
    assert inter.ratings.tolist() == [5.0, 4.0]
    assert inter.timestamps.tolist() == [1393545600.0, 1363392000.0]


def test_table_without_time_uses_file_order(tmp_path: Path) -> None:
    path = write(tmp_path / "pairs.tsv", "user\titem\nu\ta\nu\tb\n")
    assert read_interactions(path).timestamps.tolist() == [0.0, 1.0]


def test_wrong_column_count(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t2\t3\t4\n\n5\t6\t7\n")
    with pytest.raises(DataError, match=r"u\.data:4: expected 4 fields, found 3"):
        read_interactions(path)


def test_non_numeric_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", "user_id,item_id,timestamp\n1,2,100\n1,3,yesterday\n")
    with pytest.raises(DataError, match=r"ratings\.csv:3: timestamp \(timestamp\) 'yesterday'"):
        read_interactions(path)


def test_non_numeric_rating(tmp_path: Path) -> None:
    path = write(tmp_path / "u.data", "1\t2\t3\t100\n1\t3\tNA\t101\n")
    with pytest.raises(DataError, match=r"u\.data:2: rating .*'NA' is not a number"):
        read_interactions(path)


def test_empty_id(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,item_id\n1,2\n,3\n")
    with pytest.raises(DataError, match=r"r\.csv:3: empty user id"):
        read_interactions(path)


def test_header_only(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match=r"r\.csv:1: the file has a header but no rows"):
        read_interactions(path)


def test_movielens_100k(shared_data: Path) -> None:
    inter = read_interactions(shared_data / "ml-100k" / "u.data.gz")
    assert len(inter) == 100000
    assert len(set(inter.users)) == 943 and len(set(inter.items)) == 1682
    assert Counter(inter.ratings.astype(int).tolist()) == {1: 6110, 2: 11370, 3: 27145, 4: 34174, 5: 21201}
    assert inter.timestamps.min() == 874724710 and inter.timestamps.max() == 893286638


def test_recbole_inter_matches_udata(shared_data: Path) -> None:
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("recbole wheel not installed")
    inter = read_interactions(Path(str(dist.locate_file("recbole/dataset_example/ml-100k/ml-100k.inter"))))
    udata = read_interactions(shared_data / "ml-100k" / "u.data.gz")
    assert inter.users == udata.users and inter.items == udata.items
    assert np.array_equal(inter.timestamps, udata.timestamps)
    assert np.array_equal(inter.ratings, udata.ratings)


def test_musical_instruments(shared_data: Path) -> None:
    inter = read_interactions(shared_data / "amazon-musical-instruments"
                              / "ratings_Musical_Instruments_5core.csv.gz")
    assert len(inter) == 10261
    assert len(set(inter.users)) == 1429 and len(set(inter.items)) == 900
    assert inter.users[0] == "A2IBPI20UZIR0U" and inter.items[0] == "1384719342"
    assert inter.timestamps.min() == 1095465600 and inter.timestamps.max() == 1405987200


# ---------------------------------------------------------------------------------- item titles


def test_movielens_titles(shared_data: Path) -> None:
    titles = read_item_titles(shared_data / "ml-100k" / "u.item.gz")
    assert len(titles) == 1682
    assert titles["1"] == "Toy Story (1995)"


def test_recbole_item_file_titles(tmp_path: Path) -> None:
    path = write(tmp_path / "ml.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\t"
                                       "class:token_seq\n1\tToy Story\t1995\tAnimation Comedy\n")
    assert read_item_titles(path) == {"1": "Toy Story (1995)"}


# ---------------------------------------------------------------------------------- session logs


def test_session_log_orders_clicks_and_sessions_by_time(tmp_path: Path) -> None:
    # Diginetica layout: timeframe = ms since the session started, eventdate = the day.
    path = write(tmp_path / "views.csv",
                 "session_id;user_id;item_id;timeframe;eventdate\n"
                 "1;NA;a;5000;2016-05-09\n1;NA;b;1000;2016-05-09\n"
                 "2;NA;c;0;2016-05-01\n2;NA;d;200;2016-05-01\n"
                 "3;7;e;0;2016-05-09\n")
    # sessions by first click (date + offset): 2 (May 1), then 3 (May 9 +0 s), then 1 (May 9 +1 s)
    assert read_session_log(path) == [("2", ["c", "d"]), ("3", ["e"]), ("1", ["b", "a"])]


def test_raw_diginetica_sample(shared_data: Path) -> None:
    path = shared_data / "raw-format-samples" / "diginetica_sample_train-item-views.csv.gz"
    sessions = read_session_log(path)
    assert len(sessions) == 2986
    # 12,391 data rows: SOURCE.md's "12,390" counts newlines, and the last row has none
    assert sum(len(items) for _, items in sessions) == 12391
    # within a session, clicks follow `timeframe`; check one session against the raw rows
    rows = [line.split(";") for line in read_text(path).splitlines()[1:]]
    raw = sorted((int(r[3]), r[2]) for r in rows if r[0] == "1")
    assert dict(sessions)["1"] == [item for _, item in raw]


def test_raw_yoochoose_sample(shared_data: Path) -> None:
    path = shared_data / "raw-format-samples" / "yoochoose_sample_clicks.dat.gz"
    sessions = read_session_log(path, session_col=0, time_col=1, item_col=2)
    assert len(sessions) == 461
    assert sum(len(items) for _, items in sessions) == 1913
    assert len({i for _, items in sessions for i in items}) == 907
    inter = read_interactions(path, user_col=0, item_col=2, time_col=1)
    first = datetime(2014, 4, 6, 20, 21, 58, 444000, tzinfo=timezone.utc).timestamp()
    assert inter.timestamps[0] == pytest.approx(first)
    assert datetime.fromtimestamp(inter.timestamps.min(), timezone.utc).date().isoformat() == "2014-04-01"


def test_raw_retailrocket_sample(shared_data: Path) -> None:
    path = shared_data / "raw-format-samples" / "retailrocket_sessionized_sample.tsv.gz"
    sessions = read_session_log(path)
    assert len(sessions) == 2950
    assert sum(len(items) for _, items in sessions) == 10080
    assert len({i for _, items in sessions for i in items}) == 5566
    inter = read_interactions(path)  # the user role goes to user_id, not session_id
    assert len(set(inter.users)) == 2496


def test_session_log_bad_iso_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path / "clicks.dat", "1,2014-04-06T20:21:58.444Z,10,0\n1,2014-13-06T20:00:00Z,11,0\n")
    with pytest.raises(DataError, match=r"clicks\.dat:2: timestamp .*'2014-13-06T20:00:00Z'"):
        read_session_log(path, session_col=0, time_col=1, item_col=2)
