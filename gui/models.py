"""The architectures the annotation tool can run, in one table.

``ARCHITECTURES`` maps an ``--arch`` name to the function that builds its three networks
(S2M, propagation, fusion). The names are those of ``model.presets.PROPAGATION_ARCHS`` that the
tool can run end to end (``mivos`` and ``stcn``: the inference core drives either through
:mod:`inference.arch`); adding an architecture to the GUI is one more entry here, and the
command line takes its choices from this table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import load_weights
from model.presets import build_fusion, build_propagation, build_s2m

log = logging.getLogger(__name__)


@dataclass
class Networks:
    """The three networks of a session, in eval mode on ``device``."""

    s2m: torch.nn.Module
    propagation: torch.nn.Module
    fusion: torch.nn.Module | None
    device: torch.device


@dataclass(frozen=True)
class WeightFiles:
    """Checkpoint paths (None: not given)."""

    s2m: str | None = None
    propagation: str | None = None
    fusion: str | None = None


def _load_or_random(net: torch.nn.Module, path: str | None, what: str, random_weights: bool) -> None:
    if random_weights:
        return
    if path is None:
        raise ValueError(f"no {what} weights given: pass --{what}-model FILE or --random-weights")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} weights not found: {path} (pass --{what}-model FILE, "
                                "or --random-weights to try the tool)")
    load_weights(net, path)


def _build(arch: str, preset: str, weights: WeightFiles, random_weights: bool,
           device: torch.device, with_fusion: bool) -> Networks:
    s2m, prop = build_s2m(preset), build_propagation(preset, arch=arch)
    fusion = build_fusion(preset) if with_fusion else None
    _load_or_random(s2m, weights.s2m, "s2m", random_weights)
    _load_or_random(prop, weights.propagation, "prop", random_weights)
    if fusion is not None:
        _load_or_random(fusion, weights.fusion, "fusion", random_weights)
    nets = [n for n in (s2m, prop, fusion) if n is not None]
    for n in nets:
        n.to(device).eval()
    return Networks(s2m, prop, fusion, device)


def build_mivos(preset: str, weights: WeightFiles, random_weights: bool, device: torch.device,
                with_fusion: bool = True) -> Networks:
    """MiVOS main: DeepLabV3+ S2M, STM-style propagation with top-k read, FusionNet."""
    return _build("mivos", preset, weights, random_weights, device, with_fusion)


def build_stcn(preset: str, weights: WeightFiles, random_weights: bool, device: torch.device,
               with_fusion: bool = True) -> Networks:
    """MiVOS-STCN: the same S2M, the STCN propagation network (shared keys, top-k 20), a
    FusionNet trained on it (``fusion_stcn.pth``)."""
    return _build("stcn", preset, weights, random_weights, device, with_fusion)


Builder = Callable[[str, WeightFiles, bool, torch.device, bool], Networks]

#: --arch name -> builder(preset, weights, random_weights, device, with_fusion)
ARCHITECTURES: dict[str, Builder] = {
    "mivos": build_mivos,
    "stcn": build_stcn,
}
DEFAULT_ARCH = "mivos"


def build_networks(arch: str, preset: str, weights: WeightFiles, random_weights: bool = False,
                   device: str | torch.device = "cpu", with_fusion: bool = True,
                   seed: int = 0) -> Networks:
    """Build and load the networks of ``arch`` (random initialisation seeded by ``seed``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    nets = ARCHITECTURES[arch](preset, weights, random_weights, dev, with_fusion)
    log.info("networks: arch %s, preset %s, %s weights, device %s", arch, preset,
             "random" if random_weights else "loaded", dev)
    return nets
