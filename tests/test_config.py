from dataclasses import dataclass

import pytest

from cifllm.config import ConfigError, load_config, parse_overrides, save_config


@dataclass(frozen=True)
class Cfg:
    lr: float = 1e-3
    steps: int = 10
    name: str = "tiny"
    flags: tuple[str, ...] = ()
    bf16: bool = False
    path: str | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 3.0e-4\nsteps: 20\nflags: [a, b]\n")
    cfg = load_config(Cfg, y, ["steps=30", "bf16=true", "name=small"])
    assert cfg == Cfg(lr=3e-4, steps=30, name="small", flags=("a", "b"), bf16=True)
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Cfg, tmp_path / "run" / "config.yaml") == cfg


def test_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(Cfg, None, ["learning_rate=1"])
    with pytest.raises(ConfigError, match="integer"):
        load_config(Cfg, None, ["steps=1.5"])
    with pytest.raises(ConfigError, match="true/false"):
        load_config(Cfg, None, {"bf16": "maybe"})
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, "/nonexistent.yaml")


def test_train_args_refuse_a_nonpositive_lr_and_a_bad_min_lr_ratio():
    """The lr / min_lr_ratio checks run in __post_init__ (they once sat after a return and never ran)."""
    import pytest

    from cifllm.training.config import TrainArgs

    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainArgs(lr=0.0)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        TrainArgs(min_lr_ratio=1.5)
    assert TrainArgs().lr > 0
