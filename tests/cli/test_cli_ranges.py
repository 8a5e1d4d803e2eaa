# SPDX-License-Identifier: MIT
"""``torchfault profile-ranges``: the file it writes equals the Python function's profile of the
same model and data; bad settings exit 2 naming the field and write nothing."""

from __future__ import annotations

import torch

from torchfault.cli import main
from torchfault.dnn import create_dataset, create_model
from torchfault.injectors import load_profile, profile_ranges


def test_profile_ranges_command_equals_the_function(tmp_path, capsys):
    out = tmp_path / "lenet.json"
    args = ["profile-ranges", str(out), "--num_inputs", "40", "--batch_size", "16"]
    assert main([*args, "--percentiles", "[1, 50, 99]", "--per_channel", "true"]) == 0
    assert "profiled 12 layers on 40 inputs" in capsys.readouterr().out
    model = create_model("lenet", dataset="digits", pretrained=True)
    ds = create_dataset("digits", split="test")
    x = torch.stack([torch.as_tensor(ds[i][0]) for i in range(40)])
    ref = profile_ranges(model, x, percentiles=(1, 50, 99), per_channel=True, batch_size=16)
    got = load_profile(out, model)
    assert got.layers == ref.layers and got.fingerprint == ref.fingerprint
    # an existing file is kept unless --overwrite
    before = out.read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_bad_settings_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "x.json"
    assert main(["profile-ranges", str(out), "--percentiles", "[50, 101]"]) == 2
    assert "percentiles" in capsys.readouterr().err
    assert main(["profile-ranges", str(out), "--layers", "[conv9]"]) == 2
    err = capsys.readouterr().err
    assert "conv9" in err and "conv1" in err
    assert not out.exists()
