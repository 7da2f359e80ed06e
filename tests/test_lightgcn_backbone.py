"""LightGCN as a registered backbone: trained by the shared loop, checkpointed, evaluated, exported for its
users, and ranked by the numpy runtime exactly as torch ranks (the user's own items excluded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import synthetic_interactions
from pocketrec.cli import app
from pocketrec.device.artifact import export_artifact
from pocketrec.device.runtime import load
from pocketrec.train.checkpoint import load_checkpoint
from pocketrec.train.teacher import load_teacher_config, train_teacher

TINY = ["backbone=lightgcn", "dataset=synthetic-cf", "encoder.dim=16", "encoder.layers=2", "train.lr=0.01",
        "train.batch_size=256", "train.epochs=8", "train.patience=8", "train.progress=false"]


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lightgcn") / "run"
    model, result = train_teacher(data, load_teacher_config(None, [*TINY, f"out={out}"]))
    return out, model, result


def test_the_shared_loop_trains_lightgcn_and_selects_on_ndcg(trained, data):
    out, model, result = trained
    from pocketrec.backbones.lightgcn import LightGCN, LightGCNConfig

    torch.manual_seed(0)
    untrained = LightGCN(data.num_users, data.num_items, LightGCNConfig(dim=16, layers=2))
    before = untrained.evaluate(data, "test")
    test = result.history[-1]["test"]
    assert set(test) >= {"recall@20", "ndcg@20", "precision@10", "recall@50", "users"}
    assert test["recall@20"] > before["recall@20"] + 0.2  # the clusters were learned
    assert result.best_valid["ndcg@20"] == max(h["valid"]["ndcg@20"] for h in result.history if "valid" in h)
    assert (out / "best" / "checkpoint.json").is_file() and (out / "last").is_dir()


def test_a_checkpoint_reloads_to_the_same_metrics(trained, data):
    out, _, result = trained
    model, meta = load_checkpoint(out / "best")
    assert meta["backbone"] == "lightgcn" and meta["num_users"] == data.num_users
    assert meta["train_config"]["metric"] == "ndcg@20"
    again = model.evaluate(data, "test")
    assert again == pytest.approx(result.history[-1]["test"])


def test_the_device_ranks_like_torch_and_never_returns_the_users_items(trained, data, tmp_path):
    out, _, _ = trained
    model, _ = load_checkpoint(out / "best")
    raw_users = data.users.raw_ids[:5]
    path = export_artifact(out / "best", tmp_path / "users.safetensors", users=raw_users, data=data)
    device = load(path)
    model.attach(data)
    for raw in raw_users:
        internal = data.users.encode(raw)
        scores = model.score_users(torch.tensor([internal]))[0].clone()
        seen = data.seen("test")[internal].indices
        scores[seen] = float("-inf")
        scores[0] = float("-inf")
        expected = torch.topk(scores, 20).indices.numpy()
        items, device_scores = device.recommend_user(raw, k=20)
        assert [data.items.encode(i) for i in items] == expected.tolist()
        assert np.allclose(device_scores, scores[expected].numpy(), atol=1e-5)
        assert not set(items) & set(data.items.decode(seen))


def test_cli_exports_for_a_user_and_recommends_without_history(trained, data, tmp_path, monkeypatch):
    out, _, _ = trained
    monkeypatch.setattr("pocketrec.data.registry.load_interactions", lambda name: data)
    runner = CliRunner()
    target = tmp_path / "one.safetensors"
    user = data.users.raw_ids[3]
    result = runner.invoke(app, ["export", str(out / "best"), "-o", str(target)])
    assert result.exit_code == 2 and "pass --user U" in result.output
    result = runner.invoke(app, ["export", str(out / "best"), "-o", str(target), "--user", user])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["recommend", str(target), "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    import json

    assert len(json.loads(result.output)["items"]) == 5
    for args, message in ((["--user", "nobody"], "user 'nobody' is not in this artifact"),
                          (["--history", "i1,i2"], "pass --user, not --history")):
        result = runner.invoke(app, ["recommend", str(target), *args])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    result = runner.invoke(app, ["export", str(out / "best"), "-o", str(tmp_path / "x.safetensors"), "--user",
                                 "nobody"])
    assert result.exit_code == 2 and "user 'nobody' is not a user of synthetic-cf" in result.output


def test_resume_continues_a_lightgcn_run(data, tmp_path):
    full_model, _ = train_teacher(data, load_teacher_config(None, [*TINY, "train.epochs=3", f"out={tmp_path / 'a'}"]))
    train_teacher(data, load_teacher_config(None, [*TINY, "train.epochs=2", f"out={tmp_path / 'b'}"]))
    resumed, _ = train_teacher(data, load_teacher_config(None, [*TINY, "train.epochs=3", f"out={tmp_path / 'b'}"]),
                               resume=True)
    for (name, a), b in zip(full_model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_demos_cf_section_trains_exports_and_recommends(tmp_path):
    from pocketrec.bench.cf_demo import run_cf_demo

    lines: list[str] = []
    row = run_cf_demo("ml-100k", tmp_path, lines.append, quiet=True,
                      overrides=["encoder.dim=8", "encoder.layers=1", "train.epochs=1"])
    assert lines[0].startswith("lightgcn: training on ml-100k")
    assert len(row["items"]) == 10 and not set(row["items"]) & set(row["history"])
    assert row["artifact_bytes"] > row["table_bytes"] > 0
    again = run_cf_demo("ml-100k", tmp_path, lines.append, quiet=True,
                        overrides=["encoder.dim=8", "encoder.layers=1", "train.epochs=1"])
    assert lines[-1].startswith("lightgcn: reusing") and again["items"] == row["items"]


def test_onnx_ranks_for_a_user_like_the_numpy_runtime(trained, data, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from pocketrec.device.onnx_export import export_onnx
    from pocketrec.device.runtime import OnnxModel

    out, _, _ = trained
    users = data.users.raw_ids[:3]
    onnx_path = export_onnx(out / "best", tmp_path / "users.onnx", k=20, users=users, data=data)
    artifact = export_artifact(out / "best", tmp_path / "users.safetensors", users=users, data=data)
    graph, device = OnnxModel(onnx_path), load(artifact)
    assert onnx_path.nbytes <= 1.10 * artifact.nbytes + 2048  # the graph and metadata: ~2 KB at any size
    for user in users:
        items, scores = device.recommend_user(user, k=20)
        onnx_items, onnx_scores = graph.recommend_user(user, k=20)
        assert onnx_items == items and np.allclose(onnx_scores, scores, atol=1e-5)
    with pytest.raises(ValueError, match="serves 3 users; name one"):
        graph.recommend_user(None)


def test_the_demos_rule_peel_and_fleet_sections(tmp_path):
    """RULE customises, PEEL shrinks on the device, and the demo's server hands the user two verified files."""
    from pocketrec.bench.cf_demo import run_cf_demo, run_fleet_demo, run_peel_demo, run_rule_demo

    lines: list[str] = []
    run_cf_demo("ml-100k", tmp_path, lines.append, quiet=True,
                overrides=["encoder.dim=16", "encoder.layers=1", "train.epochs=1"])
    rule = run_rule_demo("ml-100k", tmp_path, lines.append, quiet=True, budgets=("5%",))
    assert rule["rows"][0]["table_bytes"] <= rule["rows"][0]["budget_bytes"]
    peel = run_peel_demo("ml-100k", tmp_path, lines.append, quiet=True, budgets=("5%", "10%"))
    small, big = peel["rows"]
    assert small["table_bytes"] <= small["budget_bytes"] < big["table_bytes"] <= big["budget_bytes"]
    assert peel["shrunk_equals_direct"] and peel["shrunk_table_bytes"] == small["table_bytes"]
    assert len(peel["items"]) == 5 and 0 <= peel["group"] < peel["groups"]
    assert all(0 < row["test"]["recall@20"] <= 1 for row in peel["rows"])
    fleet = run_fleet_demo("ml-100k", tmp_path, budgets=("5%", "10%"))
    small, big = fleet["rows"]
    assert fleet["models"] == ["peel", "rule"] and fleet["group"] == peel["group"]
    assert small["table_bytes"] < big["table_bytes"] and len(small["items"]) == len(big["items"]) == 5
    assert fleet["grown_table_bytes"] > small["table_bytes"] and fleet["delta_bytes"] < fleet["grown_bytes"]
