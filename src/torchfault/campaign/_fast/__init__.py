# SPDX-License-Identifier: MIT
"""The ``fast`` engine: run only what a fault touches, many faults per batch, stop masked rows early.

How it works (DESIGN.md, "The campaign engine"; docs/engine.md has the long version). One file
per idea:

- :mod:`._planning` -- the model is traced once with ``torch.fx``. A fault *site* is the graph
  node of the faulted module (``call_module``) together with the faulted tensor (its output, or
  one parameter or buffer). For each site the engine plans "the rest of the network from here":
  the nodes that depend on the site and lead to the output, in graph order, and the golden values
  that they read from outside (the *boundary*: a residual branch, the site's own inputs).
  :mod:`._operations` says which operations mask, which may round by position, which run on
  windows.
- :mod:`._golden` -- golden values are computed per block of inputs (``batch_size`` inputs) by
  running the graph once, and only the values the planned sites need are kept, in a byte-bounded
  LRU cache.
- :mod:`._faults` -- one faulty run is one *row*: (fault, input). An activation fault becomes
  the row's golden module output with the fault applied (the fault model functions of
  :data:`~torchfault.faults.FAULT_MODELS` do it, vectorised); a parameter fault becomes the
  module's output recomputed from its cached golden input with the faulted tensor
  (``torch.func.functional_call``; for a convolution only the one output channel the fault can
  change is recomputed, all faults of a site stacked in one call).
- :mod:`._rows` -- rows of the same site share one batched execution of the rest of the network.
  After the site and after each masking operation (ReLU-like, max-pooling) at which the faulty
  value is the only live one, every row is compared word for word with the golden value; rows
  that are identical again are finished as ``masked`` and dropped from the batch.
- :mod:`._geometry` and :mod:`._windows` -- spatial windows (activation faults on 4-d maps): a
  single-element fault can only change a window of each following map; while the nodes after the
  site are convolutions, poolings or element-wise operations, they are computed on windows,
  checked by golden canary rows (batches of fewer than ``window_min_rows`` rows skip windows).
- :mod:`._channels` -- channel windows (convolution weight and bias faults): the fault changes
  one output channel, and while the nodes after the site compute each channel from the same
  channel (batch norm in eval mode, element-wise activations, a residual sum with a golden
  operand), they are computed on that channel's plane only, checked by golden canary rows.
- :mod:`._exactness` -- the checks that decide when the fast path may be trusted.
- :mod:`._positions` -- transcendental element-wise functions (sigmoid, SiLU...) computed
  position-free, and which rows the reference engine computes the same way (*plain* rows).
- :mod:`._tracing` -- layer-by-layer deviation traces of the rows run fast, read from the rest
  of the network as it runs (a campaign with ``trace``): the values ``trace_runs`` gives.
- :mod:`._options` -- the tuning knobs (:class:`FastOptions`, ``engine.fast`` in a config).
- :mod:`._engine` -- :class:`FastEngine`: which runs take the fast path, and the loop.

Everything else goes to the ``reference`` engine (full forward passes with
:func:`torchfault.inject`): a model ``torch.fx`` cannot trace (one logging warning per model
class), rows at the places where a
transcendental element-wise function's kernel rounds by position (:mod:`._positions`: the
engine computes these functions position-free and runs only the rows the reference engine
computes the same way), several faults in one run, ``target="input"``, faults
with ``sample`` or ``element`` set, a module called more than once (unless the fault names its
``call``), parameters used by more than one module or read directly by the graph, and any
row group whose execution raises (each task of the group is rerun
through the reference engine, so each gets its own outcome).

What is guaranteed. Floating-point kernels on CPU may round differently for different batch
sizes (oneDNN and MKL switch kernels for very small batches: on the machine this was written on,
linear layers with fewer than 12 rows). The engine therefore executes every batch with at least
:attr:`FastEngine.min_rows` rows (padding with duplicated rows), and checks, before it trusts
anything: (a) that its own golden pass reproduces the campaign's golden outputs bit for bit for
every input (inputs that do not are run by the reference engine), and (b) once per engine, on
the first block with such inputs, that every node's value of ``min_rows`` rows is the same bits
in a batch of their own and at the end of taller, odd-sized batches
(:func:`._exactness.same_in_any_batch`; a model that fails it, such as one with a linear layer a
few columns wide, runs on the reference engine). One pass also records in-place modifications
(tensor version counters): nodes that modify a value they read are kept in the plan even when
their result is unused, and a site that reads a value after it was modified in place (where a
golden copy is not what the model reads) runs on the reference engine. Gathered golden rows keep
their memory layout (channels-last stays channels-last). A stacked single-channel convolution is
checked by the same convolution with the golden kernels of the faulted channels at the same
places. Under these checks a row's faulty output is the same float computation as a full forward
pass at a batch of at least ``min_rows`` rows, so its outcome, ``faulty_top1`` and
``max_abs_diff`` equal those of the reference engine, which pads its own passes to the same
``min_rows`` (``MIN_ROWS`` of the reference engine). Windowed computations (spatial and channel
windows) are trusted only where their canary rows reproduce golden bit for bit; everything
outside a window is golden by construction (nothing there reads a changed value).
"""

from torchfault.campaign._fast._engine import FastEngine
from torchfault.campaign._fast._options import FastOptions

__all__ = ["FastEngine", "FastOptions"]
