# SPDX-License-Identifier: MIT
"""Makes heatmap_lenet_fc3.png and heatmap_lenet_fc3.json (docs/protection.md, "Which weights
matter"): the SDC rate of every weight of the pretrained LeNet-5's last layer (digits).

Run from the repository root: ``python docs/img/heatmap_lenet.py`` (under a minute on a CPU).
The faults: the ``exhaustive`` sampler over ``fc3.weight`` (10 x 84: a row per class, a column
per fc2 feature) with bit 30 only (the top exponent bit): 840 faults, one per weight, each run on
the first 64 digits test inputs (53 760 runs, fast engine).
``vulnerability_maps(..., by="element")`` gives each weight's SDC rate over its 64 runs (95 %
Clopper-Pearson interval over its runs) and ``plot_heatmap`` draws it. The JSON holds the grid
of SDC runs (every cell has 64 runs), the rate per row (class), the columns (fc2 features) where
no weight gave an SDC, those whose input to fc3 (relu4's output) is zero on every test input
used, and the ten weights with the highest rate.
"""

import json
import time
from collections import Counter
from pathlib import Path

import torch

import torchfault
from torchfault.analysis import plot_heatmap, vulnerability_maps
from torchfault.dnn import create_dataset, create_model

HERE = Path(__file__).resolve().parent
MODULE, BITS, INPUTS = "fc3", [30], 64

start = time.perf_counter()
model = create_model("lenet", dataset="digits", pretrained=True).eval()
test = create_dataset("digits", split="test")
inputs = torch.stack([torch.as_tensor(test[i][0]) for i in range(INPUTS)])
labels = torch.tensor([test[i][1] for i in range(INPUTS)])
sites = torchfault.fault_space(model, inputs, modules=MODULE, kinds="weights")
sampler = torchfault.create_sampler("exhaustive", sites=sites, bits=BITS)
faults = [sampler.draw(k) for k in range(len(sampler))]
result = torchfault.run_campaign(model, inputs, faults, labels, engine="fast")
vm = vulnerability_maps(result, by="element")[(MODULE, "weight")]
seconds = time.perf_counter() - start
relu4 = []  # fc3's inputs: a column's weight multiplies them
hook = model.relu4.register_forward_hook(lambda m, i, o: relu4.append(o))
with torch.no_grad():
    model(inputs)
hook.remove()

rows, cols = vm.shape
cells = [[vm.cells[(r, c)] for c in range(cols)] for r in range(rows)]
runs = {c.runs for row in cells for c in row}
summary = {
    "model": "lenet (digits, pretrained)",
    "campaign": {
        "sampler": "exhaustive",
        "site": f"{MODULE}:weight",
        "shape": list(vm.shape),
        "bits": BITS,
        "faults": len(faults),
        "inputs": f"first {INPUTS} digits test inputs",
        "runs": len(result.runs),
        "engine": "fast",
    },
    "outcomes": dict(sorted(Counter(r.outcome for r in result.runs).items())),
    "sdc_rate": sum(c.hits for row in cells for c in row) / len(result.runs),
    "runs_per_cell": sorted(runs),
    "cells_with_sdc": sum(c.hits > 0 for row in cells for c in row),
    "columns_without_sdc": [c for c in range(cols) if not any(row[c].hits for row in cells)],
    "columns_zero_on_every_input": [int(c) for c in (relu4[0] > 0).sum(0).eq(0).nonzero()],
    "rate_per_row": [sum(c.hits for c in row) / sum(c.runs for c in row) for row in cells],
    "top": [
        {
            "index": list(c.index),
            "runs": c.runs,
            "sdc": c.hits,
            "rate": c.rate,
            "low": c.low,
            "high": c.high,
        }
        for c in vm.top(10)
    ],  # fmt: skip
    "sdc_runs": [[c.hits for c in row] for row in cells],
}
(HERE / f"heatmap_lenet_{MODULE}.json").write_text(json.dumps(summary, indent=1) + "\n")
plot_heatmap(vm, HERE / f"heatmap_lenet_{MODULE}.png")
print({k: v for k, v in summary.items() if k != "sdc_runs"}, f"{seconds:.0f} s")
