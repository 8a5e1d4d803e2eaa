# SPDX-License-Identifier: MIT
"""Makes protection_lenet_ranger.png and .json (docs/protection.md): the pretrained LeNet-5 on
digits, ranger on all its layers, the campaign of the page's "Measured: LeNet-5 on digits" table.

Run from the repository root: ``python docs/img/protection_lenet_ranger.py`` (a few minutes on
a CPU). The profile is of the 1257 train inputs; 1000 faults drawn by the ``uniform`` sampler
(seed 0) over every fault site of LeNet, each run on the first 64 test inputs (64 000 runs),
unprotected runs on the fast engine, then every run repeated under ranger.
"""

import json
import math
from pathlib import Path

import torch

import torchfault
from torchfault.analysis import plot_protection
from torchfault.dnn import create_dataset, create_model
from torchfault.injectors import profile_ranges

HERE = Path(__file__).resolve().parent

model = create_model("lenet", dataset="digits", pretrained=True).eval()
profile = profile_ranges(model, create_dataset("digits", split="train"))
test = create_dataset("digits", split="test")
inputs = torch.stack([torch.as_tensor(test[i][0]) for i in range(64)])
labels = torch.tensor([test[i][1] for i in range(64)])
sampler = torchfault.create_sampler(
    "uniform", sites=torchfault.fault_space(model, inputs), n=1000, seed=0
)
faults = [sampler.draw(k) for k in range(len(sampler))]
result = torchfault.run_campaign(
    model, inputs, faults, labels, engine="fast",
    protection={"name": "ranger", "profile": profile},
)  # fmt: skip
summary = {
    k: None if isinstance(v, float) and math.isnan(v) else v
    for k, v in result.protection.summary().items()
    if k != "overhead"  # one timing on a shared machine is noise; the page times it separately
}
(HERE / "protection_lenet_ranger.json").write_text(json.dumps(summary, indent=1) + "\n")
plot_protection(summary, HERE / "protection_lenet_ranger.png")
print(json.dumps(summary, indent=1))
