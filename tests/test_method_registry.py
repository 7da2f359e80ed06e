"""One method registry for `pocketrec compress`, `pocketrec bench` and the benchmarks: names resolve, configs load
from --key=value, unknown names are one clear error, and the bench passes a method's options through."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import student_train_config
from pocketrec.bench.runner import BenchConfig, method_config, options_tag, run_bench
from pocketrec.cli import app
from pocketrec.config import ConfigError, load_config
from pocketrec.methods import registry
from pocketrec.methods.recipe import RecipeConfig
from pocketrec.train.checkpoint import load_checkpoint
from pocketrec.train.distill import DistillConfig

NAMES = ("odrec", "tt", "eodrec", "dense-small", "kmeans", "int8", "int4")
CF_NAMES = ("cf-tt", "cf-codebook", "cf-kmeans", "cf-dense-small", "cf-int8", "cf-int4", "rule", "peel")
#: a method-specific --key=value for each method, and the attribute it sets
OWN_KEY = {"odrec": ("--t=3", "t", 3), "tt": ("--num_cores=3", "num_cores", 3),
           "eodrec": ("--dtype=int8", "dtype", "int8"), "dense-small": ("--train.epochs=3", "train.epochs", 3),
           "kmeans": ("--M=2", "M", 2), "int8": ("--out=x", "out", "x"), "int4": ("--out=x", "out", "x")}


def _get(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_the_registered_names_are_the_benchs_methods_in_order():
    assert registry.method_names("session") == NAMES and registry.method_names("cf") == CF_NAMES
    assert registry.method_names() == NAMES + CF_NAMES
    assert BenchConfig().methods == list(NAMES)  # the bench compresses a session teacher


@pytest.mark.parametrize("name", NAMES)
def test_every_method_resolves_and_loads_from_key_value(name):
    spec = registry.get_method(name)
    assert spec.name == name and spec.description and spec.kind in registry.KINDS
    assert issubclass(spec.config_class(), RecipeConfig) and callable(spec.runner())
    flag, attr, value = OWN_KEY[name]
    cfg = spec.load_config(None, ["--budget=5x", "--teacher=t/best", flag])
    assert isinstance(cfg, spec.config_class()) and (cfg.budget, cfg.teacher) == ("5x", "t/best")
    assert _get(cfg, attr) == value
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        spec.load_config(None, ["--bogus=1"])


def test_registered_defaults_and_fixed_sizes():
    assert registry.get_method("tt").load_config().t == 1 and registry.get_method("odrec").load_config().t == 2
    assert registry.get_method("tt").load_config(None, ["t=2"]).t == 2  # defaults are defaults, not locks
    assert [n for n in NAMES if registry.get_method(n).fixed_size] == ["int8", "int4"]
    assert registry.get_method("int4").config_class().bits == 4
    assert registry.get_method("kmeans").load_config().dtype == "float16"  # the EODRec layout, as before
    with pytest.raises(ConfigError, match="dtype does not apply to int8"):
        registry.get_method("int8").load_config(None, ["dtype=float16"])


def test_unknown_names_are_one_error_listing_the_known_ones(tiny_teacher_dir):
    known = "(known: " + ", ".join(NAMES + CF_NAMES) + ")"
    with pytest.raises(ValueError) as err:
        registry.get_method("nope")
    assert str(err.value) == f"unknown method 'nope' {known}"
    with pytest.raises(ConfigError, match=r"unknown methods \['magic'\] \(known: odrec, tt"):
        load_config(BenchConfig, None, ["methods=odrec,magic"])
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        load_config(BenchConfig, None, ["method_options=magic.t=2"])
    result = CliRunner().invoke(app, ["compress", "--method", "nope", "--teacher", str(tiny_teacher_dir)])
    assert result.exit_code == 2 and "--method must be one of " + ", ".join(NAMES) in " ".join(result.output.split())
    with pytest.raises(ValueError, match="already registered"):
        registry.register("odrec", "a:B", "a:c", "again")


def test_the_registry_imports_no_method():
    code = ("import sys; from pocketrec.methods import registry; registry.method_names(); "
            "registry.get_method('eodrec'); assert 'torch' not in sys.modules and "
            "'pocketrec.methods.eodrec' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_method_options_load_from_key_value_and_yaml(tmp_path):
    cfg = load_config(BenchConfig, None, ["--method_options=eodrec.dtype=int8,eodrec.max_codebooks=64,"
                                          "odrec.distill.kd_weight=0.5,dense-small.train.epochs=3"])
    assert cfg.options_for("eodrec") == ["dtype=int8", "max_codebooks=64"]
    assert cfg.options_for("odrec") == ["distill.kd_weight=0.5"] and cfg.options_for("tt") == []
    assert cfg.options_for("dense-small") == ["train.epochs=3"]
    yaml = tmp_path / "bench.yaml"
    yaml.write_text("method_options:\n  - eodrec.dtype=int8\n  - tt.train.epochs=5\n")
    assert load_config(BenchConfig, yaml).options_for("tt") == ["train.epochs=5"]
    for bad, message in (("eodrec.dtype=int3", "eodrec: dtype"), ("eodrec.bogus=1", "unknown config key 'bogus'"),
                         ("eodrec=1", "is not METHOD.KEY=VALUE"), ("eodrec.budget=3%", "the bench sets budget"),
                         ("int8.dtype=float16", "dtype does not apply")):
        with pytest.raises(ConfigError, match=message):
            load_config(BenchConfig, None, [f"method_options={bad}"])


def test_bench_settings_then_options_without_leaking(synthetic_data, tmp_path):
    distill = DistillConfig(kd_weight=0.3)
    cfg = BenchConfig(student=student_train_config(2), odrec_distill=distill, eodrec_code_epochs=1,
                      method_options=["tt.train.epochs=5", "tt.distill.cl_weight=0.05", "kmeans.M=2"])
    tt = method_config("tt", 1000, Path("teacher/best"), synthetic_data, cfg, tmp_path / "tt")
    assert (tt.t, tt.train.epochs, tt.train.lr, tt.distill.kd_weight, tt.distill.cl_weight) == (1, 5, 5e-3, 0.3, 0.05)
    assert (tt.budget, tt.teacher, tt.out) == ("1000", "teacher/best", str(tmp_path / "tt"))
    assert cfg.student.epochs == 2 and distill.cl_weight != 0.05  # the bench's own settings are untouched
    odrec = method_config("odrec", 1000, Path("t"), synthetic_data, cfg, tmp_path / "o")
    assert (odrec.t, odrec.train.epochs, odrec.distill.kd_weight) == (2, 2, 0.3)
    eodrec = method_config("eodrec", 1000, Path("t"), synthetic_data, cfg, tmp_path / "e")
    assert (eodrec.code_epochs, eodrec.dtype, eodrec.distill.bidirectional) == (1, "float16", True)
    dense = method_config("dense-small", 1000, Path("t"), synthetic_data, cfg, tmp_path / "d")
    assert dense.train == cfg.teacher.train  # from scratch: the teacher's schedule
    kmeans = method_config("kmeans", 1000, Path("t"), synthetic_data, cfg, tmp_path / "k")
    assert (kmeans.M, kmeans.seed) == (2, 7)
    assert options_tag([]) == "" and options_tag(["M=2"]).startswith("-o")


def test_bench_passes_a_method_option_through(synthetic_data, tiny_teacher_dir, tmp_path):
    def bench(options):
        cfg = BenchConfig(dataset="synthetic", out=str(tmp_path), budgets=["4x"], methods=["eodrec"],
                          teacher_checkpoint=str(tiny_teacher_dir), student=student_train_config(1),
                          eodrec_code_epochs=1, latency_repeats=1, method_options=options)
        return [r for r in run_bench(cfg, synthetic_data, log=lambda _: None) if r["method"] == "eodrec"]

    [plain] = bench([])
    [narrow] = bench(["eodrec.dtype=int8", "eodrec.codes=rq"])
    assert "options" not in plain and narrow["options"] == ["dtype=int8", "codes=rq"]
    assert Path(plain["checkpoint"]).parent.name == "eodrec-4x"  # no options: the folder of before
    assert Path(narrow["checkpoint"]) != Path(plain["checkpoint"])  # other options never reuse a model
    model, meta = load_checkpoint(narrow["checkpoint"])
    assert model.table.stored_dtype == "int8" and meta["dtype"] == "int8" and meta["codes"] == "rq"
    assert narrow["table"]["dtype"] == "int8" and plain["table"]["dtype"] == "float16"
    assert narrow["table_bytes"] <= narrow["budget_bytes"]


@pytest.mark.parametrize("method", ["int8", "kmeans"])
def test_cli_compresses_with_a_baseline(method, synthetic_data, tiny_teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("pocketrec.data.registry.load_dataset", lambda name: synthetic_data)
    out = tmp_path / method
    result = CliRunner().invoke(app, ["compress", "--method", method, "--teacher", str(tiny_teacher_dir), "--budget",
                                      "4x", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "no training (post-hoc)" in result.output
    _, meta = load_checkpoint(out / "best")
    assert meta["method"] == method and meta["test"]["recall@20"] > 0.5
