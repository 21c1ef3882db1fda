import pytest
import yaml

from retrieval import GeolocError
from retrieval.config import load_config, parse_override
from retrieval.run import load_run_config, prepare_run_dir


def test_yaml_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("name: exp\ntrain:\n  epochs: 7\n  lr: 0.01\nmodel:\n  weights: none\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.epochs=3", "data.image_size=128", "train.precision=fp32"])
    assert cfg.name == "exp" and cfg.train.epochs == 3 and cfg.train.lr == 0.01
    assert cfg.data.image_size == 128 and cfg.train.precision == "fp32" and cfg.model.weights == "none"
    assert cfg.train.momentum == 0.9  # untouched defaults stay
    assert isinstance(load_config(None, ["train.lr=1"]).train.lr, float)


def test_base_defaults_are_overridden_by_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 2\n")
    cfg = load_config(tmp_path / "c.yaml", base={"train": {"epochs": 9, "batch_size": 4}})
    assert cfg.train.epochs == 2 and cfg.train.batch_size == 4


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", r"config\.train: unknown key 'epoch'"),
    ("train.epochs=three", r"config\.train\.epochs: expected a number, got 'three'"),
    ("train.epochs=2.5", r"config\.train\.epochs: expected an integer"),
    ("augment.hflip=maybe", r"config\.augment\.hflip: expected true or false"),
    ("train", r"expected section\.key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(GeolocError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(GeolocError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(GeolocError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("trian:\n  epochs: 1\n")
    with pytest.raises(GeolocError, match=r"typo\.yaml: unknown key 'trian'"):
        load_config(tmp_path / "typo.yaml")


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("name=x=y") == {"name": "x=y"}


def test_run_dir_records_config_command_and_revision(tmp_path):
    cfg = load_config(None, ["train.epochs=4"])
    run = prepare_run_dir(tmp_path / "run", cfg)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
    assert (run / "command.txt").read_text().strip()
    git = yaml.safe_load((run / "git.json").read_text())
    assert set(git) == {"revision", "dirty"}
    assert load_run_config(run) == cfg
    with pytest.raises(GeolocError, match="not a run directory"):
        load_run_config(tmp_path)


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        load_config(path)


def test_atomic_write_keeps_ordinary_permissions_and_no_temp_files(tmp_path):
    import os

    from retrieval.files import atomic_write_text

    p = atomic_write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("override, message", [
    ("train.lr=-0.1", r"train\.lr=-0\.1: must be > 0"),
    ("train.batch_size=0", r"train\.batch_size=0: must be >= 1"),
    ("train.epochs=-1", r"train\.epochs=-1: must be >= 1"),
    ("model.embed_dim=-1", r"model\.embed_dim=-1: must be >= 0"),
    ("model.arch=vgg16", r"model\.arch='vgg16': choose one of resnet18, resnet34, resnet50"),
    ("train.optimizer=adam", r"train\.optimizer='adam': choose one of adamw, sgd"),
    ("train.max_minutes=-1", r"train\.max_minutes=-1\.0: must be >= 0"),
    ("embedding.heading_tol_deg=0", r"embedding\.heading_tol_deg=0\.0: must be in \(0, 180\]"),
    ("embedding.neg_radius_m=20", r"embedding\.neg_radius_m=20\.0: must be above embedding\.pos_radius_m \(25\)"),
    ("embedding.miner=semihard", r"embedding\.miner='semihard': with embedding\.loss=multi_similarity"),
    ("data.split_mode=blocks", r"data\.split_mode='blocks': choose one of place, spatial, random"),
    ("train.lr=.nan", r"train\.lr: expected a finite number, got nan"),
    ("embedding.hard_places=1", r"embedding\.hard_places=1: must be 0 \(random batches\) or 2 to "
                                r"embedding\.places_per_batch \(32\)"),
    ("embedding.hard_places=33", r"embedding\.hard_places=33: must be 0"),
    ("embedding.cell_heading_bins=0", r"embedding\.cell_heading_bins=0: must be in \[1, 36\]"),
    ("regression.cell_loss_weight=-1", r"regression\.cell_loss_weight=-1\.0: must be >= 0"),
    ("data.resize=100", r"data\.resize=100: must be >= data\.image_size \(224\)"),
])
def test_settings_are_checked_when_the_config_loads(override, message):
    with pytest.raises(GeolocError, match=message):
        load_config(None, [override])


def test_a_section_that_is_not_a_mapping_is_refused_not_dropped(tmp_path):
    (tmp_path / "c.yaml").write_text("train: 5\n")
    with pytest.raises(GeolocError, match=r"c\.yaml\.train: expected a mapping, got 5"):
        load_config(tmp_path / "c.yaml", ["train.lr=0.1"])
    with pytest.raises(GeolocError, match=r"c\.yaml\.train: expected a mapping, got 5"):
        load_config(tmp_path / "c.yaml")


def test_a_config_that_is_not_utf8_is_one_error(tmp_path):
    (tmp_path / "c.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(GeolocError, match=r"c\.yaml: not UTF-8 text \(byte 9\)"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("args, message", [
    (["--block-m", "0", "--gap-m", "-5"], "--block-m (0) and --radius-m (25) must be > 0 and --gap-m (-5) >= 0"),
    (["--mode", "spatial", "--block-m", "100000"], "the split leaves no training photos"),
])
def test_data_split_refuses_settings_that_leave_nothing_to_train(tmp_path, args, message):
    from typer.testing import CliRunner

    from retrieval.cli import app

    rows = "".join(f"p{i}.jpg,{51.5 + i * 1e-4},{-0.1}\n" for i in range(20))
    (tmp_path / "m.csv").write_text("path,lat,lon\n" + rows)
    for i in range(20):
        (tmp_path / f"p{i}.jpg").write_bytes(b"")
    res = CliRunner().invoke(app, ["data", "split", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s.csv"),
                                   "--val", "0.5", "--test", "0.4", *args])
    assert res.exit_code != 0 and message in str(res.exception)
    assert not (tmp_path / "s.csv").exists()


def test_matching_record_takes_only_a_record_of_the_same_key(tmp_path):
    from retrieval.files import atomic_write_json, matching_record

    path = tmp_path / "choice.json"
    assert matching_record(path, {"sha": "a"}, lambda r: True) is None  # missing
    path.write_text("{not json", encoding="utf-8")
    assert matching_record(path, {"sha": "a"}, lambda r: True) is None  # unreadable
    atomic_write_json(path, {"sha": "a", "k": 10, "mode": "top1"})
    assert matching_record(path, {"sha": "a", "k": 10}, lambda r: r["mode"] == "top1")["mode"] == "top1"
    assert matching_record(path, {"sha": "b", "k": 10}, lambda r: True) is None  # another checkpoint
    assert matching_record(path, {"sha": "a"}, lambda r: r["mode"] == "pool") is None  # fails valid
