"""Readers for the raw file formats. They return RAW ids (strings); ids are remapped later.

Formats (all may be gzip-compressed; compression is recognised by the gzip magic bytes, not the name):

* SR-GNN session lines (Tmall, Diginetica as staged): one session per line, space-separated integer
  item ids -> :func:`read_session_lines`.
* S3-Rec / ICLRec user sequences (Amazon Beauty, Sports, Toys): ``user item item ...`` per line, already
  chronological -> :func:`read_user_sequences`.
* LightGCN / NGCF ``train.txt`` / ``test.txt``: ``user item item ...`` per line, integer ids, a line may
  hold only a user -> :func:`read_user_item_lines`.
* User-item(-rating)(-time) tables: MovieLens ``u.data`` (tab, no header), CSV/TSV with or without a
  header, RecBole atomic ``.inter`` files (header ``user_id:token item_id:token ...``) ->
  :func:`read_interactions`.
* Raw click logs with a session column (Diginetica ``train-item-views.csv``, Yoochoose
  ``yoochoose-clicks.dat``, sessionized RetailRocket) -> :func:`read_session_log`, which is
  :func:`read_interactions` with the session column in the user role, grouped by
  :func:`pocketrec.data.preprocess.group_by_user_chronological`.

Text is decoded as UTF-8, falling back to latin-1 (MovieLens ``u.item`` is latin-1). Blank lines are
skipped everywhere. Line numbers in errors are 1-based physical line numbers of the decompressed text.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pocketrec.data.errors import DataError
from pocketrec.data.preprocess import group_by_user_chronological

PathLike = str | Path
Column = str | int | None

# Normalised header names (lower case, only letters and digits) that identify a column's role.
USER_NAMES = ("userid", "user", "uid", "reviewerid", "visitorid", "customerid")
ITEM_NAMES = ("itemid", "item", "movieid", "movie", "iid", "asin", "productid", "businessid", "bookid")
TIME_NAMES = ("timestamp", "time", "ts", "unixreviewtime", "datetime", "eventtime", "timeframe", "date",
              "eventdate")
RATING_NAMES = ("rating", "ratings", "score", "overall", "stars")
SESSION_NAMES = ("sessionid", "session", "sid")
_DATE_NAMES = ("eventdate", "date")
_KNOWN_NAMES = frozenset(USER_NAMES + ITEM_NAMES + TIME_NAMES + RATING_NAMES + SESSION_NAMES)
_RECBOLE_TYPE = re.compile(r"^(.+):(token|token_seq|float|float_seq)$")
_NOT_INTEGER_TEXT = re.compile(r"[^0-9\s]")
_DELIMITERS = ("\t", ",", ";", "|")
_PADDED = re.compile(r"(?:^|\n)\s|\s(?:\n|$)")


# --------------------------------------------------------------------------------------------- text


def read_text(path: PathLike) -> str:
    """The whole decoded text of ``path`` (gzip or plain; UTF-8, else latin-1).

    Files here are at most tens of MB, so reading them whole is both simplest and fastest.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(p, None, "no such file") from None
    except IsADirectoryError:
        raise DataError(p, None, "is a directory, expected a file") from None
    except OSError as e:
        raise DataError(p, None, f"cannot read file: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(p, None, f"corrupt gzip file: {e}") from None
    if b"\x00" in raw[:65536]:
        raise DataError(p, None, "binary file (contains NUL bytes), expected text; "
                                 "pickled SR-GNN files are not read, use the text version")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.lstrip("\ufeff")


def _lines(text: str) -> list[str]:
    # str.splitlines also splits on \x0c, \x1c, \u2028 ... which would shift line numbers.
    lines = text.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in lines]


# ------------------------------------------------------------------------------- line-based formats


def _session_text(path: PathLike) -> str:
    """The text of a session-lines file after checking it holds only digits and whitespace."""
    text = read_text(path)
    bad = _NOT_INTEGER_TEXT.search(text)
    if bad is not None:
        line_no = text.count("\n", 0, bad.start()) + 1
        start = max(text.rfind(" ", 0, bad.start()), text.rfind("\t", 0, bad.start()),
                    text.rfind("\n", 0, bad.start())) + 1
        token = text[start:].split(None, 1)[0]
        raise DataError(path, line_no, f"item id {token!r} is not a non-negative integer "
                                       "(session files hold integer item ids separated by spaces)")
    if not text.strip():
        raise DataError(path, None, "no sessions (the file is empty)")
    return text


def read_session_lines(path: PathLike) -> list[list[str]]:
    """SR-GNN session lines: one session per line, item ids (integers) separated by whitespace.

    Returns the sessions in file order as lists of raw id strings. Blank lines (anywhere, including the
    usual trailing newline) are skipped, since an empty session holds no example; so the result can be
    shorter than the file's line count. A token that is not a non-negative integer is a
    :class:`DataError` naming its line. An empty file is a :class:`DataError`.
    """
    text = _session_text(path)
    return [tokens for tokens in (line.split() for line in text.split("\n")) if tokens]


def read_session_arrays(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The same file as :func:`read_session_lines`, parsed straight to numbers: ``(items, lengths)``.

    ``items`` is every item id of the file in order (int64) and ``lengths`` the number of items of each
    non-blank line, so ``np.split(items, np.cumsum(lengths)[:-1])`` gives the sessions. This is the
    fast path for the large session files (Diginetica: ~1M ids in ~0.1 s instead of ~1 s); it keeps
    the integer value, so ``"007"`` and ``"7"`` are the same id here.
    """
    text = _session_text(path)
    try:
        data = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        items = np.fromstring(text, dtype=np.int64, sep=" ")
    except (UnicodeEncodeError, ValueError, OverflowError) as e:  # validated above; belt and braces
        raise DataError(path, None, f"cannot parse item ids: {e}") from None
    is_digit = (data >= 48) & (data <= 57)
    starts = np.flatnonzero(is_digit & ~np.concatenate([[False], is_digit[:-1]]))
    if len(starts) != len(items):  # e.g. an id too large for int64
        raise DataError(path, None, "cannot parse item ids as 64-bit integers")
    line_of_byte = np.concatenate([[0], np.cumsum(data[:-1] == 10)])
    per_line = np.bincount(line_of_byte[starts], minlength=int(line_of_byte[-1]) + 1)
    return items, per_line[per_line > 0]


def read_user_sequences(path: PathLike) -> list[tuple[str, list[str]]]:
    """S3-Rec user sequences: ``user item item ...`` per line, items in chronological order.

    Returns ``(user, items)`` pairs in file order. Ids may be any whitespace-free strings. Blank lines
    are skipped; a user listed twice is a :class:`DataError` (the format has one line per user).
    """
    return _user_lines(path, read_text(path), "no user sequences (the file is empty)")


def _user_lines(path: PathLike, text: str, if_empty: str, allow_empty: bool = True) -> list[tuple[str, list[str]]]:
    """``(user, items)`` of the ``user item item ...`` lines of ``text``; a user listed twice, a user without
    items (unless ``allow_empty``) and a file without lines (``if_empty``) are :class:`DataError`."""
    out: list[tuple[str, list[str]]] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(_lines(text), start=1):
        tokens = line.split()
        if not tokens:
            continue
        user = tokens[0]
        if user in seen:
            raise DataError(path, line_no, f"user {user!r} already has a line (line {seen[user]}); "
                                           "expected one line per user")
        if len(tokens) == 1 and not allow_empty:
            raise DataError(path, line_no, f"user {user!r} has no items (every user line of a training "
                                           "file lists at least one item)")
        seen[user] = line_no
        out.append((user, tokens[1:]))
    if not out:
        raise DataError(path, None, if_empty)
    return out


def read_user_item_lines(path: PathLike, *, allow_empty: bool = True) -> list[tuple[str, list[str]]]:
    """LightGCN / NGCF ``train.txt`` and ``test.txt``: ``user item item ...`` per line, integer ids.

    Returns ``(user, items)`` pairs in file order, ids as the raw strings. A line holding only a user is
    that user with no items (LightGCN's ``test.txt`` may have them); ``allow_empty=False`` makes it a
    :class:`DataError` instead (a ``train.txt`` user with no training items). A token that is not a
    non-negative integer, a user listed twice, and an empty file are :class:`DataError` naming the line.
    """
    text = read_text(path)
    bad = _NOT_INTEGER_TEXT.search(text)
    if bad is not None:
        line_no = text.count("\n", 0, bad.start()) + 1
        line_start = text.rfind("\n", 0, bad.start()) + 1
        start = max(text.rfind(" ", 0, bad.start()), text.rfind("\t", 0, bad.start()), line_start - 1) + 1
        token = text[start:].split(None, 1)[0]
        role = "user" if not text[line_start:start].strip() else "item"
        raise DataError(path, line_no, f"{role} id {token!r} is not a non-negative integer "
                                       "(expected 'user item item ...' with integer ids, as LightGCN writes)")
    return _user_lines(path, text, "no user lines (the file is empty)", allow_empty)


# -------------------------------------------------------------------------------------------- tables


@dataclass
class Interactions:
    """One row per interaction, raw ids kept as strings.

    ``timestamps`` are seconds (float64). Files without a time column get the row index instead, so
    "chronological" then means file order. ``ratings`` is ``None`` when the file has no rating column.
    ``source`` names the file the rows came from (used in error messages further down the line).
    """

    users: list[str]
    items: list[str]
    timestamps: np.ndarray
    ratings: np.ndarray | None
    source: str

    def __post_init__(self) -> None:
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if self.ratings is not None:
            self.ratings = np.asarray(self.ratings, dtype=np.float64)
        n = len(self.users)
        if len(self.items) != n or len(self.timestamps) != n or (self.ratings is not None
                                                                  and len(self.ratings) != n):
            raise ValueError("Interactions columns differ in length")

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, keep: np.ndarray) -> Interactions:
        """The rows where the boolean mask ``keep`` is true, in the same order."""
        idx = np.flatnonzero(keep)
        return replace(
            self,
            users=[self.users[i] for i in idx],
            items=[self.items[i] for i in idx],
            timestamps=self.timestamps[idx],
            ratings=None if self.ratings is None else self.ratings[idx],
        )


@dataclass
class _Table:
    path: str
    header: list[str] | None  # original header names, RecBole ``:type`` suffix removed
    header_line: int | None
    columns: list[list[str]]  # column-major values
    lines: np.ndarray  # physical line number of each row


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _sniff_delimiter(sample: Sequence[str]) -> str | None:
    """The delimiter among tab , ; | that splits every sample line into the same number (>1) of fields.

    ``None`` means whitespace-separated (no candidate occurs at all).
    """
    consistent = []
    totals = {}
    for sep in _DELIMITERS:
        counts = [line.count(sep) for line in sample]
        totals[sep] = sum(counts)
        if counts and counts[0] > 0 and all(c == counts[0] for c in counts):
            consistent.append(sep)
    if consistent:
        return consistent[0]  # tab first: titles in tab files may contain commas
    best = max(_DELIMITERS, key=lambda s: totals[s])
    return best if totals[best] > 0 else None


def _split_rows(lines: list[str], sep: str | None) -> tuple[list[list[str]], list[int]]:
    """Fields and physical line numbers of the non-blank lines.

    ``,``/``;``/``|`` go through :mod:`csv` (quoted fields, spaces after the delimiter); tab and
    whitespace are plain splits, which is what ``u.data`` and RecBole files need.
    """
    numbers = [i for i, line in enumerate(lines, start=1) if line and not line.isspace()]
    texts = [lines[i - 1] for i in numbers]
    if sep is None:
        return [t.split() for t in texts], numbers
    if sep == "\t":
        return [t.split("\t") for t in texts], numbers
    reader = csv.reader(texts, delimiter=sep, skipinitialspace=True)
    rows: list[list[str]] = []
    row_lines: list[int] = []
    try:
        for fields in reader:
            rows.append(fields)
            row_lines.append(numbers[reader.line_num - 1])
    except csv.Error as e:
        raise DataError(None, numbers[min(reader.line_num, len(numbers)) - 1], f"bad CSV: {e}") from None
    return rows, row_lines


def _looks_like_header(first: list[str], rest: list[list[str]]) -> bool:
    if any(_RECBOLE_TYPE.match(f) for f in first):
        return True
    if any(_normalise(f) in _KNOWN_NAMES for f in first):
        return True
    # A column whose first value is text while every following value is a number.
    return any(
        not _is_number(f) and rest and all(j < len(r) and _is_number(r[j]) for r in rest)
        for j, f in enumerate(first)
    )


def _read_table(path: PathLike, sep: str | None, has_header: bool | None) -> _Table:
    lines = _lines(read_text(path))
    sample = [line for line in lines[:200] if line.strip()][:50]
    if not sample:
        raise DataError(path, None, "no rows (the file is empty)")
    if sep is None:
        sep = _sniff_delimiter(sample)
    elif sep in (" ", "whitespace"):
        sep = None
    try:
        rows, row_lines = _split_rows(lines, sep)
    except DataError as e:
        raise DataError(path, e.line, e.reason) from None
    first = rows[0]
    if has_header is None:
        has_header = _looks_like_header(first, rows[1:20])
    header = None
    header_line = None
    if has_header:
        header = [m.group(1).strip() if (m := _RECBOLE_TYPE.match(f)) else f.strip() for f in first]
        header_line = row_lines[0]
        rows, row_lines = rows[1:], row_lines[1:]
        if not rows:
            raise DataError(path, header_line, "the file has a header but no rows")
    width = len(header) if header is not None else len(rows[0])
    for fields, line_no in zip(rows, row_lines, strict=True):
        if len(fields) != width:
            raise DataError(path, line_no, f"expected {width} fields, found {len(fields)} "
                                           f"(delimiter {_delimiter_name(sep)})")
    columns = [list(col) for col in zip(*rows, strict=True)]
    return _Table(str(path), header, header_line, columns, np.array(row_lines, dtype=np.int64))


def _delimiter_name(sep: str | None) -> str:
    return {None: "whitespace", "\t": "tab"}.get(sep, repr(sep))


def _resolve(table: _Table, spec: Column, candidates: Sequence[str], role: str) -> int | None:
    """Index of the column for ``role``: an explicit index or header name, else the first known name."""
    width = len(table.columns)
    if isinstance(spec, int):
        if not -width <= spec < width:
            raise DataError(table.path, None, f"{role} column {spec} is out of range "
                                              f"(the file has {width} columns)")
        return spec % width
    if table.header is None:
        if spec is not None:
            raise DataError(table.path, None, f"{role} column {spec!r} given by name, but the file has "
                                              "no header; pass a column index")
        return None
    names = [_normalise(h) for h in table.header]
    if spec is not None:
        if spec in table.header:
            return table.header.index(spec)
        if _normalise(spec) in names:
            return names.index(_normalise(spec))
        raise DataError(table.path, table.header_line,
                        f"no {role} column named {spec!r}; header is {table.header}")
    for cand in candidates:
        if cand in names:
            return names.index(cand)
    return None


def _parse_iso(value: str) -> float:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _parse_numbers(table: _Table, col: int, what: str, allow_dates: bool) -> np.ndarray:
    values = table.columns[col]
    try:
        out = np.asarray(values, dtype=np.float64)
    except ValueError:
        out = None
    if out is None:
        parsed: dict[str, float] = {}
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):
            if v not in parsed:
                try:
                    parsed[v] = float(v)
                except ValueError:
                    try:
                        if not allow_dates:
                            raise
                        parsed[v] = _parse_iso(v)
                    except ValueError:
                        kind = "a number or ISO-8601 date" if allow_dates else "a number"
                        raise DataError(table.path, int(table.lines[i]),
                                        f"{what} {v!r} is not {kind}") from None
            out[i] = parsed[v]
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):
        i = int(bad[0])
        raise DataError(table.path, int(table.lines[i]), f"{what} {values[i]!r} is not a finite number")
    return out


def _column_name(table: _Table, col: int) -> str:
    return table.header[col] if table.header is not None else f"column {col}"


def _build_interactions(table: _Table, user_col: int, item_col: int, time_col: int | None,
                        rating_col: int | None, date_col: int | None, time_scale: float) -> Interactions:
    for col, role in ((user_col, "user"), (item_col, "item")):
        values = table.columns[col]
        if _PADDED.search("\n".join(values)):  # "a, b" or padded tab files
            values = table.columns[col] = [v.strip() for v in values]
        if "" in values:
            i = values.index("")
            raise DataError(table.path, int(table.lines[i]), f"empty {role} id")
    n = len(table.columns[user_col])
    if time_col is None:
        timestamps = np.arange(n, dtype=np.float64)
    else:
        timestamps = _parse_numbers(table, time_col, f"timestamp ({_column_name(table, time_col)})",
                                    allow_dates=True) * time_scale
        if date_col is not None:
            timestamps += _parse_numbers(table, date_col, f"date ({_column_name(table, date_col)})",
                                         allow_dates=True)
    ratings = None
    if rating_col is not None:
        ratings = _parse_numbers(table, rating_col, f"rating ({_column_name(table, rating_col)})",
                                 allow_dates=False)
    return Interactions(table.columns[user_col], table.columns[item_col], timestamps, ratings, table.path)


def _interactions_from_table(table: _Table, user_col: Column, item_col: Column, time_col: Column,
                             rating_col: Column, date_col: Column, time_scale: float | None,
                             user_names: Sequence[str], user_role: str,
                             with_rating: bool = True) -> Interactions:
    width = len(table.columns)
    u = _resolve(table, user_col, user_names, user_role)
    i = _resolve(table, item_col, ITEM_NAMES, "item")
    t = _resolve(table, time_col, TIME_NAMES, "time")
    r = _resolve(table, rating_col, RATING_NAMES, "rating") if with_rating else None
    d = _resolve(table, date_col, (), "date")
    if table.header is None:
        # Positional defaults: 2 columns user item; 3 user item time; 4+ user item rating time
        # (MovieLens u.data and the Amazon "ratings only" CSVs).
        u = 0 if u is None else u
        i = 1 if i is None else i
        if width == 3 and t is None and time_col is None and 2 not in (u, i):
            t = 2
        elif width >= 4:
            if with_rating and r is None and rating_col is None and 2 not in (u, i, t):
                r = 2
            if t is None and time_col is None and 3 not in (u, i, r):
                t = 3
    else:
        if u is None or i is None:
            # The command line has no column flags: the fix that works everywhere is renaming the column.
            role, spec, usual = ((user_role, f"{user_role}_col", f"{user_role}_id") if u is None
                                 else ("item", "item_col", "item_id"))
            raise DataError(table.path, table.header_line,
                            f"cannot tell which column holds {role} ids in header {table.header}; "
                            f"rename that column to {usual!r} (RecBole: '{usual}:token'), or, from Python, "
                            f"pass {spec}=")
        if t is not None and _normalise(table.header[t]) == "timeframe":
            # Diginetica: `timeframe` is ms since the session started, `eventdate` the day; together
            # they order clicks within and across sessions.
            if time_scale is None:
                time_scale = 1e-3
            if d is None and date_col is None:
                d = next((k for k, h in enumerate(table.header) if _normalise(h) in _DATE_NAMES), None)
    if t is None and d is not None:  # only a date column: it is the time
        t, d = d, None
    if width < 2 or u == i:
        raise DataError(table.path, None, f"need distinct user and item columns, the file has {width} "
                                          "column(s)")
    return _build_interactions(table, u, i, t, r, d, 1.0 if time_scale is None else time_scale)


def read_interactions(path: PathLike, *, sep: str | None = None, user_col: Column = None,
                      item_col: Column = None, time_col: Column = None, rating_col: Column = None,
                      date_col: Column = None, time_scale: float | None = None,
                      has_header: bool | None = None) -> Interactions:
    """A user-item(-rating)(-time) table: CSV/TSV, MovieLens ``u.data``, RecBole ``.inter``.

    * ``sep``: the delimiter; by default the one among tab , ; | that splits every sampled line into
      the same number of fields, else whitespace.
    * ``has_header``: by default a header is assumed when the first line has RecBole typed names
      (``user_id:token``; the ``:type`` suffix is dropped), a known column name, or text in a column
      that is numeric in the following lines.
    * columns: an index, or a header name (matched exactly, then ignoring case and punctuation). Left as
      ``None`` they are found by name (``user_id``/``user``, ``item_id``/``item``/``movie_id``/``asin``,
      ``timestamp``/``time``/``ts``, ``rating``/``score``) or, without a header, by position: 2 columns
      ``user item``, 3 ``user item time``, 4 or more ``user item rating time``.
    * time: unix seconds or ISO-8601 (``2014-04-06T20:21:58.444Z``; no zone means UTC), multiplied by
      ``time_scale``; with ``date_col`` the date is added (Diginetica's ``timeframe`` column, ms since
      the session started, gets ``time_scale=1e-3`` and ``eventdate`` automatically). Without a time
      column, timestamps are the row index, i.e. file order.

    A row with a different number of fields, an empty id, or a non-numeric time or rating is a
    :class:`DataError` naming the file and line.
    """
    table = _read_table(path, sep, has_header)
    return _interactions_from_table(table, user_col, item_col, time_col, rating_col, date_col,
                                    time_scale, USER_NAMES, "user")


def read_item_titles(path: PathLike) -> dict[str, str]:
    """Raw item id -> display title, from MovieLens ``u.item`` or RecBole's ``ml-100k.item``.

    ``u.item`` is ``|``-separated latin-1 without a header (``id|title|date|...``); titles already end
    in the year. RecBole's file is tab-separated with a typed header (``item_id:token
    movie_title:token_seq release_year:token ...``); the year is appended as ``"Title (1995)"`` so both
    sources give the same titles.
    """
    lines = [(n, line) for n, line in enumerate(_lines(read_text(path)), start=1) if line.strip()]
    if not lines:
        raise DataError(path, None, "no items (the file is empty)")
    first = lines[0][1]
    titles: dict[str, str] = {}
    if "\t" in first and _RECBOLE_TYPE.match(first.split("\t")[0]):
        names = [_normalise(m.group(1)) if (m := _RECBOLE_TYPE.match(f)) else _normalise(f)
                 for f in first.split("\t")]
        try:
            id_col = names.index("itemid")
            title_col = next(names.index(c) for c in ("movietitle", "title", "name") if c in names)
        except (ValueError, StopIteration):
            raise DataError(path, lines[0][0], f"no item_id / title column in header {first!r}") from None
        year_col = names.index("releaseyear") if "releaseyear" in names else None
        for n, line in lines[1:]:
            fields = line.split("\t")
            if len(fields) != len(names):
                raise DataError(path, n, f"expected {len(names)} fields, found {len(fields)} (delimiter tab)")
            title = fields[title_col].strip()
            year = fields[year_col].strip() if year_col is not None else ""
            titles[fields[id_col].strip()] = f"{title} ({year})" if year.isdigit() else title
        return titles
    for n, line in lines:
        fields = line.split("|")
        if len(fields) < 2:
            raise DataError(path, n, "expected 'id|title|...' (MovieLens u.item)")
        titles[fields[0].strip()] = fields[1].strip()
    return titles


def read_session_log(path: PathLike, *, session_col: Column = None, item_col: Column = None,
                     time_col: Column = None, date_col: Column = None, time_scale: float | None = None,
                     sep: str | None = None, has_header: bool | None = None) -> list[tuple[str, list[str]]]:
    """A raw click log with a session column -> ``(session_id, items)`` pairs.

    Clicks are ordered by time within a session (ties keep file order) and sessions by the time of
    their first click (ties keep the order in which sessions first appear). Sessions of any length are
    returned; filtering (length, item frequency) is the caller's choice. Columns are found as in
    :func:`read_interactions` with ``session_id``/``session`` in the user role. Files without a header
    need explicit indices, e.g. Yoochoose clicks: ``session_col=0, time_col=1, item_col=2``.
    """
    table = _read_table(path, sep, has_header)
    if table.header is None and session_col is None:
        session_col = 0
    inter = _interactions_from_table(table, session_col, item_col, time_col, None, date_col, time_scale,
                                     SESSION_NAMES, "session", with_rating=False)
    return group_by_user_chronological(inter)
