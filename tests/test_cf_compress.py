"""TT and codebook tables on a collaborative-filtering backbone: a LightGCN's device form (user vectors +
propagated item table) scores as the LightGCN does, and the compressed students fit their bytes, train, beat
a random model, export for a user and rank on the numpy runtime as torch ranks; the CLI runs it all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import CF_TEACHER, synthetic_interactions
from pocketrec.backbones.lightgcn import LightGCN, LightGCNConfig
from pocketrec.backbones.user_vectors import UserVectorConfig, UserVectorModel
from pocketrec.cli import app
from pocketrec.device.artifact import export_artifact
from pocketrec.device.runtime import load
from pocketrec.methods import registry
from pocketrec.methods.cf_compress import CFDistillConfig, cf_distillation_loss, device_form
from pocketrec.tables.dense import DenseTable
from pocketrec.train.checkpoint import load_checkpoint
from pocketrec.train.teacher import load_teacher_config, train_teacher

TEACHER = CF_TEACHER
STUDENT = ["budget=5x", "train.epochs=2", "train.batch_size=512", "train.lr=0.01", "train.progress=false"]
#: per method: fast table options (the learned codes are EODRec's, tested there)
OPTIONS = {"cf-tt": ["warm_start_steps=100"], "cf-codebook": ["codes=rq"]}


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions()


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cf") / "teacher"
    model, result = train_teacher(data, load_teacher_config(None, [*TEACHER, f"out={out}"]))
    return out / "best", result.history[-1]["test"]


@pytest.fixture(scope="module")
def random_ndcg(data):
    torch.manual_seed(0)
    return LightGCN(data.num_users, data.num_items, LightGCNConfig(dim=16, layers=2)).evaluate(data, "test")["ndcg@20"]


@pytest.fixture(scope="module")
def students(teacher, data, tmp_path_factory):
    built = {}
    for method in ("cf-tt", "cf-codebook"):
        out = tmp_path_factory.mktemp(method) / "run"
        spec = registry.get_method(method)
        cfg = spec.load_config(None, [*STUDENT, *OPTIONS[method], f"teacher={teacher[0]}", f"out={out}"])
        model, result = spec.compress(cfg, data)
        built[method] = (out / "best", model, result)
    return built


def test_the_device_form_of_a_lightgcn_scores_as_the_lightgcn(teacher, data):
    model, _ = load_checkpoint(teacher[0])
    model.attach(data)
    device = model.to_user_vectors()
    assert isinstance(device, UserVectorModel) and device.backbone == "user-vectors"
    assert isinstance(device.table, DenseTable) and device.config.dim == model.out_dim
    assert not device.user_vectors.requires_grad  # frozen by default
    users = torch.arange(1, data.num_users + 1)
    assert torch.equal(device.score_users(users), model.score_users(users))
    assert device.evaluate(data, "test") == model.evaluate(data, "test")
    users = [3, 7]
    for name, value in model.device_tensors(users).items():  # one writer of the artifact's user tensors
        assert np.array_equal(value, device.device_tensors(users)[name]), name


def test_a_user_vectors_model_trains_from_scratch_as_bpr_mf(data):
    torch.manual_seed(0)
    model = UserVectorModel.build_teacher(data, UserVectorConfig(dim=8))
    assert model.config.train_users and model.user_vectors.requires_grad
    loss, parts = model.training_loss()(next(iter(model.training_batches(data, 64).batches(0))))
    loss.backward()
    assert set(parts) == {"bpr", "l2"} and model.user_vectors.grad is not None


@pytest.mark.parametrize("method", ["cf-tt", "cf-codebook"])
def test_a_student_fits_its_budget_trains_and_beats_a_random_model(method, students, teacher, random_ndcg):
    path, model, result = students[method]
    _, meta = load_checkpoint(path)
    assert model.table.nbytes() == result.table_bytes <= meta["budget_bytes"] == result.dense_table_bytes // 5
    assert result.dense_table_bytes == DenseTable.bytes_for(model.num_items, 16)  # the propagated table's
    assert meta["method"] == method and meta["backbone"] == "user-vectors" and meta["ratio"] >= 5
    assert meta["teacher"] == str(teacher[0])
    assert meta["distill"]["kd"] == "kl"  # what measured best
    assert result.fit.best_epoch >= 0 and result.test["ndcg@20"] > random_ndcg + 0.15
    assert not model.user_vectors.requires_grad


@pytest.mark.parametrize("method", ["cf-tt", "cf-codebook"])
def test_the_numpy_runtime_ranks_a_student_as_torch_does(method, students, data, tmp_path):
    path, _, _ = students[method]
    model, _ = load_checkpoint(path)
    model.attach(data)
    raw_users = data.users.raw_ids[:4]
    device = load(export_artifact(path, tmp_path / "s.safetensors", users=raw_users, data=data))
    assert device.table_bytes == model.table.nbytes()
    for raw in raw_users:
        user = data.users.encode(raw)
        scores = model.score_users(torch.tensor([user]))[0].detach().clone()
        scores[data.seen("test")[user].indices] = float("-inf")
        best = torch.topk(scores, 20).values.numpy()
        items, device_scores = device.recommend_user(raw, k=20)
        ids = [data.items.encode(i) for i in items]
        # torch's top-20 up to the order of tied items (codebook rows can coincide): the same 20 scores, and
        # each listed item scores in torch what the device says
        assert np.allclose(device_scores, best, atol=1e-4) and len(set(ids)) == 20
        assert np.allclose(scores[ids].numpy(), device_scores, atol=1e-4)


@pytest.mark.parametrize("method", ["cf-tt", "cf-codebook"])
def test_a_student_exports_to_onnx_and_ranks_as_the_numpy_runtime(method, students, data, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from pocketrec.device.onnx_export import export_onnx
    from pocketrec.device.runtime import OnnxModel

    path, _, _ = students[method]
    users = data.users.raw_ids[:2]
    graph = OnnxModel(export_onnx(path, tmp_path / "s.onnx", k=20, users=users, data=data))
    device = load(export_artifact(path, tmp_path / "s.safetensors", users=users, data=data))
    for user in users:
        items, scores = device.recommend_user(user, k=20)
        onnx_items, onnx_scores = graph.recommend_user(user, k=20)
        assert np.allclose(onnx_scores, scores, atol=1e-4) and len(set(onnx_items)) == 20


def test_the_distillation_term_is_zero_against_itself_and_pulls_a_student_toward_the_teacher(teacher, data):
    model, _ = load_checkpoint(teacher[0])
    model.attach(data)
    device = model.to_user_vectors()
    batch = next(iter(device.training_batches(data, 128).batches(0)))
    for exclude_seen in (False, True):
        _, parts = cf_distillation_loss(device, device, CFDistillConfig(exclude_seen=exclude_seen), data.train)(batch)
        assert parts["kd"] == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    student = UserVectorModel(data.num_users, DenseTable(data.num_items, 16), user_vectors=device.user_vectors)
    loss, parts = cf_distillation_loss(student, device, CFDistillConfig(kd_users=8))(batch)
    loss.backward()
    assert parts["kd"] > 0 and student.table.weight.grad.abs().sum() > 0
    assert set(parts) == {"bpr", "l2", "kd"}
    assert cf_distillation_loss(student, device, CFDistillConfig(kd="none"))(batch)[1].keys() == {"bpr", "l2"}


def test_a_session_teacher_is_refused_with_the_methods_to_use(tiny_teacher_dir, data):
    session_model, _ = load_checkpoint(tiny_teacher_dir)
    with pytest.raises(ValueError, match="a 'session' model .* use odrec, tt or eodrec"):
        device_form(session_model, data, "cf-tt")


@pytest.mark.parametrize("method", ["odrec", "eodrec", "kmeans", "dense-small"])
def test_a_session_method_refuses_a_lightgcn_teacher_in_one_line(method, teacher, tmp_path):
    from typer.testing import CliRunner

    from pocketrec.cli import app

    path, _ = teacher
    out = tmp_path / "student"
    result = CliRunner().invoke(app, ["compress", "--method", method, "--teacher", str(path), "--budget", "10x",
                                      "--out", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and text.startswith(f"error: method '{method}' compresses session teachers"), text
    assert "use one of cf-tt, cf-codebook" in text and not out.exists()


def test_the_cli_compresses_a_lightgcn_exports_for_a_user_and_recommends(teacher, data, tmp_path, monkeypatch):
    monkeypatch.setattr("pocketrec.data.registry.load_interactions", lambda name: data)
    runner = CliRunner()
    out = tmp_path / "student"
    result = runner.invoke(app, ["compress", "--teacher", str(teacher[0]), "--method", "cf-codebook", "--budget", "5x",
                                 "--out", str(out), "--quiet", "--codes=rq", "--train.epochs=1"])
    assert result.exit_code == 0, result.output
    assert "best epoch 1" in result.output and "(5." in result.output  # ~5x smaller
    user = data.users.raw_ids[5]
    target = tmp_path / "u.safetensors"
    result = runner.invoke(app, ["export", str(out / "best"), "-o", str(target), "--user", user])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["recommend", str(target), "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    items = json.loads(result.output)["items"]
    seen = data.items.decode(data.seen("test")[data.users.encode(user)].indices)
    assert len(items) == 5 and not set(items) & set(seen)
