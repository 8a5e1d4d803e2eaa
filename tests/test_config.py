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


BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
name: [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_alias_bomb_is_refused_at_once(tmp_path):
    """Nine lines of aliases expand to 10^9 strings: refused by size, in well under a second
    (before: the overrides deep-copied the expanded tree, 23.5 s and 2.5 GB for 10^7)."""
    import time

    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml.*more than 100,000 values") as info:
        load_yaml(p)
    assert time.perf_counter() - t0 < 2.0
    assert info.value.field == "config"


def test_small_aliases_load_and_overrides_copy_only_their_path(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("base: &b {margin: 0.05, names: [a]}\ninner: *b\n")
    data = load_yaml(p)
    assert data["inner"] == {"margin": 0.05, "names": ["a"]}
    out = apply_overrides(data, ["--inner.margin", "0.5"])
    assert out["inner"]["margin"] == 0.5
    assert data["inner"]["margin"] == 0.05 and data["base"]["margin"] == 0.05  # not changed
    assert out["base"] is data["base"]  # untouched branches are shared, not copied


def test_recursive_alias_is_refused(tmp_path):
    p = tmp_path / "rec.yaml"
    p.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="more than"):
        load_yaml(p)


def test_non_utf8_yaml_names_file_and_offset(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml.*not UTF-8.*offset 9, line 1"):
        load_yaml(p)


@pytest.mark.parametrize(
    "data, message, field",
    [
        ({"inner": {"margin": float("nan")}}, "inner.margin: expected a number, got NaN", None),
        ({"n": 2**64}, "n: .* does not fit a 64-bit integer", "n"),
        ({"n": 1.0e30}, "n: .* does not fit a 64-bit integer", "n"),
        ({"n": float("inf")}, "n: expected an integer", "n"),
        ({"nme": 1}, "nme: unknown field", "nme"),
        ({"inner": {"margin": 2.0}}, r"inner.margin: must be in", "inner"),
    ],
)
def test_numbers_are_finite_and_fit(data, message, field):
    with pytest.raises(ConfigError, match=message) as info:
        from_dict(Outer, data)
    assert info.value.field == (field or "inner.margin")


def test_error_message_is_never_a_whole_tree():
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"n": list(range(10_000))})
    assert len(str(info.value)) < 200
