# SPDX-License-Identifier: MIT
"""Makes propagation_lenet.png and .json (docs/protection.md, "How a fault travels"): how far
single-bit faults travel through the pretrained LeNet-5 (digits), by the layer they hit.

Run from the repository root: ``python docs/img/propagation_lenet.py`` (about a minute on a
CPU). The faults: the ``per_layer`` sampler (seed 0, every bit 0-31 allowed) over eight sites,
the outputs and the weights of conv1, conv2, fc1 and fc2, 40 single-bit flips per site (320
faults), each run on the first 32 digits test inputs (10 240 runs, fast engine), every run traced
(``run_campaign(..., trace=True)``). Per site, ``propagation_by_depth`` over its runs' traces:
the share of runs whose output at each layer differs from golden (bitwise), from the layer hit
onwards. The JSON holds those rows and each site's outcome counts.
"""

import json
import time
from collections import Counter
from pathlib import Path

import torch
from matplotlib.figure import Figure

import torchfault
from torchfault.analysis import propagation_by_depth
from torchfault.dnn import create_dataset, create_model

HERE = Path(__file__).resolve().parent
MODULES = ["conv1", "conv2", "fc1", "fc2"]
PER_SITE, INPUTS, SEED = 40, 32, 0

start = time.perf_counter()
model = create_model("lenet", dataset="digits", pretrained=True).eval()
test = create_dataset("digits", split="test")
inputs = torch.stack([torch.as_tensor(test[i][0]) for i in range(INPUTS)])
labels = torch.tensor([test[i][1] for i in range(INPUTS)])
sites = torchfault.fault_space(model, inputs, modules=MODULES, kinds=("outputs", "weights"))
sampler = torchfault.create_sampler("per_layer", sites=sites, n=PER_SITE, seed=SEED)
faults = [sampler.draw(k) for k in range(len(sampler))]
result = torchfault.run_campaign(model, inputs, faults, labels, engine="fast", trace=True)
seconds = time.perf_counter() - start

site_of = {fid: f"{fs[0].module}:{fs[0].target}" for fid, fs in result.faults.items()}
layers = [d.layer for d in result.traces[0].layers]
per_site = {}
for s in sites:
    name = f"{s.module}:{s.target}"
    rows = propagation_by_depth([t for t in result.traces if site_of[t.fault_id] == name])
    outcomes = Counter(r.outcome for r in result.runs if site_of[r.fault_id] == name)
    per_site[name] = {
        "outcomes": dict(sorted(outcomes.items())),
        "depth": rows[layers.index(s.module) :],  # from the layer hit onwards
    }

summary = {
    "model": "lenet (digits, pretrained)",
    "campaign": {
        "sampler": "per_layer",
        "sites": list(per_site),
        "bits": "0-31",
        "faults_per_site": PER_SITE,
        "faults": len(faults),
        "inputs": f"first {INPUTS} digits test inputs",
        "runs": len(result.runs),
        "seed": SEED,
        "engine": "fast",
    },
    "outcomes": dict(sorted(Counter(r.outcome for r in result.runs).items())),
    "sites": per_site,
}
(HERE / "propagation_lenet.json").write_text(json.dumps(summary, indent=1) + "\n")

fig = Figure(figsize=(8.5, 4.6), dpi=100, layout="constrained")
ax = fig.subplots()
colors = dict(zip(MODULES, ["C0", "C1", "C2", "C3"]))
for name, site in per_site.items():
    module, target = name.split(":")
    xs = [layers.index(r["layer"]) for r in site["depth"]]
    ys = [r["deviating"] / r["runs"] for r in site["depth"]]
    style = "-" if target == "output" else "--"
    marker = "o" if target == "output" else "s"
    ax.plot(xs, ys, style, marker=marker, color=colors[module], label=f"{module} {target}")
ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right")
ax.set_ylim(-0.02, 1.02)
ax.set_xlabel("layer (execution order)")
ax.set_ylabel("share of runs deviating from golden")
ax.set_title(
    f"LeNet-5 (digits): single-bit flips, {PER_SITE} per site x {INPUTS} inputs,"
    " from the layer hit onwards",
    fontsize="medium",
)
ax.grid(alpha=0.3)
ax.legend(title="fault in", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
fig.savefig(HERE / "propagation_lenet.png", format="png")

for name, site in per_site.items():
    shares = " ".join(f"{r['layer']}={r['deviating'] / r['runs']:.2f}" for r in site["depth"])
    print(name, site["outcomes"], shares)
print(summary["outcomes"], f"{seconds:.0f} s for the campaign")
