"""Dynamic budgets on the device: an elastic artifact with a block priority shrinks in place to exactly the
artifact built directly for the smaller budget (same scores, tensors, checksum and canonical bytes), grows back
with a delta holding only the missing blocks, and refuses anything else in one line, leaving it unchanged."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import one_line_error, synthetic_interactions
from pocketrec.backbones.user_vectors import UserVectorModel
from pocketrec.cli import app
from pocketrec.device.artifact import build_artifact, export_artifact
from pocketrec.device.np_resize import Delta, DeltaError, apply_delta, make_delta, save_artifact
from pocketrec.device.runtime import DeviceModel, artifact_checksum, load, read_artifact
from pocketrec.device.signing import sign
from pocketrec.formats.elastic_arrays import check_priority, elastic_nbytes, select_by_priority
from pocketrec.methods import registry
from pocketrec.methods.customize import Customizer, block_priority
from pocketrec.tables import DenseTable, ElasticTable, array_nbytes
from pocketrec.tables.elastic_core import item_groups
from pocketrec.train.teacher import load_teacher_config, train_teacher

DIM, BLOCKS, GROUPS = 16, 4, 5
WIDTH = DIM // BLOCKS
USERS = ["u1", "u7"]
CASES = [(dtype, scoring) for dtype in ("float32", "float16", "int8") for scoring in ("shared", "aligned")]


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions()


def make_model(data, dtype: str = "float32", scoring: str = "shared", seed: int = 0,
               priority: bool = True) -> UserVectorModel:
    torch.manual_seed(seed)
    counts = np.asarray(data.train.sum(axis=0)).ravel()
    groups = item_groups(counts, GROUPS)
    table = ElasticTable.from_rows(torch.randn(data.num_items + 1, DIM), BLOCKS, groups, GROUPS, scoring=scoring,
                                   dtype=dtype)
    if priority:
        group_pop = np.bincount(groups[1:], weights=counts[1:], minlength=GROUPS)
        table.set_priority(block_priority(np.ones((GROUPS, BLOCKS), dtype=bool), group_pop))
    model = UserVectorModel(data.num_users, table)
    model.attach(data)
    return model


def user_pairs(data) -> list[tuple[str, int]]:
    return [(raw, data.users.encode(raw)) for raw in USERS]


def direct(model: UserVectorModel, budget: int) -> tuple[dict, dict]:
    """The artifact built directly for ``budget`` (torch side)."""
    with model.table.using(model.table.priority_architecture(budget)):
        return build_artifact(model, users=user_pairs(model._attached))


def canonical(tmp_path: Path, name: str, artifact: tuple[dict, dict]) -> bytes:
    return Path(save_artifact(tmp_path / name, *artifact)).read_bytes()


def state(model: DeviceModel) -> tuple:
    """Everything that a refusal must leave as it was."""
    digest = hashlib.sha256()
    for name in sorted(model.tensors):
        digest.update(name.encode() + np.ascontiguousarray(model.tensors[name]).tobytes())
    return digest.hexdigest(), json.dumps(model.manifest, sort_keys=True), model.table_bytes


def budgets(model: UserVectorModel) -> list[int]:
    """Budgets from the full table down to one block per group."""
    table = model.table
    full = table.nbytes()
    smallest = table.architecture_bytes(first_blocks(table))  # each group's highest-priority block
    return [full, full - 1, (full + smallest) // 2, (full + 3 * smallest) // 4, smallest + 40, smallest]


def first_blocks(table: ElasticTable) -> np.ndarray:
    mask = np.zeros((table.num_groups, table.num_blocks), dtype=bool)
    seen = set()
    for flat in table.priority:
        g, k = divmod(int(flat), table.num_blocks)
        if g not in seen:
            mask[g, k] = True
            seen.add(g)
    return mask


# ------------------------------------------------------------------------------------------------ the rule


def test_select_by_priority_keeps_a_block_per_group_and_nests_the_budgets():
    rng = np.random.default_rng(0)
    sizes = np.array([30, 20, 10, 5, 0])
    order = rng.permutation(GROUPS * BLOCKS)
    previous = None
    smallest = None
    for budget in range(10_000, 0, -97):
        try:
            mask = select_by_priority(order, sizes, WIDTH, "float16", budget)
        except ValueError as err:
            smallest = smallest or str(err)
            continue
        assert mask.any(axis=1).all()
        assert elastic_nbytes(sizes, mask, WIDTH, "float16", with_priority=True) <= budget
        if previous is not None:
            assert not (mask & ~previous).any()  # a smaller budget drops blocks, never adds one
        previous = mask
    assert smallest is not None and "below one block per item group" in smallest
    pairs = np.stack(np.divmod(order, BLOCKS), axis=1)
    assert np.array_equal(select_by_priority(pairs, sizes, WIDTH, "int8", 900),
                          select_by_priority(order, sizes, WIDTH, "int8", 900))
    # the first pair that does not fit ends the selection: no later, cheaper pair is taken instead
    big_first = np.array([0, 4, 1, 5, 2, 6, 3, 7])  # 2 groups x 4 blocks; group 0 (100 items) before group 1 (1)
    firsts = np.zeros((2, 4), dtype=bool)
    firsts[:, 0] = True
    mask = select_by_priority(big_first, [100, 1], 1, "float32",
                              elastic_nbytes([100, 1], firsts, 1, "float32", with_priority=True) + 399)
    assert np.array_equal(mask, firsts)  # block 1 of group 0 (400 B) does not fit: the selection stops there,
    # though block 1 of group 1 (4 B), next in line, would have
    with pytest.raises(ValueError, match="exactly once"):
        check_priority(order[:-1], GROUPS, BLOCKS)
    with pytest.raises(ValueError, match="exactly once"):
        check_priority(np.concatenate([order[:-1], order[:1]]), GROUPS, BLOCKS)


def test_the_priority_is_exported_counted_and_restored(data):
    model = make_model(data, "int8", priority=False)
    table = model.table
    before, description = table.export()
    assert "priority" not in before and "priority" not in description
    assert table.nbytes() == array_nbytes(before)
    table.set_priority(first_blocks_order := block_priority(np.ones((GROUPS, BLOCKS), bool), np.arange(GROUPS)))
    arrays, description = table.export()
    assert description["priority"] is True and arrays["priority"].dtype == np.uint16
    assert table.nbytes() == array_nbytes(arrays) == array_nbytes(before) + 2 * GROUPS * BLOCKS
    assert all(np.array_equal(arrays[k], v) for k, v in before.items())  # the rest is as before
    again = ElasticTable.from_export(arrays, description)
    assert np.array_equal(again.priority, first_blocks_order) and again.nbytes() == table.nbytes()
    table.set_priority(None)
    assert table.export()[1] == ElasticTable.from_export(before, table.description()).description()


def test_the_rule_priority_gives_the_chosen_architecture_back():
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=bool)
    pop = np.array([5.0, 3.0, 1.0, 9.0, 0.0])
    order = block_priority(mask, pop)
    assert order[:5].tolist() == [3 * 4, 0, 1 * 4, 2 * 4, 4 * 4]  # block 0 of every group, by popularity
    assert order[5:8].tolist() == [3 * 4 + 1, 1, 1 * 4 + 1]  # then block 1 of those that keep it
    sizes = np.array([12, 12, 12, 12, 12])
    own = elastic_nbytes(sizes, mask, WIDTH, "float32", with_priority=True)
    assert np.array_equal(select_by_priority(order, sizes, WIDTH, "float32", own), mask)


# ------------------------------------------------------------------------------------------------ shrink and grow


@pytest.mark.parametrize("dtype,scoring", CASES)
def test_shrink_is_the_direct_build_and_the_delta_grows_it_back(data, dtype, scoring, tmp_path):
    model = make_model(data, dtype, scoring)
    sizes = budgets(model)
    big = direct(model, sizes[0])
    big_bytes = canonical(tmp_path, "big.safetensors", big)
    queries = np.random.default_rng(1).standard_normal((3, DIM)).astype(np.float32)
    for budget in sizes[1:]:
        small = direct(model, budget)
        device = DeviceModel(*big)
        assert device.shrink(budget) == int(small[1]["table_bytes"]) <= budget
        assert device.manifest == small[1] and device.manifest["checksum"] == small[1]["checksum"]
        assert set(device.tensors) == set(small[0])
        assert all(np.array_equal(device.tensors[k], v) and device.tensors[k].dtype == v.dtype
                   for k, v in small[0].items())
        reference = DeviceModel(*small)
        assert np.array_equal(device.table.score(queries), reference.table.score(queries))  # bit-identical
        assert device.recommend_user("u7", k=10)[0] == reference.recommend_user("u7", k=10)[0]
        small_bytes = canonical(tmp_path, "small.safetensors", small)
        assert Path(device.save(tmp_path / "shrunk.safetensors")).read_bytes() == small_bytes
        # the exporter's own file has the same content (its metadata order is safetensors' hash order)
        exported = read_artifact(export_artifact_of(model, budget, tmp_path / "exported.safetensors"))
        assert exported[1] == device.manifest
        delta = make_delta(big, (device.tensors, device.manifest))
        assert delta.nbytes < array_nbytes({k: v for k, v in big[0].items() if k.startswith("table/")})
        assert device.grow(delta) == int(big[1]["table_bytes"])
        assert Path(device.save(tmp_path / "grown.safetensors")).read_bytes() == big_bytes
        assert np.array_equal(device.table.score(queries), DeviceModel(*big).table.score(queries))


def export_artifact_of(model: UserVectorModel, budget: int, path: Path) -> Path:
    with model.table.using(model.table.priority_architecture(budget)):
        return export_artifact(model, path, users=USERS, data=model._attached)


def test_shrink_then_grow_across_several_budgets(data, tmp_path):
    model = make_model(data, "int8", "aligned", seed=3)
    sizes = budgets(model)
    artifacts = {b: direct(model, b) for b in sizes}
    device = DeviceModel(*artifacts[sizes[0]])
    for smaller in sizes[1:]:  # down step by step ...
        device.shrink(smaller)
        assert device.manifest["checksum"] == artifacts[smaller][1]["checksum"]
    deltas = {(b, s): make_delta(artifacts[b], artifacts[s]) for b, s in zip(sizes, sizes[1:], strict=False)}
    for bigger, smaller in reversed(list(deltas)):  # ... and up again, one delta at a time
        device.grow(deltas[(bigger, smaller)])
        assert device.manifest["checksum"] == artifacts[bigger][1]["checksum"]
    device.shrink(sizes[-1])  # and a single jump both ways
    device.grow(make_delta(artifacts[sizes[0]], artifacts[sizes[-1]]))
    assert device.manifest == artifacts[sizes[0]][1]


def test_refusals_change_nothing(data, tmp_path):
    model = make_model(data, "float16")
    sizes = budgets(model)
    big, small = direct(model, sizes[0]), direct(model, sizes[2])
    device = DeviceModel(*small)
    before = state(device)
    with pytest.raises(ValueError, match="below one block per item group"):
        device.shrink(sizes[-1] - 1)
    assert state(device) == before
    with pytest.raises(ValueError, match="does not hold.*grow it with a delta"):
        device.shrink(sizes[0])
    assert state(device) == before
    with pytest.raises(ValueError, match="positive whole number"):
        device.shrink(0)
    other = make_model(data, "float16", seed=5)
    foreign = make_delta(direct(other, sizes[0]), direct(other, sizes[2]))
    with pytest.raises(DeltaError, match="made for another artifact"):
        device.grow(foreign)
    assert state(device) == before
    delta = make_delta(big, small)
    path = Path(delta.save(tmp_path / "d.safetensors"))
    whole = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) - 7])
    with pytest.raises(DeltaError, match="not a readable delta file"):
        device.grow(tmp_path / "cut.safetensors")
    assert state(device) == before
    flipped = bytearray(whole)
    flipped[-3] ^= 0x10
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(DeltaError, match="delta checksum mismatch"):
        device.grow(tmp_path / "flip.safetensors")
    forged_tensors = dict(delta.tensors)
    name = next(k for k in forged_tensors if k.startswith("blocks/"))
    forged_tensors[name] = forged_tensors[name] * np.float16(2)
    forged = Delta(forged_tensors, {k: v for k, v in delta.manifest.items() if k != "checksum"})
    forged.manifest["checksum"] = artifact_checksum(forged.tensors, forged.manifest)  # consistent, but wrong blocks
    with pytest.raises(DeltaError, match="target checksum"):
        device.grow(forged)
    assert state(device) == before
    with pytest.raises(ValueError, match="SMALL keeps blocks BIG does not"):
        make_delta(small, big)
    without = make_model(data, "float16", priority=False)
    bare = DeviceModel(*build_artifact(without, users=user_pairs(data)))
    with pytest.raises(ValueError, match="no block priority"):
        bare.shrink(sizes[2])
    dense = UserVectorModel(data.num_users, DenseTable(data.num_items, DIM))
    dense.attach(data)
    flat = DeviceModel(*build_artifact(dense, users=user_pairs(data)))
    with pytest.raises(ValueError, match="only an elastic"):
        flat.shrink(10_000)
    with pytest.raises(ValueError, match="only an elastic"):
        flat.save(tmp_path / "x.safetensors")
    device.grow(path)  # the good delta still applies
    assert device.manifest == big[1]


def test_signatures_after_a_resize(data, tmp_path):
    model = make_model(data)
    sizes = budgets(model)
    big, small = direct(model, sizes[0]), direct(model, sizes[3])
    key = b"server secret"
    signed_big = (big[0], {**big[1], "signature": sign(big[1]["checksum"], key)})
    device = DeviceModel(*signed_big)
    device.shrink(device.table_bytes + 1)  # drops nothing: the artifact as it was, still signed
    assert device.manifest == signed_big[1]
    device.shrink(sizes[3])
    assert "signature" not in device.manifest  # a shrunk artifact is unsigned ...
    load(device.save(tmp_path / "resigned.safetensors", key=key), key=key)  # ... unless re-signed
    delta = make_delta(signed_big, small)
    assert delta.manifest["target_signature"] == signed_big[1]["signature"]
    with pytest.raises(DeltaError, match="signature"):
        apply_delta(device.tensors, device.manifest, make_delta(big, small), key=key)
    device.grow(delta, key=key)  # the delta carries the server's signature of the target
    load(device.save(tmp_path / "grown.safetensors"), key=key)


@pytest.fixture(scope="module")
def rule_run(data, tmp_path_factory):
    from test_rule import RULE, TEACHER

    root = tmp_path_factory.mktemp("rule")
    train_teacher(data, load_teacher_config(None, [*TEACHER, f"out={root / 'teacher'}"]))
    spec = registry.get_method("rule")
    spec.compress(spec.load_config(None, [*RULE, f"teacher={root / 'teacher' / 'best'}", f"out={root / 'run'}"]),
                  data)
    return root / "run"


def test_customize_writes_rule_artifacts_a_device_can_shrink(rule_run, data, tmp_path):
    customizer = Customizer(rule_run, dataset=data)
    table = customizer.table
    choice = customizer.choose("60%", strategy="popularity", dtype="int8")
    written = customizer.write(choice, tmp_path / "big.safetensors", users=USERS[:1], priority=True)
    assert table.priority is None  # set for the export only
    device = load(written)
    assert np.array_equal(device.table.mask, choice.mask)  # the chosen architecture, as without a priority
    pairs = table.num_groups * table.num_blocks
    assert device.table_bytes == choice.table_bytes + 2 * pairs
    order = block_priority(choice.mask, customizer.group_popularity)
    assert np.array_equal(device.table.priority, order)
    firsts = np.zeros_like(choice.mask)
    firsts[:, 0] = True
    smaller = (device.table.table_nbytes(firsts) + device.table_bytes) // 2
    device.shrink(smaller)
    with customizer.stored_as("int8"):  # the torch side's direct build of the smaller budget
        table.set_priority(order)
        try:
            with table.using(table.priority_architecture(smaller)):
                built = build_artifact(customizer.model, vocab=customizer.meta.get("vocab"),
                                       dataset=str(customizer.meta.get("dataset", "")), users=user_pairs(data)[:1])
        finally:
            table.set_priority(None)
    assert device.manifest == built[1] and int(built[1]["table_bytes"]) < choice.table_bytes


# ------------------------------------------------------------------------------------------------ command line


def test_cli_resize_and_delta(data, tmp_path):
    model = make_model(data, "int8", "shared")
    sizes = budgets(model)
    big = tmp_path / "big.safetensors"
    big_bytes = canonical(tmp_path, "big.safetensors", direct(model, sizes[0]))
    small_bytes = canonical(tmp_path, "small-direct.safetensors", direct(model, sizes[2]))
    runner = CliRunner()
    small = tmp_path / "small.safetensors"
    result = runner.invoke(app, ["resize", str(big), "--budget", str(sizes[2]), "-o", str(small)])
    assert result.exit_code == 0, result.output
    assert small.read_bytes() == small_bytes and "unsigned" in result.output
    delta = tmp_path / "grow.safetensors"
    result = runner.invoke(app, ["delta", str(big), str(small), "-o", str(delta)])
    assert result.exit_code == 0, result.output
    assert delta.stat().st_size < big.stat().st_size
    grown = tmp_path / "grown.safetensors"
    result = runner.invoke(app, ["resize", str(small), "--delta", str(delta), "-o", str(grown)])
    assert result.exit_code == 0, result.output
    assert grown.read_bytes() == big_bytes
    kb = f"{sizes[2] / 1000}KB"  # sizes as people write them
    result = runner.invoke(app, ["resize", str(big), "--budget", kb, "-o", str(tmp_path / "kb.safetensors")])
    assert result.exit_code == 0, result.output

    target = tmp_path / "never.safetensors"
    text = one_line_error(runner.invoke(app, ["resize", str(big), "--budget", "50%", "-o", str(target)]))
    assert "bytes, KB or MB" in text
    text = one_line_error(runner.invoke(app, ["resize", str(big), "--budget", "10", "-o", str(target)]))
    assert "below one block per item group" in text
    text = one_line_error(runner.invoke(app, ["resize", str(big), "--budget", str(sizes[2]), "-o", str(big)]))
    assert "--in-place" in text
    text = one_line_error(runner.invoke(app, ["resize", str(small), "--delta", str(delta), "--budget", "1KB",
                                              "-o", str(target)]))
    assert "not the delta's target" in text
    text = one_line_error(runner.invoke(app, ["resize", str(big), "--delta", str(delta), "-o", str(target)]))
    assert "made for another artifact" in text
    (tmp_path / "cut.safetensors").write_bytes(delta.read_bytes()[:-5])
    text = one_line_error(runner.invoke(app, ["resize", str(small), "--delta", str(tmp_path / "cut.safetensors"),
                                              "-o", str(target)]))
    assert "not a readable delta file" in text
    text = one_line_error(runner.invoke(app, ["delta", str(small), str(big), "-o", str(target)]))
    assert "SMALL keeps blocks BIG does not" in text
    assert not target.exists() and not list(tmp_path.glob(".*.tmp"))
    assert big.read_bytes() == big_bytes and small.read_bytes() == small_bytes
    result = runner.invoke(app, ["resize", str(small), "--delta", str(delta), "-o", str(small), "--in-place"])
    assert result.exit_code == 0, result.output
    assert small.read_bytes() == big_bytes


def test_the_device_side_never_imports_torch(data, tmp_path):
    model = make_model(data, "float16", "aligned")
    sizes = budgets(model)
    big = save_artifact(tmp_path / "big.safetensors", *direct(model, sizes[0]))
    small = save_artifact(tmp_path / "small.safetensors", *direct(model, sizes[2]))
    code = ("import sys; sys.modules['torch'] = None  # any import of torch now fails\n"
            "from pocketrec.device.runtime import load\n"
            "from pocketrec.device.np_resize import make_delta\n"
            f"big, small = {str(big)!r}, {str(small)!r}\n"
            "device = load(big); device.shrink(int(load(small).manifest['table_bytes']))\n"
            "assert device.manifest == load(small).manifest\n"
            "device.grow(make_delta(big, small)); assert device.manifest == load(big).manifest\n"
            f"device.save({str(tmp_path / 'out.safetensors')!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "out.safetensors").read_bytes() == Path(big).read_bytes()
