"""The propagation architectures as the inference engine sees them: one small adapter each.

The engine (:class:`inference.engine.PropagationEngine`) runs every schedule through an
adapter, so that the interactive core, the semi-supervised driver and the engine hold no
architecture branches. An adapter answers five calls (B = 1 frame, K = objects):

* ``encode_query(image)``: the frame's query features (cached by the engine);
* ``encode_memory(image, masks, others, features)``: memory key and values of one frame,
  ``masks`` / ``others`` K x 1 x Hp x Wp, ``features`` a zero-argument callable returning the
  frame's (cached) query features. Returns ``(key, values)``: values K x CV x h x w; the key is
  K x CK x h x w when keys are per object (``shared_key`` False) or 1 x CK x h x w when one key
  serves all objects (``shared_key`` True);
* ``decoder_features(query)``: the query features holding the decoder's skip-branch outputs
  (they depend only on the frame: computed once, then every pass that decodes the frame again
  reuses them from the engine's cache), or ``query`` itself when it already holds them or the
  network cannot split its decoder (a network without ``with_decoder_skips``);
* ``segment(query, mem_key, mem_value, top_k, **options)``: logits K x Hp x Wp from a memory
  bank's :meth:`~inference.memory_bank.MemoryBank.read_tensors`;
* ``attention(ref_key, query, diff, **options)``: the differences ``diff`` (K x C x Hp x Wp)
  of an interacted frame (memory key ``ref_key``) aligned to the query frame (REFERENCE.md c.2).

Architectures (REFERENCE.md b, j):

``mivos`` (:class:`MivosAdapter`, :class:`model.propagation.PropagationNetwork`)
    The memory encoder sees image and mask, so keys are per object; one read per object.
``stcn`` (:class:`StcnAdapter`, :class:`model.stcn.STCNNetwork`)
    Keys come from the image alone: a memory frame's key *is* its query key (from the query
    cache, so memorising costs only the value encoder), one key per frame is shared by every
    object (batch 1), values are per object, and one affinity per query frame serves all
    objects. Fusion: one W from the interacted frame's key and the target frame's key (full L2
    affinity, softmax over memory) aligns the difference maps of every object in one product;
    channel k is used for object k. (The reference also aligns the background's channel, which
    no object uses; every channel is aligned independently, so leaving it out changes nothing.)

Schedules differ only in the settings of :class:`inference.engine.MemoryWriteRule`
(:data:`ARCH_DEFAULTS`): MiVOS keeps the previous frame as temporary memory; MiVOS-STCN
(REFERENCE.md j.2) does not, and memorises a frame when ``|t - last memorised| >= mem_every``
counted from the interacted frame; STCN's semi-supervised schedule (j.1) memorises the frames
whose absolute index is a multiple of ``mem_every`` (``mem_anchor="zero"``), without temporary
memory.

Which adapter a network gets: :func:`adapter_for` reads the network's ``arch`` attribute
(``STCNNetwork.arch == "stcn"``); a network without one is driven as ``mivos``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from model.presets import DEFAULT_ARCH, PROPAGATION_ARCHS, check_arch
from model.stcn import STCN_TOP_K

__all__ = [
    "ARCH_DEFAULTS",
    "ArchDefaults",
    "MEM_ANCHORS",
    "MivosAdapter",
    "StcnAdapter",
    "adapter_for",
    "arch_default_text",
    "arch_of",
    "defaults_for",
]

#: where the count of ``mem_every`` starts: the frame a pass starts at (interacted / annotated
#: frame) or frame 0 (absolute frame indices)
MEM_ANCHORS = ("start", "zero")


@dataclass(frozen=True)
class ArchDefaults:
    """Inference defaults of one architecture (a flag given on the command line wins)."""

    top_k: int  # top-k of the memory read
    include_last: bool  # previous frame as temporary memory
    semi_mem_anchor: str  # semi-supervised count of mem_every: "start" | "zero" (MEM_ANCHORS)
    prop_model: str  # default propagation checkpoint file name
    fusion_model: str  # default fusion checkpoint file name


#: the defaults of each architecture (REFERENCE.md d, g, j)
ARCH_DEFAULTS: dict[str, ArchDefaults] = {
    "mivos": ArchDefaults(top_k=50, include_last=True, semi_mem_anchor="start",
                          prop_model="propagation_model.pth", fusion_model="fusion.pth"),
    "stcn": ArchDefaults(top_k=STCN_TOP_K, include_last=False, semi_mem_anchor="zero",
                         prop_model="stcn.pth", fusion_model="fusion_stcn.pth"),
}
assert set(ARCH_DEFAULTS) == set(PROPAGATION_ARCHS)


def defaults_for(arch: str) -> ArchDefaults:
    """The :class:`ArchDefaults` of ``arch`` (ValueError listing the architectures)."""
    return ARCH_DEFAULTS[check_arch(arch)]


def arch_default_text(name: str) -> str:
    """'mivos: X, stcn: Y' for an :class:`ArchDefaults` field (for ``--help`` texts)."""
    def show(v: Any) -> str:
        if isinstance(v, bool):
            return "on" if v else "off"
        return str(v)

    return ", ".join(f"{arch}: {show(getattr(d, name))}" for arch, d in ARCH_DEFAULTS.items())


def arch_of(net: torch.nn.Module) -> str:
    """The architecture name of a propagation network (``mivos`` when it does not say)."""
    return check_arch(getattr(net, "arch", DEFAULT_ARCH))


class _Adapter:
    """What both adapters share: the network, the decoder's skip branches, the encoders."""

    #: the network's image encoders (the modules :meth:`encoders_channels_last` converts)
    ENCODERS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net
        self._with_skips = getattr(net, "with_decoder_skips", None)

    def encoders_channels_last(self) -> list[str]:
        """Convert the network's image encoders (:attr:`ENCODERS`) to channels-last memory
        format, in place; returns the names converted. Their convolutions then run on
        channels-last tensors, which is faster on some CPUs but rounds differently from the
        default layout (logits move by about 1e-4), so it is an option, off by default
        (``PropagationEngine(channels_last=True)``; docs/PROFILE.md has the measured ratios)."""
        done = []
        for name in self.ENCODERS:
            module = getattr(self.net, name, None)
            if isinstance(module, torch.nn.Module):
                module.to(memory_format=torch.channels_last)
                done.append(name)
        return done

    def decoder_features(self, query: Any) -> Any:
        """``query`` with the decoder's skip outputs (computed here once per frame), or
        ``query`` itself (already there, or a network without ``with_decoder_skips``)."""
        if self._with_skips is None or getattr(query, "skips", None) is not None:
            return query
        return self._with_skips(query)


class MivosAdapter(_Adapter):
    """:class:`model.propagation.PropagationNetwork` (or a network with its interface)."""

    arch: ClassVar[str] = "mivos"
    #: one key per object and frame
    shared_key: ClassVar[bool] = False
    ENCODERS = ("rgb_encoder", "mask_rgb_encoder")

    def encode_query(self, image: torch.Tensor) -> Any:
        return self.net.encode_query(image)

    def encode_memory(self, image: torch.Tensor, masks: torch.Tensor, others: torch.Tensor,
                      features: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory encoder on [image, mask, others] of every object (the query features are
        not needed): keys and values K x C x h x w."""
        return self.net.encode_memory(image.expand(masks.shape[0], -1, -1, -1), masks, others)

    def segment(self, query: Any, mem_key: torch.Tensor, mem_value: torch.Tensor,
                top_k: int | None, **options: Any) -> torch.Tensor:
        """One read per object (the objects are the batch): logits K x Hp x Wp."""
        return self.net.segment(query, mem_key, mem_value, top_k=top_k, **options)[:, 0]

    def attention(self, ref_key: torch.Tensor, query: Any, diff: torch.Tensor,
                  **options: Any) -> torch.Tensor:
        """Per object: the object's memory key of the interacted frame against the query key."""
        return self.net.attention_transfer(ref_key, query.key, diff, **options)


class StcnAdapter(_Adapter):
    """:class:`model.stcn.STCNNetwork`: one key per frame for all objects, values per object."""

    arch: ClassVar[str] = "stcn"
    #: one key per frame, shared by every object
    shared_key: ClassVar[bool] = True
    ENCODERS = ("key_encoder", "value_encoder")

    def encode_query(self, image: torch.Tensor) -> Any:
        """The key encoder's outputs (key, key_comp value, f16, f8, f4)."""
        return self.net.encode_key(image)

    def encode_memory(self, image: torch.Tensor, masks: torch.Tensor, others: torch.Tensor,
                      features: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frame's query key (1 x CK x h x w, no second key encoding) and the value encoder
        on every object's [image, mask, others] with the cached f16: values K x CV x h x w."""
        feats = features()
        values = self.net.encode_value(image, feats.f16, masks[:, 0].unsqueeze(0),
                                       others[:, 0].unsqueeze(0))
        return feats.key, values[0]

    def segment(self, query: Any, mem_key: torch.Tensor, mem_value: torch.Tensor,
                top_k: int | None, **options: Any) -> torch.Tensor:
        """One affinity for all objects: mem_key 1 x CK x N, mem_value K x CV x N -> logits
        K x Hp x Wp."""
        if options.get("km_sigma") is not None:
            raise ValueError("the kernelized memory read (km_sigma) is not available for stcn")
        options.pop("km_sigma", None)
        return self.net.segment(query, mem_key, mem_value.unsqueeze(0), top_k=top_k,
                                **options)[0]

    def attention(self, ref_key: torch.Tensor, query: Any, diff: torch.Tensor,
                  **options: Any) -> torch.Tensor:
        """One W (the interacted frame's key against the query key) for every difference map:
        diff K x C x Hp x Wp is stacked channel-first ([D+ of all objects, D- of all objects]),
        aligned in one product, and split back to K x C x Hp x Wp."""
        k, c = diff.shape[:2]
        stacked = diff.transpose(0, 1).reshape(1, c * k, *diff.shape[2:])
        aligned = self.net.attention_transfer(ref_key, query.key, stacked, **options)
        return aligned.view(c, k, *diff.shape[2:]).transpose(0, 1)


_ADAPTERS: dict[str, type] = {"mivos": MivosAdapter, "stcn": StcnAdapter}


def adapter_for(net: torch.nn.Module) -> MivosAdapter | StcnAdapter:
    """The adapter of ``net``'s architecture (:func:`arch_of`)."""
    return _ADAPTERS[arch_of(net)](net)
