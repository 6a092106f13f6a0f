"""Named architecture presets and the builders of the three networks.

* ``mivos`` (default): the paper's networks; loads the official checkpoints.
  S2M 39,766,113, propagation 53,685,953, fusion 39,905 learnable parameters.
* ``lite``: the same structures on ResNet-18 with narrow heads, for CPU tests and quick
  experiments (S2M 12,209,905, propagation 8,009,345, fusion 10,737 parameters). Query / memory
  encoder widths are ResNet-18's own (f4 64, f8 128, f16 256; S2M layer4 512), keys 64-d,
  values 128-d, decoder 128/64/64, ASPP 64 channels with a 24-channel low-level projection,
  fusion width 16.

Two propagation architectures (:data:`PROPAGATION_ARCHS`, the one list CLIs use for ``--arch``):

* ``mivos``: the STM-style :class:`model.propagation.PropagationNetwork` (checkpoint kind
  ``propagation``);
* ``stcn``: :class:`model.stcn.STCNNetwork` (kind ``propagation-stcn``). ``mivos`` preset:
  54,434,180 parameters (ResNet-50 key encoder, ResNet-18 value encoder, keys 64-d, values
  512-d). ``lite``: ResNet-18 key and value encoders, values 128-d, decoder 128/64/64, CBAM
  hidden width 8 (8,822,700 parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.fusion import FusionConfig, FusionNet
from model.propagation import PropagationConfig, PropagationNetwork
from model.s2m import S2M, S2MConfig
from model.stcn import STCNConfig, STCNNetwork

__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_PRESET",
    "FusionConfig",
    "PROPAGATION_ARCHS",
    "PROPAGATION_KINDS",
    "PRESETS",
    "Preset",
    "PropagationConfig",
    "S2MConfig",
    "STCNConfig",
    "build_fusion",
    "build_propagation",
    "build_s2m",
    "build_stcn",
    "check_arch",
    "get_preset",
]

#: Propagation architectures: MiVOS's STM-style network and the STCN network.
PROPAGATION_ARCHS = ("mivos", "stcn")
DEFAULT_ARCH = "mivos"
#: ``python -m model.checkpoint --kind`` of each architecture's propagation weights.
PROPAGATION_KINDS = {"mivos": "propagation", "stcn": "propagation-stcn"}


@dataclass(frozen=True)
class Preset:
    """One architecture choice for all three networks."""

    name: str
    s2m: S2MConfig = field(default_factory=S2MConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    stcn: STCNConfig = field(default_factory=STCNConfig)


PRESETS: dict[str, Preset] = {
    "mivos": Preset(name="mivos"),
    "lite": Preset(
        name="lite",
        s2m=S2MConfig(
            backbone="resnet18", aspp_channels=64, low_level_channels=24, head_channels=64
        ),
        propagation=PropagationConfig(
            backbone="resnet18", key_dim=64, value_dim=128, decoder_channels=(128, 64, 64)
        ),
        fusion=FusionConfig(width=16),
        stcn=STCNConfig(
            key_backbone="resnet18", value_backbone="resnet18", key_dim=64, value_dim=128,
            decoder_channels=(128, 64, 64)
        ),
    ),
}
DEFAULT_PRESET = "mivos"


def get_preset(preset: str | Preset = DEFAULT_PRESET) -> Preset:
    """Look up a preset by name (a :class:`Preset` passes through)."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(
            f"unknown preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}"
        )
    return PRESETS[preset]


def build_s2m(preset: str | Preset = DEFAULT_PRESET) -> S2M:
    """S2M with the preset's widths (random initialisation)."""
    return S2M(get_preset(preset).s2m)


def check_arch(arch: str) -> str:
    """``arch`` if it is one of :data:`PROPAGATION_ARCHS`, else ValueError listing them."""
    if arch not in PROPAGATION_ARCHS:
        raise ValueError(f"unknown propagation architecture {arch!r}; valid: "
                         f"{', '.join(PROPAGATION_ARCHS)}")
    return arch


def build_propagation(
    preset: str | Preset = DEFAULT_PRESET, single_object: bool = False,
    arch: str = DEFAULT_ARCH,
) -> PropagationNetwork | STCNNetwork:
    """Propagation network of architecture ``arch`` (:data:`PROPAGATION_ARCHS`) with the
    preset's widths (4-channel memory / value encoder if single_object)."""
    if check_arch(arch) == "stcn":
        return build_stcn(preset, single_object=single_object)
    return PropagationNetwork(get_preset(preset).propagation, single_object=single_object)


def build_stcn(preset: str | Preset = DEFAULT_PRESET, single_object: bool = False) -> STCNNetwork:
    """STCNNetwork with the preset's widths (4-channel value encoder if single_object)."""
    return STCNNetwork(get_preset(preset).stcn, single_object=single_object)


def build_fusion(preset: str | Preset = DEFAULT_PRESET) -> FusionNet:
    """FusionNet with the preset's width."""
    return FusionNet(get_preset(preset).fusion)
