"""Named datasets and :func:`load_dataset`, the one entry point from a name or a path to a ``Dataset``.

Data folders are searched in this order (first match wins):

1. the ``root`` argument: a folder holding ``tmall/``, ``diginetica/``, ... or the dataset's own folder;
2. ``$POCKETREC_DATA`` (same layout);
3. ``<repo>/../shared/data`` (the project's shared data folder);
4. ``<repo>/data-local/`` and ``./data-local/`` (git-ignored; copy the data there on another machine).

``ml-100k`` also works on a machine with none of these: RecBole's wheel ships it in RecBole's atomic
format, found with ``importlib.metadata`` (``pip install --no-deps recbole==1.2.1``; recbole is never
imported). It is tried right after an explicit ``root``. Files may be gzip-compressed (``NAME`` or
``NAME.gz``). No maximum sequence length is applied here; batching cuts long sequences.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.data.dataset import Dataset
from pocketrec.data.errors import DataError
from pocketrec.data.interactions import CF, InteractionDataset, split_interactions, split_train_test
from pocketrec.data.preprocess import (
    build_vocabulary,
    encode_integer_sessions,
    encode_sequences,
    filter_min_rating,
    group_by_user_chronological,
    k_core,
    leave_one_out_split,
    session_split,
)
from pocketrec.data.readers import (
    Interactions,
    read_interactions,
    read_item_titles,
    read_session_arrays,
    read_session_lines,
    read_text,
    read_user_item_lines,
    read_user_sequences,
)

ENV_DATA = "POCKETREC_DATA"
_REPO = Path(__file__).resolve().parents[3]
_RECBOLE_ML100K = "recbole/dataset_example/ml-100k/"

SESSION = "session"
LEAVE_ONE_OUT = "leave-one-out"


@dataclass(frozen=True)
class DatasetInfo:
    """What ``pocketrec datasets`` prints: a registered name, and where it was found or why not."""

    name: str
    protocol: str
    description: str
    location: str | None  # the folder (or wheel path) the files were found in
    reason: str = ""  # why it is unavailable, when location is None

    @property
    def available(self) -> bool:
        return self.location is not None


Files = dict[str, Path]


@dataclass(frozen=True)
class _Spec:
    name: str
    protocol: str
    description: str
    folder: str
    layouts: tuple[dict[str, str], ...]  # role -> file name, alternatives in order of preference
    load: Callable[[str, Files, dict], Dataset]
    optional: frozenset[str] = frozenset()
    recbole: bool = False  # also look inside the recbole wheel


# ----------------------------------------------------------------------------------------- locating


def data_roots(root: str | Path | None = None) -> list[Path]:
    """The folders searched for named datasets, in order (see the module docstring)."""
    if root is not None:
        return [Path(root)]
    roots = []
    if os.environ.get(ENV_DATA):
        roots.append(Path(os.environ[ENV_DATA]))
    roots += [_REPO.parent / "shared" / "data", _REPO / "data-local", Path.cwd() / "data-local"]
    unique: list[Path] = []
    for r in roots:
        if r not in unique:
            unique.append(r)
    return unique


def _recbole_ml100k_dir() -> Path | None:
    """RecBole's bundled ml-100k folder, located without importing recbole."""
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file(_RECBOLE_ML100K)))
    return folder if (folder / "ml-100k.inter").is_file() else None


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _match_layout(spec: _Spec, folder: Path) -> Files | None:
    for layout in spec.layouts:
        found = {role: _find_file(folder, fname) for role, fname in layout.items()}
        if all(p is not None for role, p in found.items() if role not in spec.optional):
            return {role: p for role, p in found.items() if p is not None}
    return None


def _locate(spec: _Spec, root: str | Path | None) -> tuple[Files, str]:
    """The dataset's files and a description of where they are; :class:`DataError` if not found."""
    folders: list[Path] = []
    roots = data_roots(root)
    if root is not None:
        folders.append(roots[0] / spec.folder)
        # root may be the dataset's own folder, but not another registered dataset's (same layout)
        others = {s.folder for s in _REGISTRY.values()} - {spec.folder}
        if roots[0].name not in others:
            folders.append(roots[0])
    if spec.recbole:
        wheel = _recbole_ml100k_dir()
        if root is None and wheel is not None:
            folders.append(wheel)
    if root is None:
        folders += [r / spec.folder for r in roots]
    for folder in folders:
        files = _match_layout(spec, folder)
        if files is not None:
            return files, str(folder)
    wanted = " or ".join("+".join(layout.values()) for layout in spec.layouts)
    looked = ", ".join(str(f) for f in folders) or "nowhere"
    hint = f"; set ${ENV_DATA} or pass root=" if root is None else ""
    if spec.recbole and root is None:
        hint += "; or `pip install --no-deps recbole==1.2.1`, whose wheel ships ml-100k"
    raise DataError(None, None, f"dataset {spec.name!r} not found: looked for {wanted} "
                                f"in {looked}{hint}")


# ------------------------------------------------------------------------------------------ loaders


def _session_dataset(name: str, train_path: Path, test_path: Path, valid_fraction: float) -> Dataset:
    """Session protocol. The vocabulary follows first appearance in training, which is the identity
    mapping for the SR-GNN files (their ids were assigned that way); test items unseen in training are
    dropped (:func:`encode_sequences`)."""
    train_seqs, test_seqs = read_session_arrays(train_path), read_session_arrays(test_path)
    vocab, train_encoded, test_encoded = encode_integer_sessions(train_seqs, test_seqs)
    train, valid, test = session_split(train_encoded, test_encoded, valid_fraction,
                                       train_source=str(train_path), test_source=str(test_path))
    return Dataset(name, SESSION, vocab, train, valid, test, source=f"{train_path} + {test_path}")


def _loo_dataset(name: str, source: str, users: list[tuple[str, list[str]]] | None = None,
                 interactions: Interactions | None = None, min_rating: float | None = None,
                 k: int | None = None, titles: dict[str, str] | None = None) -> Dataset:
    """Leave-one-out Dataset from per-user sequences or an interactions table.

    The vocabulary is built from the whole sequences (users in order, items in order of first
    appearance), so every item gets an id, including ones that only ever occur as a test target.
    """
    if users is not None and (k is not None or min_rating is not None):
        if min_rating is not None:
            raise DataError(source, None, "min_rating given, but the data has no ratings")
        flat_users = [u for u, items in users for _ in items]
        flat_items = [i for _, items in users for i in items]
        interactions = Interactions(flat_users, flat_items, np.arange(len(flat_items), dtype=np.float64),
                                    None, source)
        users = None
    if users is None:
        assert interactions is not None
        if min_rating is not None:  # before k-core, as RecBole filters values before k-core
            interactions = filter_min_rating(interactions, min_rating)
        if k is not None:
            interactions = k_core(interactions, k, k)
        users = group_by_user_chronological(interactions)
    raw_seqs = [items for _, items in users]
    vocab = build_vocabulary(raw_seqs)
    train, valid, test = leave_one_out_split(encode_sequences(raw_seqs, vocab), source=source)
    item_titles = None
    if titles:
        item_titles = {vocab.encode(raw): title for raw, title in titles.items() if vocab.get(raw)}
    return Dataset(name, LEAVE_ONE_OUT, vocab, train, valid, test, source=source, item_titles=item_titles)


def _load_session(name: str, files: Files, opts: dict) -> Dataset:
    return _session_dataset(name, files["train"], files["test"], opts.get("valid_fraction", 0.1))


def _load_user_sequences(name: str, files: Files, opts: dict) -> Dataset:
    path = files["sequences"]
    return _loo_dataset(name, str(path), users=read_user_sequences(path),
                        min_rating=opts.get("min_rating"), k=opts.get("k_core"))


def _load_interactions(name: str, files: Files, opts: dict) -> Dataset:
    path = files["interactions"]
    titles = read_item_titles(files["titles"]) if "titles" in files else None
    return _loo_dataset(name, str(path), interactions=read_interactions(path),
                        min_rating=opts.get("min_rating"), k=opts.get("k_core"), titles=titles)


_SESSION_LAYOUT = ({"train": "train_sessions.txt", "test": "test_sessions.txt"},)

_REGISTRY: dict[str, _Spec] = {
    spec.name: spec for spec in (
        _Spec("tmall", SESSION, "Tmall (IJCAI-15), GCE-GNN session split", "tmall", _SESSION_LAYOUT,
              _load_session),
        _Spec("diginetica", SESSION, "Diginetica (CIKM Cup 2016), SR-GNN session split", "diginetica",
              _SESSION_LAYOUT, _load_session),
        _Spec("ml-100k", LEAVE_ONE_OUT, "MovieLens 100K, all ratings as implicit interactions",
              "ml-100k",
              ({"interactions": "ml-100k.inter", "titles": "ml-100k.item"},
               {"interactions": "u.data", "titles": "u.item"}),
              _load_interactions, optional=frozenset({"titles"}), recbole=True),
        _Spec("beauty", LEAVE_ONE_OUT, "Amazon Beauty 5-core (S3-Rec sequences)", "amazon-yelp-seq",
              ({"sequences": "Beauty.txt"},), _load_user_sequences),
        _Spec("sports", LEAVE_ONE_OUT, "Amazon Sports_and_Outdoors 5-core (S3-Rec sequences)",
              "amazon-yelp-seq", ({"sequences": "Sports_and_Outdoors.txt"},), _load_user_sequences),
        _Spec("toys", LEAVE_ONE_OUT, "Amazon Toys_and_Games 5-core (S3-Rec sequences)", "amazon-yelp-seq",
              ({"sequences": "Toys_and_Games.txt"},), _load_user_sequences),
        _Spec("musical-instruments", LEAVE_ONE_OUT, "Amazon Musical Instruments 5-core ratings",
              "amazon-musical-instruments",
              ({"interactions": "ratings_Musical_Instruments_5core.csv"},), _load_interactions),
    )
}


def dataset_names() -> list[str]:
    return list(_REGISTRY)


def available_datasets(root: str | Path | None = None) -> list[DatasetInfo]:
    """Every registered dataset with where it was found, or why it was not."""
    out = []
    for spec in _REGISTRY.values():
        try:
            _, where = _locate(spec, root)
        except DataError as e:
            out.append(DatasetInfo(spec.name, spec.protocol, spec.description, None, e.reason))
        else:
            out.append(DatasetInfo(spec.name, spec.protocol, spec.description, where))
    return out


# ------------------------------------------------------------------------------------ paths, sniffing

_INTEGER_LINE = re.compile(r"^\d+(?: \d+)*$")


def sniff_format(path: str | Path) -> str:
    """``"sessions"``, ``"user-sequences"`` or ``"interactions"`` for a single data file.

    * ``.inter`` files, and files with a , ; | or tab delimiter, are interaction tables; so are
      space-separated files whose lines all have 3 or 4 fields (``user item rating time``).
    * Other space-separated files are user sequences when the first tokens are distinct and either
      count 1, 2, 3, ... (S3-Rec files) or are not integers; otherwise session lines.

    Pass ``format=`` to :func:`load_dataset` when the guess is wrong.
    """
    p = Path(path)
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    if name.endswith(".inter"):
        return "interactions"
    sample = [line.split(" ") for line in read_text(p).split("\n")[:2000] if line.strip()]
    if not sample:
        raise DataError(p, None, "no rows (the file is empty)")
    if any(any(c in "\t,;|" for c in " ".join(fields)) for fields in sample):
        return "interactions"
    widths = {len(fields) for fields in sample}
    if len(sample) >= 10 and len(widths) == 1 and widths <= {3, 4}:
        return "interactions"
    firsts = [fields[0] for fields in sample]
    if len(set(firsts)) == len(firsts):
        if not all(f.isdigit() for f in firsts):
            return "user-sequences"
        start = int(firsts[0])
        if [int(f) for f in firsts] == list(range(start, start + len(firsts))):
            return "user-sequences"
    return "sessions"


def _load_path(p: Path, opts: dict, fmt: str | None) -> Dataset:
    name = re.sub(r"(\.gz)?$", "", p.name)
    name = re.sub(r"\.(txt|csv|tsv|dat|data|inter)$", "", name) or p.name
    if p.is_dir():
        # Registered layouts too (a copy of ml-100k/ loads as ml-100k), but not those of folders that
        # hold several datasets (amazon-yelp-seq/): which one was meant is a guess.
        folders = Counter(spec.folder for spec in _REGISTRY.values())
        single = [spec for spec in _REGISTRY.values() if folders[spec.folder] == 1]
        for spec in [_Spec("folder", SESSION, "", "", _SESSION_LAYOUT, _load_session), *single]:
            files = _match_layout(spec, p)
            if files is not None:
                return spec.load(p.name, files, opts)
        inter = sorted(p.glob("*.inter")) + sorted(p.glob("*.inter.gz"))
        if len(inter) == 1:
            return _load_path(inter[0], opts, fmt)
        raise DataError(p, None, "folder holds no known dataset layout: expected train_sessions.txt[.gz] "
                                 "+ test_sessions.txt[.gz], a registered dataset's files, or one .inter file")
    fmt = fmt or sniff_format(p)
    if fmt == "sessions":
        # One file of sessions: each line is treated as one user's history (leave-one-out).
        sessions = read_session_lines(p)
        users = [(str(n), items) for n, items in enumerate(sessions, start=1)]
        return _loo_dataset(name, str(p), users=users, min_rating=opts.get("min_rating"),
                            k=opts.get("k_core"))
    if fmt == "user-sequences":
        return _load_user_sequences(name, {"sequences": p}, opts)
    if fmt == "interactions":
        return _load_interactions(name, {"interactions": p}, opts)
    raise ValueError(f"unknown format {fmt!r}; use 'sessions', 'user-sequences' or 'interactions'")


def load_dataset(name_or_path: str | Path, *, root: str | Path | None = None, valid_fraction: float = 0.1,
                 min_rating: float | None = None, k_core: int | None = None,
                 format: str | None = None) -> Dataset:
    """A registered dataset by name (see :func:`available_datasets`), or a dataset from a path.

    * a registered name (``tmall``, ``diginetica``, ``ml-100k``, ``beauty``, ``sports``, ``toys``,
      ``musical-instruments``), searched for as described in the module docstring (``root`` first);
      a string that is a registered name is always the name; pass a ``Path`` to mean a folder;
    * a folder with ``train_sessions.txt[.gz]`` and ``test_sessions.txt[.gz]``: the session protocol;
      a folder laid out like a registered dataset loads as that dataset;
    * a single file: its format is sniffed (:func:`sniff_format`, or given as ``format``) and it is
      split leave-one-out per user.

    ``valid_fraction`` applies to the session protocol. ``min_rating`` (keep rows rated at least this)
    and ``k_core`` (iterative k-core on users and items) apply to leave-one-out data. Problems with the
    files are :class:`DataError`.
    """
    opts = {"valid_fraction": valid_fraction, "min_rating": min_rating, "k_core": k_core}
    return _name_or_path(name_or_path, root, lambda spec, files: spec.load(spec.name, files, opts),
                         lambda p: _load_path(p, opts, format))


def _name_or_path(name_or_path: str | Path, root: str | Path | None, from_files: Callable[[_Spec, Files], Any],
                  from_path: Callable[[Path], Any], check: Callable[[_Spec], None] | None = None) -> Any:
    """Load a registered dataset (``from_files`` of its located files) or a path (``from_path``); the result's
    ``origin`` records which, so that a checkpoint can load the same data again."""
    key = str(name_or_path)
    if isinstance(name_or_path, str) and key.lower() in _REGISTRY:
        spec = _REGISTRY[key.lower()]
        if check is not None:
            check(spec)
        files, _ = _locate(spec, root)
        data = from_files(spec, files)
        data.origin = spec.name
        return data
    p = Path(name_or_path)
    if not p.exists():
        raise DataError(p, None, f"no such file or folder, and not a registered dataset "
                                 f"({', '.join(_REGISTRY)})")
    data = from_path(p)
    data.origin = str(p.resolve())
    return data


# ------------------------------------------------------------------ interaction data (collaborative filtering)

_LIGHTGCN_LAYOUT = ({"train": "train.txt", "test": "test.txt"},)


def _not_a_loader(name: str, files: Files, opts: dict) -> Dataset:
    raise ValueError("layout only: use load_interactions")


_LIGHTGCN = _Spec("lightgcn", CF, "LightGCN / NGCF train.txt + test.txt", "", _LIGHTGCN_LAYOUT, _not_a_loader)


def _path_name(p: Path) -> str:
    name = re.sub(r"(\.gz)?$", "", p.name)
    return re.sub(r"\.(txt|csv|tsv|dat|data|inter)$", "", name) or p.name


def _user_lines_as_interactions(users: list[tuple[str, list[str]]], source: str) -> Interactions:
    flat_users = [u for u, items in users for _ in items]
    flat_items = [i for _, items in users for i in items]
    return Interactions(flat_users, flat_items, np.arange(len(flat_items), dtype=np.float64), None, source)


def _cf_from_files(name: str, files: Files, opts: dict) -> InteractionDataset:
    split = {k: opts[k] for k in ("seed", "min_rating", "k_core")}
    if set(files) >= {"train", "test"}:  # LightGCN layout
        train, test = files["train"], files["test"]
        return split_train_test(name, read_user_item_lines(train, allow_empty=False), read_user_item_lines(test),
                                valid_fraction=opts["valid_fraction"], train_source=str(train),
                                test_source=str(test), **split)
    if "interactions" in files:
        inter = read_interactions(files["interactions"])
    else:
        path = files["sequences"]
        inter = _user_lines_as_interactions(read_user_sequences(path), str(path))
    return split_interactions(name, inter, ratios=opts["ratios"], **split)


def _cf_from_path(p: Path, opts: dict, fmt: str | None) -> InteractionDataset:
    if p.is_dir():
        files = _match_layout(_LIGHTGCN, p)
        if files is not None:
            return _cf_from_files(p.name, files, opts)
        folders = Counter(spec.folder for spec in _REGISTRY.values())
        for spec in _REGISTRY.values():
            if folders[spec.folder] == 1 and spec.protocol != SESSION:
                files = _match_layout(spec, p)
                if files is not None:
                    return _cf_from_files(p.name, files, opts)
        inter = sorted(p.glob("*.inter")) + sorted(p.glob("*.inter.gz"))
        if len(inter) == 1:
            return _cf_from_path(inter[0], opts, fmt)
        raise DataError(p, None, "folder holds no interaction data: expected train.txt[.gz] + test.txt[.gz] "
                                 "(LightGCN), a registered dataset's files, or one .inter file")
    fmt = fmt or sniff_format(p)
    name = _path_name(p)
    if fmt == "interactions":
        return _cf_from_files(name, {"interactions": p}, opts)
    if fmt == "user-sequences":
        return _cf_from_files(name, {"sequences": p}, opts)
    if fmt == "sessions":  # each line is one user's items, as load_dataset reads such a file
        users = [(str(n), items) for n, items in enumerate(read_session_lines(p), start=1)]
        return split_interactions(name, _user_lines_as_interactions(users, str(p)), ratios=opts["ratios"],
                                  seed=opts["seed"], min_rating=opts["min_rating"], k_core=opts["k_core"])
    raise ValueError(f"unknown format {fmt!r}; use 'sessions', 'user-sequences' or 'interactions'")


def load_interactions(name_or_path: str | Path, *, root: str | Path | None = None,
                      ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                      valid_fraction: float = 0.1, min_rating: float | None = None, k_core: int | None = None,
                      format: str | None = None) -> InteractionDataset:
    """Interaction data for collaborative filtering (see :mod:`pocketrec.data.interactions`).

    * a registered name with user-item data (``ml-100k``, ``beauty``, ``sports``, ``toys``,
      ``musical-instruments``), found as :func:`load_dataset` finds it; the session datasets (``tmall``,
      ``diginetica``) have no users and are a :class:`DataError`;
    * a folder with ``train.txt[.gz]`` + ``test.txt[.gz]`` (the LightGCN / NGCF layout): test as given,
      validation a seeded random ``valid_fraction`` of each user's training items;
    * a folder laid out like a registered dataset, a folder with one ``.inter`` file, or a single file
      (format sniffed by :func:`sniff_format` or given as ``format``): a seeded per-user random split by
      ``ratios`` (train, valid, test).

    ``min_rating`` keeps rows rated at least this (data without ratings: :class:`DataError`) and
    ``k_core`` the iterative k-core of distinct (user, item) pairs, before splitting.
    """
    opts = {"ratios": tuple(ratios), "seed": seed, "valid_fraction": valid_fraction, "min_rating": min_rating,
            "k_core": k_core}

    def has_users(spec: _Spec) -> None:
        if spec.protocol == SESSION:
            usable = ", ".join(s.name for s in _REGISTRY.values() if s.protocol != SESSION)
            raise DataError(None, None, f"dataset {spec.name!r} is session data (anonymous sessions, no users); "
                                        f"collaborative filtering needs user-item data: {usable}, or a path")

    return _name_or_path(name_or_path, root, lambda spec, files: _cf_from_files(spec.name, files, opts),
                         lambda p: _cf_from_path(p, opts, format), check=has_users)
