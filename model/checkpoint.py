"""Weights files: reading, the one loader, its key-mapping / channel-adapting functions, writing.

* :func:`load_state_dict_file` reads a ``.pth`` file on the CPU with ``weights_only=True`` and
  returns a flat ``{name: tensor}`` dict. It accepts plain state dicts (the official MiVOS
  releases), DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes, and dicts that
  wrap the state dict under one of :data:`WRAPPER_KEYS` (resumable training checkpoints, the
  VainF DeepLab file's ``model_state``).
* :func:`load_weights` is the one loader of the project. It loads a file into a network,
  strictly by default: every missing, unexpected or wrongly-shaped tensor is listed in one
  :class:`CheckpointMismatchError`, with a hint when the file is another kind or preset of
  network (:func:`identify_state_dict`). The only tolerated difference is a checkpoint
  without BatchNorm ``num_batches_tracked`` buffers. Files that are *meant* to differ from the
  network are mapped onto it first by the :data:`Adapter` functions given as ``adapt``:

  ==============================  ===========================================================
  :func:`widen_input_conv`        a conv with fewer input channels in the file (stage-0
                                  single-object stems, 3-channel ImageNet / DeepLab stems)
  :func:`drop_keys`               file tensors the network does not hold (the decoder of a
                                  propagation file, for the fusion attention readers)
  :func:`keep_network`            network tensors the file does not hold (the STCN value
                                  encoder's ``fuser`` at ImageNet initialisation)
  :func:`fresh_head`              a final conv with another number of outputs (DeepLab's 21
                                  VOC classes -> S2M's one logit)
  :func:`imagenet_resnet`         a torchvision-format ImageNet ResNet -> a (truncated) ResNet
  :func:`deeplab_s2m`             a VainF DeepLabV3+ ResNet-50 file -> S2M
  :func:`load_propagation_weights` propagation weights, stage-0 stems widened to 5 channels
  ==============================  ===========================================================

  Every problem is a :class:`CheckpointError` (an :class:`util.errors.InputError` naming the
  file): :class:`CheckpointFormatError` for a file that is no checkpoint,
  :class:`CheckpointMismatchError` for one that does not fit.
* :func:`save_weights` writes a plain CPU state dict atomically (:mod:`util.fileio`).

Command line (exit 0 and last line ``OK <kind> <N> parameters`` on success)::

    python -m model.checkpoint --kind propagation [--preset mivos] [--single-object] FILE
    python -m model.checkpoint --kind propagation-stcn [--preset mivos] [--single-object] FILE

This module is the top of ``model/``: it knows every network (:mod:`model.presets`) to name
the kind and preset of a file; no network module imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn

from model.backbone import EXTRA_CHANNEL_INITS, adapt_input_conv
from model.presets import (
    PRESETS,
    PROPAGATION_KINDS,
    build_fusion,
    build_propagation,
    build_s2m,
)
from model.s2m import FINAL_CONV
from util.errors import InputError
from util.fileio import atomic_torch_save

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "network", "model_state", "net")
STRIP_PREFIXES = ("module.", "_orig_mod.")
NUM_BATCHES_TRACKED = "num_batches_tracked"
_MAX_LISTED = 40

ShapeMismatch = tuple[str, tuple[int, ...], tuple[int, ...]]  # key, checkpoint shape, model shape
StateDict = dict[str, torch.Tensor]
#: a key-mapping / channel-adapting function: (the file's tensors, the network's state dict)
#: -> the tensors to load, compared strictly with the network's afterwards
Adapter = Callable[[StateDict, Mapping[str, torch.Tensor]], StateDict]

#: propagation architecture of each propagation checkpoint kind ("propagation" -> "mivos")
ARCH_OF_KIND = {kind: arch for arch, kind in PROPAGATION_KINDS.items()}
#: the evaluation / training option that takes the weights of each kind of network
KIND_FLAGS = {"s2m": "--s2m-model", "fusion": "--fusion-model",
              **{kind: "--prop-model" for kind in ARCH_OF_KIND}}


class CheckpointError(InputError):
    """Base class of the errors raised here (bad input: the message names the file)."""


class CheckpointFormatError(CheckpointError, ValueError):
    """The file is not a readable PyTorch checkpoint, or holds no state dict."""


class CheckpointMismatchError(CheckpointError, RuntimeError):
    """A checkpoint's tensors do not match a network's state dict.

    Attributes:
        path: the checkpoint file.
        missing: keys the network has and the file lacks.
        unexpected: keys the file has and the network lacks.
        shape_mismatch: (key, shape in file, shape in network) for keys present in both.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        missing: Sequence[str],
        unexpected: Sequence[str],
        shape_mismatch: Sequence[ShapeMismatch],
        network: str = "",
        hint: str = "",
    ) -> None:
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatch = list(shape_mismatch)
        self.path = os.fspath(path)
        self.network = network
        self.hint = hint
        super().__init__(self._message(), path)

    def _message(self) -> str:
        counts = ", ".join(f"{n} {what}" for n, what in (
            (len(self.missing), "missing keys"), (len(self.unexpected), "unexpected keys"),
            (len(self.shape_mismatch), "wrong shapes")) if n)
        net = f"the {self.network} network" if self.network else "the network"
        first = f"checkpoint {self.path!r} does not match {net} ({counts})"
        if self.hint:
            first += f"; {self.hint}"
        lines = [first]

        def section(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items[:_MAX_LISTED])
            if len(items) > _MAX_LISTED:
                lines.append(f"    ... and {len(items) - _MAX_LISTED} more")

        section("missing keys", self.missing)
        section("unexpected keys", self.unexpected)
        section(
            "wrong shapes",
            [
                f"{key}: checkpoint {list(ck)} vs network {list(net)}"
                for key, ck, net in self.shape_mismatch
            ],
        )
        return "\n".join(lines)


class LoadResult(NamedTuple):
    """What :func:`load_weights` did not load (all empty after a strict load)."""

    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[ShapeMismatch]


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def extract_state_dict(obj: object, source: str = "<object>") -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint object and strip wrapper prefixes.

    obj: a state dict, or a dict holding one under one of :data:`WRAPPER_KEYS` (nested
    wrapping is followed). ``source`` names the file in error messages.
    """
    current = obj
    for _ in range(4):
        if _is_state_dict(current):
            return _strip_prefixes(dict(current))  # type: ignore[arg-type]
        if not isinstance(current, Mapping):
            break
        inner = next(
            (current[k] for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None
        )
        if inner is None:
            break
        current = inner
    if isinstance(current, Mapping):
        keys = ", ".join(repr(k) for k in list(current)[:10])
        detail = f"a dict with keys [{keys}]" if current else "an empty dict"
    else:
        detail = f"an object of type {type(current).__name__}"
    raise CheckpointFormatError(
        f"{source!r} holds no state dict: found {detail}; expected a dict of tensors, possibly "
        f"wrapped under one of {', '.join(WRAPPER_KEYS)}"
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file on the CPU (``weights_only=True``) and return its state dict.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointFormatError: the file is not a PyTorch checkpoint (corrupt, wrong format,
            unsafe pickle) or contains no state dict.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"checkpoint file not found: {name!r}")
    if os.path.isdir(name):
        raise CheckpointFormatError(f"{name!r} is a directory, not a checkpoint file")
    try:
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file (pickle, zip, EOF, ...)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        first_line = first_line.split(". ")[0]  # torch appends paragraphs of advice
        raise CheckpointFormatError(
            f"{name!r} is not a readable PyTorch checkpoint (truncated, corrupt or another "
            f"format; {type(e).__name__}: {first_line})"
        ) from e
    return extract_state_dict(obj, name)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def compare_state_dicts(
    checkpoint: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]
) -> LoadResult:
    """Keys of ``reference`` missing from ``checkpoint``, extra keys, and shape differences."""
    missing = [k for k in reference if k not in checkpoint]
    unexpected = [k for k in checkpoint if k not in reference]
    mismatch = [
        (k, tuple(checkpoint[k].shape), tuple(reference[k].shape))
        for k in reference
        if k in checkpoint and checkpoint[k].shape != reference[k].shape
    ]
    return LoadResult(missing, unexpected, mismatch)


_REFERENCE_SHAPES: dict[tuple[str, str, bool], dict[str, tuple[int, ...]]] = {}


def reference_shapes() -> dict[tuple[str, str, bool], dict[str, tuple[int, ...]]]:
    """(kind, preset, single_object) -> tensor shapes of that network, for every kind of
    :data:`KIND_FLAGS` (built on the ``meta`` device, so nothing is allocated; cached)."""
    if not _REFERENCE_SHAPES:
        with torch.device("meta"):
            for preset in sorted(PRESETS):
                nets = {("s2m", False): build_s2m(preset), ("fusion", False): build_fusion(preset)}
                for kind, arch in ARCH_OF_KIND.items():
                    for single in (False, True):
                        nets[(kind, single)] = build_propagation(preset, single_object=single,
                                                                 arch=arch)
                for (kind, single), net in nets.items():
                    _REFERENCE_SHAPES[(kind, preset, single)] = {
                        k: tuple(v.shape) for k, v in net.state_dict().items()
                        if k.rsplit(".", 1)[-1] != NUM_BATCHES_TRACKED}
    return _REFERENCE_SHAPES


def identify_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[str, str, bool] | None:
    """(kind, preset, single_object) of the network whose tensors ``state`` holds exactly
    (BatchNorm ``num_batches_tracked`` buffers aside), or None."""
    shapes = {k: tuple(v.shape) for k, v in state.items()
              if k.rsplit(".", 1)[-1] != NUM_BATCHES_TRACKED}
    for key, ref in reference_shapes().items():
        if ref == shapes:
            return key
    return None


def _describe(key: tuple[str, str, bool]) -> str:
    kind, preset, single = key
    return f"{preset} {'single-object ' if single else ''}{kind}"


def _arch_flag(kind: str) -> str:
    """`` --arch stcn`` for a kind that needs it (MiVOS's propagation is the default arch)."""
    arch = ARCH_OF_KIND.get(kind)
    return f" --arch {arch}" if arch not in (None, "mivos") else ""


def mismatch_hint(state: Mapping[str, torch.Tensor], network: nn.Module) -> tuple[str, str]:
    """(what the network is, what to do) for a checkpoint that does not load into it.

    Compares the file's tensors with every kind and preset of network: a file of another preset
    asks for ``--preset``, a file of the other propagation architecture for ``--arch``, a file
    of another kind names the option that takes it.
    """
    try:
        return _hint_for(state, identify_state_dict(network.state_dict()))
    except Exception:  # noqa: BLE001 - a hint must never hide the real error
        logger.debug("no checkpoint hint", exc_info=True)
        return "", ""


def _hint_for(state: Mapping[str, torch.Tensor],
              expected: tuple[str, str, bool] | None) -> tuple[str, str]:
    found = identify_state_dict(state)
    net_desc = _describe(expected) if expected else ""
    if found is None or found == expected:
        return net_desc, ""
    kind, preset, single = found
    what = f"this looks like a {_describe(found)} checkpoint"
    flag = KIND_FLAGS.get(kind, "")
    if expected is None:
        return net_desc, f"{what} (it belongs to {flag}{_arch_flag(kind)} with --preset {preset})"
    extra = f" --preset {preset}" if preset != expected[1] else ""
    if kind == expected[0] and single == expected[2]:
        return net_desc, f"{what}: add --preset {preset}"
    if kind == expected[0] and kind in ARCH_OF_KIND and single:
        extra = f" (with --preset {preset})" if preset != expected[1] else ""
        return net_desc, (f"{what} (propagation stage s0): the multi-object network loads it "
                          f"through train_prop.py{_arch_flag(kind)} --load{extra}, which widens "
                          f"the memory encoder")
    if kind != expected[0] and kind in ARCH_OF_KIND and expected[0] in ARCH_OF_KIND:
        # the other propagation architecture
        return net_desc, f"{what}, not a {expected[0]} one: use --arch {ARCH_OF_KIND[kind]}{extra}"
    return net_desc, f"{what}, not a {expected[0]} one: pass it to {flag}{_arch_flag(kind)}{extra}"


# ============================================================================ the one loader


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                 adapt: Adapter | Sequence[Adapter] = ()) -> LoadResult:
    """Load the weights in ``path`` into ``model`` (modified in place).

    ``adapt``: key-mapping / channel-adapting functions (:data:`Adapter`), applied in order to
    the file's tensors before they are compared with the network's.

    Strict (default): the (adapted) tensors must be exactly the network's, with the same shapes,
    except that missing BatchNorm ``num_batches_tracked`` buffers are taken from the network
    (logged). Otherwise :class:`CheckpointMismatchError` lists every difference, with a hint
    when the file is another kind or preset of network.
    Non-strict: load the tensors whose names and shapes match, log and return the rest.

    Returns:
        LoadResult of what was not loaded (empty lists after a strict load).
    """
    net = unwrap_model(model)
    file_state = load_state_dict_file(path)
    reference = net.state_dict()
    state = file_state
    for fn in [adapt] if callable(adapt) else adapt:
        state = fn(state, reference)
    result = compare_state_dicts(state, reference)
    filled = [k for k in result.missing if k.rsplit(".", 1)[-1] == NUM_BATCHES_TRACKED]
    real_missing = [k for k in result.missing if k not in set(filled)]

    if strict:
        if real_missing or result.unexpected or result.shape_mismatch:
            network, hint = mismatch_hint(file_state, net)
            raise CheckpointMismatchError(
                path, real_missing, result.unexpected, result.shape_mismatch, network, hint
            )
        if filled:
            logger.info(
                "%s has no BatchNorm num_batches_tracked buffers (%d); keeping the network's",
                os.fspath(path), len(filled),
            )
            state = {**state, **{k: reference[k] for k in filled}}
        net.load_state_dict(state, strict=True)
        logger.info("loaded %d tensors from %s", len(state), os.fspath(path))
        return LoadResult([], [], [])

    bad = {k for k, _, _ in result.shape_mismatch}
    usable = {k: v for k, v in state.items() if k in reference and k not in bad}
    net.load_state_dict(usable, strict=False)
    if real_missing or result.unexpected or result.shape_mismatch:
        logger.warning(
            "partial load from %s: %d tensors loaded; %d missing, %d unexpected, %d wrong shape",
            os.fspath(path), len(usable), len(real_missing), len(result.unexpected), len(bad),
        )
    return LoadResult(real_missing, result.unexpected, result.shape_mismatch)


# ============================================================================ adapters


def widen_input_conv(key: str, init: str = "orthogonal") -> Adapter:
    """Channel adapter: when the file's conv weight ``key`` has the network's output channels
    and kernel but fewer input channels, its slices fill the first input channels and the
    others are initialised by :func:`model.backbone.adapt_input_conv` (``init`` =
    ``"orthogonal"`` or ``"zeros"``). Any other shape is left for the strict comparison."""
    if init not in EXTRA_CHANNEL_INITS:
        raise ValueError(f"init must be one of {EXTRA_CHANNEL_INITS}, got {init!r}")

    def adapt(state: StateDict, reference: Mapping[str, torch.Tensor]) -> StateDict:
        have, want = state.get(key), reference.get(key)
        if (have is None or want is None or have.dim() != 4 or want.dim() != 4
                or have.shape[0] != want.shape[0] or have.shape[2:] != want.shape[2:]
                or have.shape[1] >= want.shape[1]):
            return state
        logger.info("widened %s from %d to %d input channels (%s)", key, have.shape[1],
                    want.shape[1], init)
        return {**state, key: adapt_input_conv(have, want.shape[1], init)}

    return adapt


def drop_keys(*prefixes: str) -> Adapter:
    """Key mapping: the file's tensors under these prefixes are not loaded."""

    def adapt(state: StateDict, reference: Mapping[str, torch.Tensor]) -> StateDict:
        kept = {k: v for k, v in state.items() if not k.startswith(prefixes)}
        if len(kept) < len(state):
            logger.info("ignoring %d tensors under %s", len(state) - len(kept),
                        ", ".join(prefixes))
        return kept

    return adapt


def keep_network(*prefixes: str) -> Adapter:
    """Key mapping: the network's tensors under these prefixes that the file lacks keep their
    values."""

    def adapt(state: StateDict, reference: Mapping[str, torch.Tensor]) -> StateDict:
        own = {k: v for k, v in reference.items() if k.startswith(prefixes) and k not in state}
        return {**state, **own}

    return adapt


def fresh_head(conv: str) -> Adapter:
    """Key mapping for a final conv ``conv`` (``<conv>.weight`` / ``.bias``) whose number of
    outputs differs in the file: the network gets a fresh orthogonal weight and a zero bias."""

    def adapt(state: StateDict, reference: Mapping[str, torch.Tensor]) -> StateDict:
        out = dict(state)
        for key in (f"{conv}.weight", f"{conv}.bias"):
            if key in out and key in reference and out[key].shape != reference[key].shape:
                fresh = torch.empty_like(reference[key])
                if key.endswith(".weight"):
                    nn.init.orthogonal_(fresh)
                else:
                    nn.init.zeros_(fresh)
                out[key] = fresh
                logger.info("%s: new %s %s (the file's is %s)", conv, key.rsplit(".", 1)[-1],
                            tuple(fresh.shape), tuple(state[key].shape))
        return out

    return adapt


def imagenet_resnet(rename: Mapping[str, str] | None = None,
                    extra_channel_init: str = "orthogonal") -> Adapter:
    """Key mapping of a local torchvision-format ImageNet ResNet file onto a (truncated)
    :class:`model.backbone.ResNet`, or onto a module that registers its layers under other
    top-level names (``rename``: network name -> file name, e.g. ``{"res2": "layer1"}``):

    * ``fc``, ``avgpool`` and the layers the network does not build are not loaded;
    * a conv bias the file lacks while it holds that conv's weight (torchvision's convs have
      none) is zero;
    * a network ``conv1`` with more input channels (masks) is widened by
      :func:`widen_input_conv` (``extra_channel_init``).
    """
    to_network = {file: net for net, file in (rename or {}).items()}
    widen = widen_input_conv("conv1.weight", extra_channel_init)

    def adapt(state: StateDict, reference: Mapping[str, torch.Tensor]) -> StateDict:
        built = {k.split(".", 1)[0] for k in reference}
        out: StateDict = {}
        for key, value in state.items():
            head, dot, rest = key.partition(".")
            head = to_network.get(head, head)
            if head in ("fc", "avgpool") or (head.startswith("layer") and head not in built):
                continue
            out[f"{head}{dot}{rest}"] = value
        zeroed = 0
        for key, value in reference.items():
            weight = key.removesuffix("bias") + "weight"
            if (key.endswith(".bias") and key not in out and weight in out
                    and reference[weight].dim() == 4):
                out[key] = torch.zeros_like(value)
                zeroed += 1
        logger.info("ImageNet ResNet: %d tensors mapped, %d conv biases zero", len(out) - zeroed,
                    zeroed)
        return widen(out, reference)

    return adapt


def deeplab_s2m() -> list[Adapter]:
    """Key mapping of a VainF ``deeplabv3plus_resnet50`` file (3-channel stem, 21 VOC classes)
    onto S2M: the stem widened to S2M's 6 input channels (orthogonal), a fresh one-output final
    conv (:data:`model.s2m.FINAL_CONV`)."""
    return [widen_input_conv("backbone.conv1.weight"), fresh_head(FINAL_CONV)]


def load_propagation_weights(net: nn.Module, path: str | os.PathLike,
                             extra_channel_init: str = "orthogonal") -> LoadResult:
    """Load propagation weights strictly (either architecture), widening a single-object
    (4-channel) stem of the mask-dependent encoder (``net.MEMORY_STEM_KEY``) to the network's
    5 channels: stage 0 -> stages 1 / 2, the appended "others" slice initialised by
    ``extra_channel_init``."""
    stem = unwrap_model(net).MEMORY_STEM_KEY
    return load_weights(net, path, adapt=widen_input_conv(stem, extra_channel_init))


# ============================================================================ writing


def save_weights(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike
) -> None:
    """Write a plain CPU state dict to ``path`` atomically (:func:`util.fileio.atomic_torch_save`).

    A module is unwrapped from DDP / torch.compile first, so the saved keys carry no prefix.
    """
    if isinstance(model_or_state_dict, nn.Module):
        state = unwrap_model(model_or_state_dict).state_dict()
    else:
        state = model_or_state_dict
    plain = {k: v.detach().cpu() for k, v in state.items()}
    atomic_torch_save(path, plain)
    logger.info("saved %d tensors to %s", len(plain), os.fspath(path))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (learnable) parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ============================================================================ command line


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: strictly load a checkpoint file into one of the networks; 0 = success."""
    parser = argparse.ArgumentParser(
        prog="python -m model.checkpoint",
        description=(
            "Check that a weights file loads strictly into a MiVOS network. On success the last "
            "line printed is 'OK <kind> <N> parameters' (N = learnable parameters) and the exit "
            "status is 0. Missing, unexpected or wrongly-shaped tensors are listed on stderr "
            "(exit 1); a file that is not a checkpoint gives exit 2."
        ),
    )
    parser.add_argument(
        "--kind", required=True, choices=("s2m", *PROPAGATION_KINDS.values(), "fusion"),
        help="which network the file is for (propagation: MiVOS's STM-style network; "
             "propagation-stcn: the STCN network)",
    )
    parser.add_argument(
        "--preset", default="mivos", choices=sorted(PRESETS),
        help="architecture preset (default: mivos, the paper's networks)",
    )
    parser.add_argument(
        "--single-object", action="store_true",
        help="propagation kinds only: 4-channel memory / value encoder (stage-0 single-object "
             "weights)",
    )
    parser.add_argument("file", help="checkpoint file (.pth)")
    args = parser.parse_args(argv)
    if args.single_object and args.kind not in ARCH_OF_KIND:
        parser.error("--single-object only applies to the propagation kinds")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.kind == "s2m":
        net = build_s2m(args.preset)
    elif args.kind in ARCH_OF_KIND:
        net = build_propagation(args.preset, single_object=args.single_object,
                                arch=ARCH_OF_KIND[args.kind])
    else:
        net = build_fusion(args.preset)
    try:
        load_weights(net, args.file, strict=True)
    except CheckpointMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (CheckpointFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"OK {args.kind} {count_parameters(net)} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
