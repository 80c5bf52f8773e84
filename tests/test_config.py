"""Typed configs: TOML + --set fill dataclasses; every problem is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from longrec.config import Config, load_config
from longrec.settings import ConfigError, parse_overrides


def test_toml_and_overrides_fill_typed_config(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('model = { name = "din", dim = 8 }\n[train]\nlr = 1e-2\nbatch_size = 32\n[data]\npath = "d"\n')
    cfg = load_config(path, ["train.epochs=3", "model.head_hidden=[16, 8]", "train.lr=1"])
    assert cfg.model.name == "din" and cfg.model.params == {"dim": 8, "head_hidden": (16, 8)}
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted for float
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.data.path) == (32, 3, "d")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('[model]\nname = "din"\ndim = 0\n[train]\nbacth_size = 3\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.lr_rate=0.1", "data.max_history=sixty", "train.metric=acc", "trian.lr=1"])
    text = str(err.value)
    assert f"problem(s) in {path}" in text
    assert "train.bacth_size: unknown key (did you mean 'batch_size'?)" in text
    assert "train.lr_rate: unknown key" in text
    assert "data.max_history: expected int, got str 'sixty'" in text
    assert "train.metric must be one of auc, gauc, gauc_category, logloss. Got 'acc' instead." in text
    assert "DINConfig.dim must be a positive int. Got 0 instead." in text
    assert "trian: unknown section (did you mean 'train'?)" in text
    assert len(err.value.problems) == 6


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown model 'dinn' \(did you mean 'din'\?\). Known models: (\w+, )*din, "
    ):
        load_config(None, ["model.name=dinn"])


def test_data_sizes_cannot_be_set_by_hand() -> None:
    with pytest.raises(ConfigError, match=r"model\.num_items: comes from the prepared data"):
        load_config(None, ["model.num_items=10"])


def test_overrides_parse_toml_values_and_keep_bare_words() -> None:
    parsed = parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]", "e='q'", "f=true", "g={buy = 2.0}", "h=data/synth"])
    assert parsed == {"a": {"b": 1, "c": "x"}, "d": [1, 2], "e": "q", "f": True, "g": {"buy": 2.0}, "h": "data/synth"}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["novalue"])


def test_set_takes_the_toml_syntax_of_the_files_and_its_errors_say_set(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("[train]\nlr = 0.5\n")
    cfg = load_config(path, ["train.goal_weights={buy = 2.0}", "model.head_hidden=[16, 8]", "train.progress=false"])
    assert cfg.train.goal_weights == {"buy": 2.0} and cfg.model.params["head_hidden"] == (16, 8)
    assert cfg.train.progress is False
    with pytest.raises(ConfigError, match=r"model\.head_hidden=\(16, 8\): not a TOML value \(arrays are written"):
        load_config(path, ["model.head_hidden=(16, 8)"])
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.progress=True", "train.lr=-1"])
    text = str(err.value)
    assert f"in {path} + --set" in text
    assert "train.progress: expected bool, got str 'True' (TOML booleans are lowercase: true) (--set)" in text
    assert "train.lr must be > 0. Got -1.0 instead. (--set)" in text


def test_config_round_trips_through_json() -> None:
    import json

    cfg = load_config(None, ["model.name=mean_pool", "model.dim=4", "train.seed=3"])
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_bundled_config_file_loads_and_round_trips(path: Path) -> None:
    import json

    cfg = load_config(path)
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
