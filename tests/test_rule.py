"""RULE end to end on a small synthetic user-item dataset: the elastic student of a LightGCN trains once, its
estimator is fitted on validation labels, and `pocketrec customize` turns it into device files for any budget
(search, baselines, bytes within the budget, the numpy runtime ranking as torch does), refusing bad input in
one line without writing anything."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import CF_RULE, CF_TEACHER, cli_on, one_line_error, synthetic_interactions
from pocketrec.cli import app
from pocketrec.device.runtime import load
from pocketrec.eval.cf_metrics import evaluate_cf
from pocketrec.methods import registry
from pocketrec.methods.cf_compress import load_cf_teacher
from pocketrec.methods.customize import Customizer
from pocketrec.methods.rule import (
    ESTIMATOR_FILE,
    ArchitectureEvaluator,
    RuleConfig,
    diversity_term,
    principal_rotation,
    rule_loss,
)
from pocketrec.tables.elastic import ElasticTable
from pocketrec.train.teacher import load_teacher_config, train_teacher

TEACHER = CF_TEACHER
RULE = CF_RULE


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions()


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rule") / "teacher"
    train_teacher(data, load_teacher_config(None, [*TEACHER, f"out={out}"]))
    return out / "best"


@pytest.fixture(scope="module")
def run(teacher, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rule") / "run"
    spec = registry.get_method("rule")
    model, result = spec.compress(spec.load_config(None, [*RULE, f"teacher={teacher}", f"out={out}"]), data)
    return out, model, result


@pytest.fixture
def cli(data, monkeypatch):
    return cli_on(data, monkeypatch)


def test_the_rotation_changes_no_score_and_orders_the_blocks_by_energy(teacher, data):
    device = load_cf_teacher(teacher, data, "rule").device
    rows, users = device.table.all_rows().detach(), device.user_vectors.detach()
    rotation = principal_rotation(rows[1:])
    assert torch.allclose(rotation.t() @ rotation, torch.eye(rows.shape[1]), atol=1e-5)
    assert torch.allclose((users @ rotation) @ (rows @ rotation).t(), users @ rows.t(), atol=1e-4)
    energy = (rows[1:] @ rotation).pow(2).sum(0)
    assert torch.all(energy[:-1] >= energy[1:] - 1e-4)
    groups = np.zeros(data.num_items + 1, dtype=np.int64)
    table = ElasticTable.from_rows(rows @ rotation, 4, groups, 1, scoring="aligned")
    assert torch.allclose(table.score(users @ rotation)[:, 1:], device.table.score(users)[:, 1:], atol=1e-4)


def test_rule_trains_once_and_fits_its_estimator_on_validation_labels(run, teacher, data):
    out, model, result = run
    assert isinstance(model.table, ElasticTable) and model.table.architecture().all()
    assert (out / "best" / "checkpoint.json").exists() and (out / ESTIMATOR_FILE).exists()
    report = result.meta["estimator"]
    assert report["archs"] == 40 and report["metric"] == "valid recall@20" and report["held_out"] == 8
    assert {"tau_nfm_all", "tau_ridge_all", "tau_ridge_same_size"} <= set(report)
    assert result.test["recall@20"] > 0.2  # the clusters are learnt (a random model is near 0.3 * 20 / 60)
    evaluator = ArchitectureEvaluator(model, data, "valid", max_users=10_000)
    mask = np.ones((5, 4), dtype=bool)
    assert evaluator.metrics(mask)["recall@20"] == pytest.approx(
        evaluate_cf(model.score_users, data.matrix("valid"), data.seen("valid"), ks=(20,))["recall@20"])
    weakest = mask.copy()
    weakest[:, :3] = False  # the last block alone: the least of the item vectors' variance
    assert evaluator(weakest) < evaluator(mask)


def test_the_sampled_loss_trains_a_random_sub_architecture_and_the_diversity_term_is_bounded(run, teacher, data):
    _, model, _ = run
    device = load_cf_teacher(teacher, data, "rule").device
    cfg = RuleConfig(teacher=str(teacher), num_blocks=4, num_groups=5, subsets="sampled", diversity=0.5)
    batch = next(iter(model.training_batches(data, 64).batches(0)))
    loss, parts = rule_loss(model, device, cfg, data.train)(batch)
    assert {"sub", "div"} <= set(parts) and torch.isfinite(loss)
    assert model.table.architecture().all()  # the sampled architecture is put back
    div = diversity_term(model.table, batch[:, 1]).detach()
    assert -1 / 3 - 1e-6 <= float(div) <= 1 + 1e-6
    with pytest.raises(ValueError, match="subsets"):
        RuleConfig(subsets="some")


def test_customize_fits_every_budget_and_the_device_ranks_as_torch(run, data, cli, tmp_path):
    out, _, _ = run
    folder = tmp_path / "devices"
    result = cli.invoke(app, ["customize", str(out), "--budgets", "20%,40%,80%", "-o", str(folder), "--user",
                              data.users.raw_ids[3]])
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "report.json").read_text())
    assert (folder / "curve.png").exists()
    dense = report["dense_table_bytes"]
    verified = []
    for choice, share in zip(report["choices"], (0.2, 0.4, 0.8), strict=True):
        assert choice["table_bytes"] <= int(dense * share) and choice["valid_recall@20"] is not None
        artifact = load(choice["artifact"])
        assert int(artifact.manifest["table_bytes"]) == choice["table_bytes"]
        verified.append(choice["valid_recall@20"])
    assert verified[-1] >= verified[0]  # a larger budget never chooses worse on validation

    customizer = Customizer(out, dataset=data)
    choice = customizer.choose("40%", dtype="float32")
    customizer.write(choice, tmp_path / "u.safetensors", users=[data.users.raw_ids[3]])
    device = load(tmp_path / "u.safetensors")
    with customizer.table.using(choice.mask):
        torch_scores = customizer.model.score_users(torch.tensor([4]))[0, 1:].detach().numpy()
    ids, scores = device.recommend_user(data.users.raw_ids[3], k=5)
    seen = set(data.seen("test")[4].indices.tolist())
    expected = [int(i) for i in np.argsort(-torch_scores, kind="stable") + 1 if int(i) not in seen][:5]
    assert [data.items.encode(i) for i in ids] == expected
    assert choice.seconds < 5


def test_the_baselines_share_the_harness_and_fit_the_budget(run, data):
    out, _, _ = run
    customizer = Customizer(out, dataset=data)
    for strategy in ("evolution", "random", "uniform", "popularity"):
        choice = customizer.choose("30%", strategy=strategy, dtype="float16")
        assert choice.table_bytes <= choice.budget_bytes and choice.mask.any(axis=1).all()
        if strategy == "uniform":
            assert (choice.mask == choice.mask[0]).all()  # the same blocks for every group
        if strategy in ("evolution", "random"):
            assert choice.estimator_calls > 0 and choice.verify_calls >= 1


def test_customize_refuses_bad_input_in_one_line_and_writes_nothing(run, teacher, data, cli, tmp_path):
    out, _, _ = run
    target = tmp_path / "d.safetensors"
    text = one_line_error(cli.invoke(app, ["customize", str(out), "--budget", "100", "-o", str(target)]))
    assert "below" in text and "block per item group" in text
    text = one_line_error(cli.invoke(app, ["customize", str(out), "--budget", "2x2", "-o", str(target)]))
    text = one_line_error(cli.invoke(app, ["customize", str(out), "--budget", "10MB", "-o", str(target)]))
    assert "more than the dense item table" in text
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps([[1, 1, 0], [1, 0, 0]]))
    text = one_line_error(cli.invoke(app, ["customize", str(out), "--budget", "50%", "--arch", str(arch), "-o",
                                           str(target)]))
    assert "(5, 4)" in text
    text = one_line_error(cli.invoke(app, ["customize", str(teacher), "--budget", "50%", "-o", str(target)]))
    assert "not an elastic checkpoint" in text
    text = one_line_error(cli.invoke(app, ["customize", str(out), "--budget", "50%", "--budgets", "10%", "-o",
                                           str(target)]))
    assert not target.exists() and not list(tmp_path.glob("*.safetensors"))


def test_a_given_architecture_is_used_as_is(run, data, cli, tmp_path):
    out, _, _ = run
    arch = tmp_path / "arch.json"
    mask = [[1, 1, 0, 0]] * 2 + [[1, 0, 0, 0]] * 3
    arch.write_text(json.dumps({"mask": mask}))
    target = tmp_path / "d.safetensors"
    result = cli.invoke(app, ["customize", str(out), "--budget", "60%", "--arch", str(arch), "--dtype", "float32",
                              "-o", str(target), "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    chosen = json.loads((tmp_path / "r.json").read_text())["choices"][0]
    assert chosen["mask"] == mask and chosen["blocks"] == 7 and target.exists()


def test_a_resizable_file_counts_its_priority_and_shrinks_on_the_device_to_the_direct_build(run, data, tmp_path):
    from pocketrec.device.np_resize import write_safetensors

    out, _, _ = run
    customizer = Customizer(out, dataset=data, resizable=True)
    big = customizer.choose("80%", dtype="float32")
    assert big.table_bytes <= big.budget_bytes
    written = customizer.write(big, tmp_path / "big.safetensors")
    device = load(written)
    assert int(device.manifest["table_bytes"]) == big.table_bytes  # the priority is in the bytes chosen
    small_bytes = big.table_bytes // 2
    device.shrink(small_bytes)
    assert int(device.manifest["table_bytes"]) <= small_bytes
    direct = load(written)
    users = np.random.default_rng(0).standard_normal((3, direct.table.dim)).astype(np.float32)
    scores = device.table.score(users)
    direct.shrink(small_bytes)
    assert np.array_equal(scores, direct.table.score(users))
    write_safetensors(tmp_path / "a.safetensors", device.tensors, device.manifest)
    assert load(tmp_path / "a.safetensors").manifest["checksum"] == device.manifest["checksum"]
