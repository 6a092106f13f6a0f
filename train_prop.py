"""Train the propagation network (REFERENCE.md f.2), one stage per run.

Stages (``--stage``):

* ``s0``: static images turned into 3-frame clips, **single-object** network (4-channel
  memory encoder), batch 7, 300K iterations, LR 1e-5, step at 250K. Its weights are checked
  with ``python -m model.checkpoint --kind propagation --single-object --preset P FILE``;
* ``s1``: BL30K, two objects, batch 4, 500K iterations, step at 450K, max_jump curriculum;
* ``s2``: DAVIS 2017 train (x5) + YouTubeVOS train, two objects, batch 4, 150K iterations,
  step at 125K, curriculum;
* ``s02``: stage 2 right after stage 0 (300K iterations).

Each stage starts from the previous one's weights with ``--load`` (the iteration counter
restarts at 0); loading single-object s0 weights into the multi-object network widens the
memory-encoder stem from 4 to 5 channels (the new "others" slice orthogonally initialised).
The networks stay in eval mode for BatchNorm (frozen statistics, affine parameters train).

``--arch stcn`` trains the STCN network (``model.stcn``, REFERENCE.md j.1) on the same data,
loss and curriculum with STCN's recipe: s0 batch 8, 300K iterations, LR step 150K; s1 500K /
400K; s2 (after s1) 300K / 250K; s02 (after s0) 150K / 125K; LR 1e-5; AMP ``auto`` (fp16 on
CUDA, bf16 only on a CPU with native bf16); checkpoints ``stcn_<stage>_*.pth``, checked with
``python -m model.checkpoint --kind propagation-stcn``. The key encoder is initialised by
``--imagenet`` (ResNet-50), the value encoder by ``--imagenet-value`` (ResNet-18).

Examples::

    # CPU smoke runs on generated data (lite network)
    python train_prop.py --preset lite --data synthetic --stage s0 --iterations 200 --output runs/p0
    python train_prop.py --preset lite --data synthetic --stage s2 --iterations 200 \\
        --load runs/p0/prop_s0_final.pth --output runs/p02

    # the paper's stage 1 on 2 GPUs
    torchrun --nproc_per_node 2 train_prop.py --stage s1 --bl30k-root ../BL30K \\
        --load runs/s0/prop_s0_final.pth --output runs/s1

    # STCN, lite, on generated data
    python train_prop.py --arch stcn --preset lite --data synthetic --stage s0 --iterations 200 \\
        --output runs/stcn0

Output: ``<output>/<name>_<it>.pth`` / ``<name>_final.pth`` (plain state dicts),
``<name>_checkpoint.pth`` (resumable: ``--resume auto``), ``config.json``, ``train.log``,
``tb/``, ``images/``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from train import propagation


def main(argv: Sequence[str] | None = None) -> int:
    """Train one propagation stage (:mod:`train.propagation`); 0 on success, 2 for bad input
    (one line naming it)."""
    return propagation.main(argv, prog="train_prop.py", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
