"""The runtime settings are one schema (edge_agent.settings): the configuration file, the `set`
command, the service's effective values and edge-ctl all follow it, so they cannot disagree."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.commands.args import SetArgs, parse_args
from edge_agent.config import ConfigError, load_config
from edge_agent.service.settings import RuntimeSettings
from edge_agent.settings import Settings, parse_setting


def test_set_takes_exactly_the_settings_and_config_holds_each_of_them(tmp_path: Path) -> None:
    assert list(SetArgs.model_fields) == list(Settings.model_fields)
    cfg = load_config(None, overrides=[])
    for name, (section, key) in Settings.CONFIG_KEYS.items():
        assert key in type(getattr(cfg, section)).model_fields, (name, section, key)
    assert set(Settings.CONFIG_KEYS) == set(Settings.model_fields)


@pytest.mark.parametrize(
    "name,bad",
    [
        ("score_threshold", 1.5),
        ("iou_threshold", -0.1),
        ("labels", ["cat", " "]),
        ("publish_mode", "loud"),
        ("max_rate_hz", 0),
    ],
)
def test_the_config_and_set_refuse_the_same_values(name: str, bad: object) -> None:
    section, key = Settings.CONFIG_KEYS[name]
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        load_config(None, overrides=[f"{section}.{key}={bad!r}".replace("'", '"')])
    with pytest.raises(ValueError, match=f"args.{name}"):
        parse_args("set", {name: bad})


def test_service_settings_start_from_the_config_and_keep_set_overrides(tmp_path: Path) -> None:
    cfg = load_config(None, overrides=["detector.score_threshold=0.3", "publish.mode=all"])
    settings = RuntimeSettings(tmp_path / "settings.json", cfg)
    assert settings.effective == Settings(score_threshold=0.3, publish_mode="all")
    args = parse_args("set", {"max_rate_hz": 2, "publish_mode": None})
    assert isinstance(args, SetArgs) and args.changes() == {"max_rate_hz": 2}  # a null is left out
    settings.update(args.changes())
    again = RuntimeSettings.load(tmp_path / "settings.json", cfg)
    assert again.effective == Settings(score_threshold=0.3, publish_mode="all", max_rate_hz=2)
    with pytest.raises(ValueError, match="give at least one of"):
        parse_args("set", {"score_threshold": None})
    with pytest.raises(ValueError, match="args.bogus: unknown argument"):
        parse_args("set", {"bogus": None, "score_threshold": 0.5})


def test_edge_ctl_reads_each_setting_by_its_type() -> None:
    assert parse_setting("score_threshold", "0.5") == 0.5
    assert parse_setting("max_rate_hz", "2") == 2.0
    assert parse_setting("labels", "cat, dog,") == ["cat", "dog"]
    assert parse_setting("publish_mode", "changes") == "changes"
    with pytest.raises(ValueError):
        parse_setting("iou_threshold", "nan")
    with pytest.raises(KeyError):
        parse_setting("backend", "tflite")
