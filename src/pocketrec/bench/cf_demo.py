"""The collaborative-filtering part of ``pocketrec demo``: a LightGCN teacher, one user's device file, and
that user's recommendations from the numpy runtime; then RULE: one elastic model trained once, customised to
several budgets in about a second each (:func:`run_rule_demo`); then PEEL: that model refined per user group,
a user's file from its group's blocks, shrunk on the device (:func:`run_peel_demo`); last the fleet service
serving both for a few seconds, the client fetching a user's file at two budgets (:func:`run_fleet_demo`).

LightGCN on ml-100k with the reference shape (d = 64, 3 layers, batch 2048) but a higher learning rate and
30 epochs, so that the tour stays short; ``pocketrec train --backbone lightgcn`` trains to convergence.
A finished teacher in ``OUT/lightgcn`` of the same data is reused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

DEMO_LIGHTGCN = ["backbone=lightgcn", "encoder.dim=64", "encoder.layers=3", "train.lr=0.005", "train.epochs=30",
                 "train.patience=5"]


def run_cf_demo(dataset: str, out: Path, log: Callable[[str], None], quiet: bool = False,
                overrides: list[str] | None = None) -> dict[str, Any]:
    """Train (or reuse) the LightGCN teacher of ``dataset`` in ``OUT/lightgcn``, export the device file of
    its first user and recommend for that user with the numpy runtime; returns what it did (a row)."""
    from pocketrec.data import load_interactions
    from pocketrec.device.artifact import export_artifact
    from pocketrec.device.runtime import load
    from pocketrec.train.checkpoint import read_meta
    from pocketrec.train.teacher import load_teacher_config, train_teacher

    data = load_interactions(dataset)
    run = out / "lightgcn"
    best = run / "best"
    cfg = load_teacher_config(None, [*DEMO_LIGHTGCN, *(overrides or []), f"dataset={dataset}", f"out={run}",
                                     *(["train.progress=false"] if quiet else [])])
    if _finished(best, data):
        log(f"lightgcn: reusing {best}")
    else:
        log(f"lightgcn: training on {data.name} ({data.num_users:,} users, {data.num_items:,} items, "
            f"{data.train.nnz:,} training interactions)")
        if run.exists():
            import shutil

            shutil.rmtree(run)  # an unfinished demo run of this folder: the demo owns it
        train_teacher(data, cfg)
    meta = read_meta(best)
    user = data.users.raw_ids[0]
    artifact = export_artifact(best, out / "artifacts" / f"lightgcn-user-{user}.safetensors", users=[user], data=data)
    items, scores = load(artifact).recommend_user(user, k=10)
    return {"dataset": data.name, "method": "lightgcn", "user": user, "artifact": str(artifact),
            "artifact_bytes": artifact.nbytes, "table_bytes": int(meta["table_bytes"]), "test": meta["test"],
            "items": items, "scores": [float(s) for s in scores],
            "history": data.items.decode(data.seen("test")[data.users.encode(user)].indices)}


#: RULE's schedule in the demo: a short fine-tune and a small estimator (the defaults: 100 epochs, 300 labels)
DEMO_RULE = ["train.epochs=4", "train.patience=2", "label_archs=120"]
DEMO_RULE_BUDGETS = ("2%", "5%", "10%")


def run_rule_demo(dataset: str, out: Path, log: Callable[[str], None], quiet: bool = False,
                  budgets: tuple[str, ...] = DEMO_RULE_BUDGETS) -> dict[str, Any]:
    """Train RULE once from the demo's LightGCN (``OUT/lightgcn``) into ``OUT/rule`` (reused when finished), then
    customise it to each budget (search, one user's device file, the test figures); returns a row per budget."""
    import time

    from pocketrec.data import load_interactions
    from pocketrec.methods.customize import Customizer
    from pocketrec.methods.rule import ESTIMATOR_FILE

    data = load_interactions(dataset)
    run = out / "rule"
    seconds = train_once("rule", [*DEMO_RULE, f"teacher={out / 'lightgcn' / 'best'}"], run, ESTIMATOR_FILE, data,
                         log, quiet, "rule: training the elastic model once (blocks of the teacher's rotated item "
                         "vectors, random sub-architectures each step), then its estimator")
    customizer = Customizer(run, dataset=data)
    user = data.users.raw_ids[0]
    rows = []
    for budget in budgets:
        started = time.perf_counter()
        choice = customizer.choose(budget)
        path = out / "artifacts" / f"rule-{budget.replace('%', 'pct')}-user-{user}.safetensors"
        customizer.write(choice, path, users=[user])
        choice.seconds = time.perf_counter() - started
        rows.append({**choice.summary(), "test": customizer.evaluate(choice, "test")})
    return {"train_seconds": seconds, "user": user, "dense_table_bytes": customizer.dense_bytes, "rows": rows}


#: PEEL's schedule in the demo: a few epochs per user group (the default: up to 20)
DEMO_PEEL = ["train.epochs=3"]


def run_peel_demo(dataset: str, out: Path, log: Callable[[str], None], quiet: bool = False,
                  budgets: tuple[str, ...] = ("2%", "5%")) -> dict[str, Any]:
    """Refine the demo's RULE model (``OUT/rule``) per user group into ``OUT/peel`` (reused when finished); at
    each budget write the demo user's file (its group's blocks, resizable) and test every user with its
    group's file; then shrink the largest file on the device to the smallest budget. Returns what it did."""
    import time

    from pocketrec.data import load_interactions
    from pocketrec.device.runtime import load
    from pocketrec.methods.peel import PEEL_FILE
    from pocketrec.methods.peel_customize import PeelCustomizer
    from pocketrec.search.budget import parse_budget

    data = load_interactions(dataset)
    run = out / "peel"
    seconds = train_once("peel", [*DEMO_PEEL, f"teacher={out / 'rule'}"], run, PEEL_FILE, data, log, quiet,
                         "peel: k-means user groups, then each group's rotated copy of the RULE blocks refined with "
                         "its block-weight controller")
    peel = PeelCustomizer(run, dataset=data)
    user = data.users.raw_ids[0]
    group = peel.group_of(user)
    rows = []
    for budget in budgets:
        started = time.perf_counter()
        choices = {g: peel.choose(budget, g, dtype="int8") for g in range(peel.num_groups)}
        path = out / "artifacts" / f"peel-{budget.replace('%', 'pct')}-user-{user}.safetensors"
        peel.write(choices[group], path, users=[user])
        seconds_one = time.perf_counter() - started
        test = peel.state.evaluate(peel.base, data, "test", {g: (c.mask, c.dtype) for g, c in choices.items()})
        rows.append({**choices[group].summary(), "seconds": round(seconds_one, 3), "test": test})
    device = load(rows[-1]["artifact"])
    started = time.perf_counter()
    device.shrink(parse_budget(budgets[0], peel.dense_bytes))
    shrink_ms = 1000 * (time.perf_counter() - started)
    same = device.manifest["checksum"] == load(rows[0]["artifact"]).manifest["checksum"]
    items, _ = device.recommend_user(user, k=5)
    return {"train_seconds": seconds, "user": user, "group": group, "groups": peel.num_groups, "rows": rows,
            "shrink_ms": shrink_ms, "shrunk_equals_direct": same, "shrunk_table_bytes": device.table_bytes,
            "items": items}


def run_fleet_demo(dataset: str, out: Path, budgets: tuple[str, ...] = ("3%", "10%")) -> dict[str, Any]:
    """Serve the demo's RULE and PEEL runs (``OUT/rule``, ``OUT/peel``) on 127.0.0.1 for a few seconds, files
    signed with a key made for the occasion; with pocketrec's client fetch the demo user's file at each budget
    (verified: checksum and signature), recommend from each, and grow the first to the last budget with a delta.
    Returns what it did."""
    import secrets

    import httpx

    from pocketrec.data import load_interactions
    from pocketrec.device.client import fetch, grow
    from pocketrec.device.runtime import load
    from pocketrec.fleet.app import Fleet, create_app, running
    from pocketrec.fleet.cache import ArtifactCache
    from pocketrec.fleet.models import ServedModel

    data = load_interactions(dataset)
    models = {name: ServedModel(name, out / name, dataset=data) for name in ("rule", "peel")}
    key = secrets.token_hex(16).encode()
    fleet = Fleet(models, ArtifactCache(out / "fleet-cache", 1 << 28), key)
    user = data.users.raw_ids[0]
    folder = out / "artifacts"
    rows = []
    with running(create_app(fleet)) as url:
        served = [m["name"] for m in httpx.get(url + "/v1/models").json()["models"]]
        for budget in budgets:
            got = fetch(url, "peel", budget, folder / f"fleet-peel-{budget.replace('%', 'pct')}.safetensors",
                        user=user, key=key)
            items, _ = load(got.path, key).recommend_user(user, k=5)
            rows.append({"budget": budget, "path": str(got.path), "file_bytes": got.nbytes,
                         "table_bytes": got.table_bytes, "ms": 1000 * got.seconds, "cache": got.cache, "items": items})
        grown = grow(url, rows[0]["path"], budgets[-1], folder / "fleet-peel-grown.safetensors", key=key)
    return {"url": url, "models": served, "user": user, "group": models["peel"].customizer.group_of(user),
            "rows": rows, "delta_bytes": grown.received, "grown_bytes": grown.nbytes,
            "grown_table_bytes": grown.table_bytes}


def train_once(method: str, overrides: list[str], run: Path, done_file: str, data: Any, log: Callable[[str], None],
               quiet: bool, message: str) -> float:
    """Train ``method`` into ``run`` unless a finished run is there (tested, with ``done_file``, the file its
    training writes last); returns the seconds it took (0 when reused). An unfinished run is replaced."""
    import time

    from pocketrec.methods import registry
    from pocketrec.train.checkpoint import CheckpointError, read_meta

    try:
        done = read_meta(run / "best").get("test") is not None and (run / done_file).exists()
    except CheckpointError:
        done = False
    if done:
        log(f"{method}: reusing {run}")
        return 0.0
    if run.exists():
        import shutil

        shutil.rmtree(run)  # an unfinished demo run of this folder: the demo owns it
    spec = registry.get_method(method)
    cfg = spec.load_config(None, [*overrides, f"out={run}", *(["train.progress=false"] if quiet else [])])
    log(message)
    started = time.perf_counter()
    spec.compress(cfg, data)
    return time.perf_counter() - started


def _finished(best: Path, data: Any) -> bool:
    """A finished teacher of ``data`` (same catalogue, users and a test figure) sits in ``best``."""
    from pocketrec.train.checkpoint import CheckpointError, read_meta

    try:
        meta = read_meta(best)
    except CheckpointError:
        return False
    return (meta.get("backbone") == "lightgcn" and meta.get("vocab_fingerprint") == data.vocab.fingerprint()
            and meta.get("num_users") == data.num_users and meta.get("test") is not None)
