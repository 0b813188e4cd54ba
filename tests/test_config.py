from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from landcover.config import config_to_dict, load_config
from landcover.errors import ConfigError, InputFileError


@dataclass(frozen=True)
class Inner:
    size: int = 4


@dataclass(frozen=True)
class Cfg:
    name: str = "demo"
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    out: Path = Path("out")
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be positive")


def test_defaults_file_and_overrides(tmp_path):
    assert load_config(Cfg) == Cfg()
    f = tmp_path / "c.toml"
    f.write_text('name = "x"\nlr = 1\nsizes = [3, 4]\nout = "o"\n[inner]\nsize = 9\n')
    cfg = load_config(Cfg, f, overrides={"mode": "b", "name": None})
    assert cfg == Cfg(name="x", lr=1.0, mode="b", sizes=(3, 4), out=Path("o"), inner=Inner(9))
    assert config_to_dict(cfg)["inner"] == {"size": 9}
    y = tmp_path / "c.yaml"
    y.write_text("name: y\n")
    assert load_config(Cfg, y).name == "y"


def test_errors_name_the_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("colour = 3\n")
    with pytest.raises(InputFileError, match=r"bad.toml: unknown key\(s\) colour"):
        load_config(Cfg, f)
    f.write_text("lr = -1\n")
    with pytest.raises(InputFileError, match="lr must be positive"):
        load_config(Cfg, f)
    f.write_text("lr = [\n")
    with pytest.raises(InputFileError, match="invalid config"):
        load_config(Cfg, f)
    with pytest.raises(ConfigError, match="not one of"):
        load_config(Cfg, overrides={"mode": "z"})
    with pytest.raises(InputFileError, match="not found"):
        load_config(Cfg, tmp_path / "missing.toml")


def test_section_table_or_top_level(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[compare]\nname = "in-table"\n')
    assert load_config(Cfg, f, section="compare").name == "in-table"
    f.write_text('name = "top"\n')
    assert load_config(Cfg, f, section="compare").name == "top"
