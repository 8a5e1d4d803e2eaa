# SPDX-License-Identifier: MIT
from dataclasses import dataclass, field

import pytest

from torchfault.config import apply_overrides, dump_yaml, from_dict, load_yaml
from torchfault.errors import ConfigError


@dataclass
class Inner:
    margin: float = 0.01
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not 0 < self.margin < 1:
            raise ValueError(f"inner.margin: must be in (0, 1), got {self.margin}.")


@dataclass
class Outer:
    name: str = "x"
    n: int | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  margin: 0.05\n")
    data = apply_overrides(
        load_yaml(p),
        ["--inner.margin", "0.02", "--n=7", "--flag", "true", "--inner.names", "[a, b]"],
    )
    cfg = from_dict(Outer, data)
    assert cfg == Outer(name="run", n=7, flag=True, inner=Inner(0.02, ["a", "b"]))
    assert "margin: 0.02" in dump_yaml(cfg)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"nme": 1}, "nme: unknown field.*Did you mean 'name'"),
        ({"inner": {"margin": 2.0}}, r"inner.margin: must be in \(0, 1\)"),
        ({"n": "many"}, "n: expected"),
        ({"flag": "yes please"}, "flag: expected true or false"),
        ({"inner": 3}, "inner: expected a mapping"),
    ],
)
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="missing value"):
        apply_overrides({}, ["--n"])
