"""Train the difference-aware fusion network (REFERENCE.md f.3) with a frozen propagation model.

Stages (``--stage``):

* ``s0``: BL30K videos + their fusion data (``fusion_data/bl``), batch 12, 30K iterations,
  LR 1e-4, step at 20K, bootstrapping warm-up 6K -> 15K;
* ``s1``: DAVIS 2017 videos + ``fusion_data/davis``, from the s0 weights (``--load``), 10K
  iterations, step at 7.5K, warm-up 2K -> 5K.

The propagation checkpoint (``--prop-model``, multi-object) provides the frozen encoders and
key projections of the attention reader; its decoder tensors are ignored. The fusion data is
made beforehand with ``python -m dataset.generate_fusion`` (with ``--data synthetic`` this
script generates both the videos and their fusion data, cached under ``--data-root``, unless
``--fusion-root`` names fusion data of those videos).

``--arch stcn``: ``--prop-model`` is an STCN propagation network (``python -m model.checkpoint
--kind propagation-stcn``); the attention reader is its frozen key encoder + ``key_proj``, with
one L2 affinity for both objects (REFERENCE.md j.2), AMP ``auto`` and checkpoints
``fusion_stcn_<stage>_*.pth``. The fusion data generator does not run STCN yet: give fusion data
made with ``dataset.generate_fusion`` (e.g. from a MiVOS propagation model) with
``--fusion-root``, also with ``--data synthetic``.

Examples::

    # CPU smoke run on generated data (lite networks)
    python train_fusion.py --preset lite --data synthetic --iterations 200 \\
        --prop-model runs/p02/prop_s2_final.pth --output runs/fusion_lite

    # the paper's stage 0 on 2 GPUs
    python -m dataset.generate_fusion --data ../BL30K --prop-model propagation_model.pth \\
        --output ../fusion_data/bl/run0 --range 25
    torchrun --nproc_per_node 2 train_fusion.py --stage s0 --prop-model propagation_model.pth \\
        --video-root ../BL30K --fusion-root ../fusion_data/bl --output runs/fusion_s0

    # STCN: fusion data from any propagation model, attention from the STCN network
    python train_fusion.py --arch stcn --stage s0 --prop-model stcn.pth --video-root ../BL30K \\
        --fusion-root ../fusion_data/bl --output runs/fusion_stcn_s0

Output: ``<output>/<name>_<it>.pth`` / ``<name>_final.pth`` (plain FusionNet state dicts:
``python -m model.checkpoint --kind fusion --preset P FILE``), ``<name>_checkpoint.pth``
(resumable), ``config.json``, ``train.log``, ``tb/``, ``images/``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from train import fusion


def main(argv: Sequence[str] | None = None) -> int:
    """Train FusionNet (:mod:`train.fusion`); 0 on success, 2 for bad input (one line naming
    it)."""
    return fusion.main(argv, prog="train_fusion.py", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
