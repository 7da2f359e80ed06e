import pytest

from pocketrec.config import ConfigError, from_dict, load_config, to_dict
from pocketrec.train.teacher import TeacherConfig


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: tmall\nencoder:\n  dim: 128\n  readout: last\ntrain:\n  lr: 0.002\n")
    cfg = load_config(TeacherConfig, path, ["--encoder.dim=32", "train.epochs=3", "encoder.normalize=false"])
    assert cfg.dataset == "tmall"
    assert cfg.encoder.dim == 32 and cfg.encoder.readout == "last" and cfg.encoder.normalize is False
    assert cfg.train.lr == 0.002 and cfg.train.epochs == 3
    assert from_dict(TeacherConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, message", [
    ("encoder.dimm=3", "unknown config key 'encoder.dimm'"),
    ("encoder.dim=abc", "cannot read 'abc' as int"),
    ("encoder.readout=max", "readout must be one of"),
    ("train.epochs=0", "epochs must be >= 1"),
    ("encoder", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TeacherConfig, None, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TeacherConfig, tmp_path / "nope.yaml")
