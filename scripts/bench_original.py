"""This project next to the original MiVOS code: same weights and inputs; outputs and speed.

The original implementation (github.com/hkchengrex/MiVOS, branch ``main``) is **not** part of
this repository: supply a clone of it (or a copy holding at least ``inference_core.py``,
``model/`` and ``util/tensor_util.py``) with ``--original``. Its modules are imported into this
process next to ours; both code bases name their top-level packages ``model`` and ``util``, so
the original is imported while our entries are moved out of ``sys.modules`` (and our checkout
out of ``sys.path``), then re-registered under the private prefix ``_mivos_original.`` and ours
restored. Every imported module of the original is checked to come from the given folder.

What the original needs that this machine may lack, and how it is provided (the original's
files are never modified):

* ``torchvision`` (``models.resnet50`` for the query encoder, ``models.utils`` for S2M's
  backbone file): when it cannot be imported, a stand-in package is registered for the duration
  of the import, whose ``resnet50`` / ``resnet18`` are this project's :class:`model.backbone.ResNet`
  (torchvision's parameter names) with the library's ``nn.MaxPool2d`` in the stem, as
  torchvision has it, and whose ``load_state_dict_from_url`` refuses to download.
  When it can be imported, the original uses it, with ``pretrained`` switched off.
* ImageNet downloads while the networks are built (``pretrained=True`` in the memory encoder):
  ``torch.utils.model_zoo.load_url`` returns a freshly initialised ResNet-50 state dict instead.
  Every weight is overwritten right after.
* A GPU: nothing; the original core runs with ``device='cpu'`` (mem_profile 0).

Both sets of networks get the same weights: this project's three networks (``mivos`` preset)
are built with a fixed seed and their state dicts loaded strictly into the original's networks
(any missing, unexpected or wrongly shaped tensor stops the run with the list), then checked
tensor by tensor, and the key order and shapes against the official manifests
(``tests/data/checkpoints/*.tsv``).

**Agreement** (fp32; max / mean abs difference of probabilities, fraction of identical labels):
query encoding, memory encoding, read + decode of one frame from a memory of several frames
(top-k 50), the fusion attention, FusionNet, the whole fusion step of a frame, S2M, and whole
interactions (see below) compared frame by frame. The inputs are frames and label maps of a
synthetic video (:mod:`dataset.synthetic`); the original's core gets the video as one
contiguous normalised ``1 x T x 3 x H x W`` tensor (as its DAVIS loader makes it), ours the
uint8 frames (its API), from which both compute the same values.

**Speed** (``time.perf_counter``, ``torch.set_num_threads(--threads)``, ``torch.inference_mode``;
a warm-up round, then the median of ``--repeats`` rounds; original and ours interleaved within
each round, their order alternating between rounds), at ``--height`` x ``--width``: query
encoding, memorize (one object), the memory read of one object from ``--memory-frames`` frames
(top-k 50; each side's memory in the layout its inference core keeps), read + decode for 1, 2
and 4 objects, the fusion step of one frame for 1 and 2 objects, the S2M forward. End to end,
for each size and clip length of ``--e2e-sizes`` (default 240 x 432 with 8 frames, 480 x 854
with 6) and 1 and 2 objects: the original ``InferenceCore.interact`` against ours
(``inference.inference_core``) with the original's defaults (top-k 50, a memory frame every
5, the previous frame as temporary memory, difference-aware fusion): interaction 1 on the first
frame (propagated forward through the clip), interaction 2 on the last frame (propagated
backward with fusion). The outputs of these
runs are the whole-interaction agreement figures. Ratios are original / ours: >= 1.0 means ours
is at least as fast.

Command (about 12 minutes on 2 idle cores; ``--quick``: about 1 minute)::

    git clone https://github.com/hkchengrex/MiVOS /tmp/MiVOS
    python scripts/bench_original.py --original /tmp/MiVOS \\
        --json /tmp/bench_original/bench_original.json \\
        --markdown /tmp/bench_original/BENCH_ORIGINAL.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dataset.synthetic import SequenceSpec, generate_sequence  # noqa: E402
from inference.inference_core import InferenceConfig, InferenceCore  # noqa: E402
from inference.memory_bank import MemoryBank  # noqa: E402
from model.aggregate import aggregate  # noqa: E402
from model.backbone import ResNet  # noqa: E402
from model.presets import build_fusion, build_propagation, build_s2m  # noqa: E402
from model.propagation import others_masks  # noqa: E402
from util import HUGE_PAGES_ENV, transparent_huge_pages_mode  # noqa: E402
from util.device import cpu_model  # noqa: E402
from util.tensor_util import normalize_image, pad_divide_by  # noqa: E402

#: where the original's modules are registered in ``sys.modules`` once imported
PREFIX = "_mivos_original."
#: top-level names of the original that clash with (or could shadow) ours
CLASHING_ROOTS = ("model", "util", "inference_core")
#: the original's modules this script uses (attribute name -> module name in the original)
ORIGINAL_MODULES = {
    "prop_net": "model.propagation.prop_net",
    "fusion_net": "model.fusion_net",
    "aggregate": "model.aggregate",
    "s2m_network": "model.s2m.s2m_network",
    "core": "inference_core",
}
#: the package the original imports; this script never imports it (a stand-in takes its place
#: when it is not installed, and when it is, only the original's own modules import it)
TV = "torchvision"
MANIFESTS = ROOT / "tests" / "data" / "checkpoints"
#: (seconds since start, what, 1-minute load average) sampled after each timed round
LOAD_SAMPLES: list[tuple[float, str, float | None]] = []
_T0 = time.perf_counter()
TOP_K = 50
MEM_FREQ = 5

DEFAULTS = {
    "height": 480, "width": 854, "memory_frames": 20, "read_objects": (1, 2, 4),
    "fusion_objects": (1, 2), "e2e_sizes": ((240, 432, 8), (480, 854, 6)), "e2e_objects": (1, 2),
    "e2e_frames": 8, "warmup": 1, "repeats": 3, "e2e_repeats": 3,
    "agree_height": 240, "agree_width": 432, "agree_frames": 8,
}
QUICK = {
    "height": 240, "width": 432, "memory_frames": 20, "read_objects": (1, 2, 4),
    "fusion_objects": (1, 2), "e2e_sizes": ((240, 432, 5),), "e2e_objects": (1, 2),
    "e2e_frames": 5, "warmup": 1, "repeats": 2, "e2e_repeats": 1,
    "agree_height": 120, "agree_width": 216, "agree_frames": 6,
}


# ============================================================================ loading the original


def _clashes(name: str) -> bool:
    return name.split(".")[0] in CLASHING_ROOTS


def _fresh_resnet_state(arch: str) -> dict[str, torch.Tensor]:
    """A freshly initialised RGB ResNet state dict with torchvision's names (no download)."""
    return ResNet(arch, in_channels=3, last_layer=4).state_dict()


def _refuse_download(url: str, *args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(f"bench_original: no download of {url} (weights are set by the script)")


def _standin_resnet(arch: str) -> Callable[..., torch.nn.Module]:
    def build(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> torch.nn.Module:
        if kwargs:
            raise TypeError(f"the {TV} stand-in's {arch} takes no {sorted(kwargs)}")
        net = ResNet(arch, in_channels=3, last_layer=4)  # conv1, bn1, relu, maxpool, layer1-4
        # torchvision's stem pools with the library operator; this project's faster equivalent
        # (model.backbone.StemMaxPool, same values) stays on our side of the comparison
        net.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        return net

    build.__name__ = arch
    return build


def _standin_modules() -> dict[str, types.ModuleType]:
    """A minimal package standing in for the parts of torchvision the original imports."""
    root = types.ModuleType(TV)
    models = types.ModuleType(f"{TV}.models")
    utils = types.ModuleType(f"{TV}.models.utils")
    root.__path__, models.__path__ = [], []  # packages, so that submodule imports resolve
    for arch in ("resnet50", "resnet18"):
        setattr(models, arch, _standin_resnet(arch))
    utils.load_state_dict_from_url = _refuse_download
    models.utils = utils
    root.models = models
    root.__doc__ = "bench_original.py stand-in (this project's ResNet, no downloads)"
    return {TV: root, f"{TV}.models": models, f"{TV}.models.utils": utils}


class _NoPretrained:
    """A torchvision ``models`` namespace whose constructors never load pretrained weights."""

    def __init__(self, models: Any) -> None:
        self._models = models

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._models, name)
        if not callable(fn):
            return fn

        def build(*args: Any, pretrained: bool = False, **kwargs: Any) -> Any:
            return fn(*args, pretrained=False, **kwargs)

        return build


def _is_under(path: str | None, folder: Path) -> bool:
    if path is None:
        return False
    try:
        Path(path).resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def load_original(folder: Path) -> tuple[types.SimpleNamespace, dict]:
    """Import the original's modules from ``folder`` without disturbing ours.

    Returns a namespace with the modules of :data:`ORIGINAL_MODULES` and a report (files with
    their SHA-256, the torchvision used, the git commit of the folder if any).
    """
    folder = folder.resolve()
    missing = [m for m in ORIGINAL_MODULES.values()
               if not (folder / (m.replace(".", "/") + ".py")).is_file()]
    if missing:
        raise SystemExit(f"--original {folder}: not a MiVOS checkout (missing {missing})")
    have_tv = importlib.util.find_spec(TV) is not None
    ours = {n: m for n, m in sys.modules.items() if _clashes(n)}
    saved_path = list(sys.path)
    added: dict[str, types.ModuleType] = {} if have_tv else _standin_modules()
    for name in ours:
        del sys.modules[name]
    # our checkout (also as "" / "." when it is the current directory) must not be searched
    sys.path[:] = [str(folder)] + [p for p in saved_path if Path(p or ".").resolve() != ROOT]
    sys.modules.update(added)
    importlib.invalidate_caches()
    loaded: dict[str, types.ModuleType] = {}
    try:
        for attr, name in ORIGINAL_MODULES.items():
            try:
                loaded[attr] = importlib.import_module(name)
            except ModuleNotFoundError as err:
                # recent torchvision releases have no models.utils, which S2M's backbone file
                # imports: give it one (for this import only) and import again
                if not have_tv or err.name != f"{TV}.models.utils":
                    raise
                shim = types.ModuleType(err.name)
                shim.load_state_dict_from_url = _refuse_download
                sys.modules[shim.__name__] = added[shim.__name__] = shim
                loaded[attr] = importlib.import_module(name)
    finally:
        theirs = {n: m for n, m in sys.modules.items() if _clashes(n)}
        for name, module in theirs.items():
            del sys.modules[name]
            sys.modules[PREFIX + name] = module
        for name in added:
            sys.modules.pop(name, None)
        sys.modules.update(ours)
        sys.path[:] = saved_path
        importlib.invalidate_caches()
    strays = sorted(n for n, m in theirs.items()
                    if getattr(m, "__file__", None) and not _is_under(m.__file__, folder))
    if strays:
        raise SystemExit(f"modules of the original were imported from outside {folder}: {strays}")
    if have_tv:
        for name in ("model.propagation.modules", "model.propagation.prop_net"):
            module = sys.modules.get(PREFIX + name)
            if module is not None and hasattr(module, "models"):
                module.models = _NoPretrained(module.models)
    files = {}
    for _name, module in sorted(theirs.items()):
        path = getattr(module, "__file__", None)
        if path:
            rel = Path(path).resolve().relative_to(folder).as_posix()
            files[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    report = {"folder": str(folder), "files_sha256": files, "git_commit": _git_commit(folder),
              TV: "installed (pretrained off)" if have_tv else
              "stand-in (this project's ResNet; downloads refused)"}
    return types.SimpleNamespace(**loaded), report


@contextlib.contextmanager
def no_imagenet_download() -> Iterator[None]:
    """While the original's networks are built, ``pretrained=True`` gets fresh weights."""
    import torch.utils.model_zoo as model_zoo

    def fake_load(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if "resnet50" in url:
            return _fresh_resnet_state("resnet50")
        if "resnet18" in url:
            return _fresh_resnet_state("resnet18")
        return _refuse_download(url)

    saved = model_zoo.load_url, torch.hub.load_state_dict_from_url
    model_zoo.load_url = torch.hub.load_state_dict_from_url = fake_load
    try:
        yield
    finally:
        model_zoo.load_url, torch.hub.load_state_dict_from_url = saved


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# ============================================================================ networks and weights


def _manifest(kind: str) -> list[tuple[str, tuple[int, ...]]] | None:
    path = MANIFESTS / f"{kind}.tsv"
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split(",")) if shape else ()))
    return rows


def copy_weights(kind: str, ours: torch.nn.Module, theirs: torch.nn.Module) -> dict:
    """Load our state dict strictly into the original's network; fail loudly on any mismatch."""
    src = ours.state_dict()
    dst = theirs.state_dict()
    missing = [k for k in dst if k not in src]
    unexpected = [k for k in src if k not in dst]
    shapes = [f"{k}: ours {list(src[k].shape)} vs original {list(dst[k].shape)}"
              for k in src if k in dst and src[k].shape != dst[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{kind}: our weights do not fit the original's network"]
        for title, items in (("missing in ours", missing), ("unexpected (only ours)", unexpected),
                             ("wrong shapes", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items]
        raise SystemExit("\n".join(lines))
    theirs.load_state_dict(src, strict=True)
    loaded = theirs.state_dict()
    differing = [k for k in src if not torch.equal(src[k], loaded[k])]
    if differing:
        raise SystemExit(f"{kind}: tensors differ after loading: {differing[:10]}")
    report = {"tensors": len(src), "same_order": list(src) == list(dst),
              "parameters": sum(p.numel() for p in theirs.parameters())}
    manifest = _manifest(kind)
    if manifest is not None:
        mine = [(k, tuple(v.shape)) for k, v in src.items()]
        report["manifest"] = ("match" if mine == manifest else
                              f"DIFFERS ({len(manifest)} manifest rows, {len(mine)} tensors)")
    return report


def build_networks(orig: types.SimpleNamespace, seed: int) -> tuple[dict, dict, dict]:
    """(ours, theirs, weights report): propagation, fusion and S2M of both, same weights."""
    torch.manual_seed(seed)
    ours = {"propagation": build_propagation("mivos").eval(),
            "fusion": build_fusion("mivos").eval(),
            "s2m": build_s2m("mivos").eval()}
    with no_imagenet_download():
        theirs = {
            "propagation": orig.prop_net.PropagationNetwork(top_k=TOP_K).eval(),
            "fusion": orig.fusion_net.FusionNet().eval(),
            "s2m": orig.s2m_network.deeplabv3plus_resnet50(
                num_classes=1, output_stride=16, pretrained_backbone=False).eval(),
        }
    report = {kind: copy_weights(kind, ours[kind], theirs[kind]) for kind in ours}
    return ours, theirs, report


# ============================================================================ inputs


def synthetic(frames: int, height: int, width: int, objects: int, seed: int = 0):
    """(T x H x W x 3 uint8 frames, T x H x W int64 labels) of a synthetic video."""
    seq = generate_sequence(SequenceSpec("bench-original", frames, height, width, objects, 0),
                            [seed, objects, height, width])
    return seq.images, seq.masks.astype(np.int64)


def to_images(frames: np.ndarray) -> torch.Tensor:
    """T x H x W x 3 uint8 -> T x 3 x H x W normalised float, the values both cores compute.

    Contiguous (NCHW), as the original's DAVIS loader stacks its frames. The layout matters:
    a channels-last view at a storage offset (what slicing a permuted, non-contiguous video
    tensor gives) can take another convolution path, which rounds differently (measured: up to
    4e-5 on the query keys at 240 x 432), so the original would not see "the same input"."""
    return normalize_image(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255).contiguous()


def one_hot(labels: np.ndarray, k: int) -> torch.Tensor:
    """H x W labels 0..k -> (k+1) x H x W float."""
    return F.one_hot(torch.from_numpy(labels), k + 1).permute(2, 0, 1).float()


# ============================================================================ comparison helpers


def diff_stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    d = (a - b).abs()
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-30)
    return {"max_abs": d.max().item(), "mean_abs": d.mean().item(),
            "max_rel": d.max().item() / scale, "bitwise_equal": bool(torch.equal(a, b))}


def prob_stats(a: torch.Tensor, b: torch.Tensor, channel_dim: int | None = 0) -> dict:
    """Probabilities: differences, label agreement (argmax over ``channel_dim``, or p > 0.5),
    and how informative the comparison is (fraction of undecided values, foreground share)."""
    out = diff_stats(a, b)
    if channel_dim is None:
        la, lb = a > 0.5, b > 0.5
    else:
        la, lb = a.argmax(channel_dim), b.argmax(channel_dim)
    out["labels_equal"] = (la == lb).double().mean().item()
    out["labels_differing"] = int((la != lb).sum().item())
    out["labels_total"] = la.numel()
    # how close to a tie the differing labels are: the largest decision margin there (top-1
    # minus top-2 probability, or |p - 0.5|) in either output
    where = la != lb
    margin = None
    if where.any():
        for x in (a, b):
            if channel_dim is None:
                m = (x.double() - 0.5).abs()
            else:
                top2 = x.double().movedim(channel_dim, -1).topk(2, dim=-1).values
                m = top2[..., 0] - top2[..., 1]
            margin = max(margin or 0.0, m[where].max().item())
    out["max_margin_at_differing"] = margin
    p = b if channel_dim is None else b.movedim(channel_dim, 0)[1:]
    out["frac_between_0.05_0.95"] = ((p > 0.05) & (p < 0.95)).double().mean().item()
    out["foreground_share"] = (lb > 0).double().mean().item() if channel_dim is not None \
        else lb.double().mean().item()
    return out


def _fmt_e(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}"


def _load_range(samples: list) -> str:
    loads = [x[2] for x in samples if x[2] is not None]
    return f"{min(loads):.2f} to {max(loads):.2f}" if loads else "n/a"


def _fmt_margin(x: float | None) -> str:
    return "-" if x is None else _fmt_e(x)


# ============================================================================ stage functions


def orig_fuse_step(orig_core_cls, theirs: dict, images: torch.Tensor, k: int):
    """A callable running the original ``InferenceCore.fuse_one_frame`` on frame 1 of a 3-frame
    video (t_c = 0, t_r = 2) with the given inputs."""
    core = orig_core_cls(theirs["propagation"], theirs["fusion"], images, k, mem_profile=0,
                         mem_freq=MEM_FREQ, device="cpu")

    def run(diff_bg: torch.Tensor, prev: torch.Tensor, curr: torch.Tensor, ref_key5: torch.Tensor,
            qk: torch.Tensor) -> torch.Tensor:
        # diff_bg: (K+1) x 1 x H x W difference at t_r (background included, as the core keeps it)
        core.pos_mask_diff = diff_bg.clamp(0, 1)
        core.neg_mask_diff = (-diff_bg).clamp(0, 1)
        return core.fuse_one_frame(0, 2, 1, prev, curr, ref_key5, qk)

    return run


def ours_fuse_step(ours: dict, image: torch.Tensor, k: int, t_c: int = 0, t_r: int = 2,
                   t: int = 1):
    """Our fusion step of one frame, as ``InferenceCore._fuse`` composes it from the networks."""
    n_c = abs(t_c - t) / abs(t_c - t_r)
    n_r = abs(t_r - t) / abs(t_c - t_r)
    dist = torch.tensor([[n_c, n_r]]).expand(k, -1)

    def run(diff_bg: torch.Tensor, prev: torch.Tensor, curr: torch.Tensor, ref_key: torch.Tensor,
            qk: torch.Tensor) -> torch.Tensor:
        delta = diff_bg[1:, 0]  # K x H x W
        diff = torch.stack([delta.clamp(0, 1), (-delta).clamp(0, 1)], dim=1)
        attn = ours["propagation"].attention_transfer(ref_key, qk, diff)
        logits = ours["fusion"](image.expand(k, -1, -1, -1), prev[1:], curr[1:], attn, dist)
        return aggregate(torch.sigmoid(logits)[:, 0], dim=0).unsqueeze(1)

    return run


def ours_bank(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Our memory in the layout our core reads it (frames added one by one to a bank).
    key K x CK x T x h x w, value K x CV x T x h x w."""
    bank = MemoryBank()
    for t in range(key.shape[2]):
        bank.add_permanent(key[:, :, t], value[:, :, t], t)
    return bank.read_tensors()


# ============================================================================ agreement


def agreement(ours: dict, theirs: dict, orig, s: dict, log) -> list[dict]:
    """Module-level agreement on frames and labels of a synthetic video (fp32)."""
    h, w, n = s["agree_height"], s["agree_width"], s["agree_frames"]
    frames, labels = synthetic(n, h, w, 2, seed=1)
    images, _ = pad_divide_by(to_images(frames), 16)  # T x 3 x Hp x Wp
    hp, wp = images.shape[-2:]
    lab = torch.from_numpy(labels)
    lab, _ = pad_divide_by(lab, 16)  # padding labelled background
    rows: list[dict] = []

    def add(check: str, k: int | None, stats: dict, what: str) -> None:
        rows.append({"check": check, "objects": k, "height": h, "width": w,
                     "padded": [hp, wp], "what": what, **stats})
        log(f"  agree {check:<22} K={k}: max|d| {_fmt_e(stats['max_abs'])}"
            + (f", labels equal {stats['labels_equal']:.6f}" if "labels_equal" in stats else ""))

    op, tp = ours["propagation"], theirs["propagation"]
    img = lambda t: images[t:t + 1]  # noqa: E731
    q_t = n - 1  # the query frame

    # query encoding
    theirs_q = tp.get_query_values(img(q_t))
    ours_q = op.encode_query(img(q_t))
    for name, a, b in zip(("f16", "f8", "f4", "key", "value"), theirs_q,
                          (ours_q.f16, ours_q.f8, ours_q.f4, ours_q.key, ours_q.value),
                          strict=True):
        add(f"query_encoding.{name}", None, diff_stats(a, b), "rgb_encoder + kv_q_f16 of one frame")

    for k in (1, 2):
        lab_k = lab.clamp(max=k) * (lab <= k)  # objects 1..k, the others background
        masks = [F.one_hot(lab_k[t], k + 1).permute(2, 0, 1).float()[1:].unsqueeze(1)
                 for t in range(n)]  # K x 1 x Hp x Wp per frame
        # memory encoding of frame 0
        tk, tv = tp.memorize(img(0), masks[0])
        ok, ov = op.encode_memory(img(0).expand(k, -1, -1, -1), masks[0], others_masks(masks[0]))
        add("memory_encoding.key", k, diff_stats(tk[:, :, 0], ok), "memorize one frame, K objects")
        add("memory_encoding.value", k, diff_stats(tv[:, :, 0], ov), "")
        # read + decode of the last frame from a memory of frames 0 .. n-2 (ours encoded; the
        # same memory tensors go to both)
        enc = [op.encode_memory(img(t).expand(k, -1, -1, -1), masks[t], others_masks(masks[t]))
               for t in range(n - 1)]
        mem_k = torch.stack([e[0] for e in enc], dim=2)  # K x CK x T x h x w
        mem_v = torch.stack([e[1] for e in enc], dim=2)
        theirs_p = tp.segment_with_query(mem_k, mem_v, *theirs_q)  # K x 1 x Hp x Wp sigmoid
        ours_p = torch.sigmoid(op.segment(ours_q, *ours_bank(mem_k, mem_v), top_k=TOP_K))
        add("read_decode.sigmoid", k, prob_stats(theirs_p, ours_p, None),
            f"top-k {TOP_K} read of {n - 1} memory frames + decoder, per-object sigmoid")
        theirs_agg = orig.aggregate.aggregate_wbg(theirs_p, keep_bg=True)
        ours_agg = aggregate(ours_p[:, 0], dim=0).unsqueeze(1)
        add("read_decode.aggregated", k, prob_stats(theirs_agg, ours_agg),
            "soft aggregation with background (K+1 channels)")

        # the fusion step of frame 1 between t_c = 0 and t_r = 2 (query frame 1)
        diff_bg = (F.one_hot(lab_k[2], k + 1).permute(2, 0, 1).float()
                   - F.one_hot(lab_k[1], k + 1).permute(2, 0, 1).float()).unsqueeze(1)
        ref_k, _ = op.encode_memory(img(2).expand(k, -1, -1, -1), masks[2],
                                    others_masks(masks[2]))
        qk1 = op.encode_query(img(1)).key
        prev = ours_agg  # previous-round probabilities (any valid (K+1)-channel map)
        curr = aggregate(torch.sigmoid(op.segment(op.encode_query(img(1)), mem_k[:, :, :1],
                                                  mem_v[:, :, :1], top_k=TOP_K))[:, 0],
                         dim=0).unsqueeze(1)
        pos, neg = diff_bg.clamp(0, 1), (-diff_bg).clamp(0, 1)
        theirs_attn = torch.cat([tp.get_attention(ref_k[i:i + 1].unsqueeze(2), pos[i + 1:i + 2],
                                                  neg[i + 1:i + 2], qk1) for i in range(k)])
        ours_attn = op.attention_transfer(
            ref_k, qk1, torch.stack([diff_bg[1:, 0].clamp(0, 1), (-diff_bg[1:, 0]).clamp(0, 1)],
                                    dim=1))
        add("fusion_attention", k, diff_stats(theirs_attn, ours_attn),
            "[A+, A-] of the interacted frame's differences aligned to the target frame")
        dist = torch.tensor([[0.5, 0.5]])
        theirs_f = torch.cat([torch.sigmoid(theirs["fusion"](img(1), prev[i + 1:i + 2],
                                                             curr[i + 1:i + 2],
                                                             theirs_attn[i:i + 1], dist))
                              for i in range(k)])
        ours_f = torch.sigmoid(ours["fusion"](img(1).expand(k, -1, -1, -1), prev[1:], curr[1:],
                                              theirs_attn, dist.expand(k, -1)))
        add("fusion_net.sigmoid", k, prob_stats(theirs_f, ours_f, None),
            "FusionNet on identical inputs, sigmoid")
        step_t = orig_fuse_step(orig.core.InferenceCore, theirs, images[None, :3], k)
        step_o = ours_fuse_step(ours, img(1), k)
        add("fusion_step", k, prob_stats(step_t(diff_bg, prev, curr, ref_k.unsqueeze(2), qk1),
                                          step_o(diff_bg, prev, curr, ref_k, qk1)),
            "original InferenceCore.fuse_one_frame vs ours (attention, FusionNet, aggregation)")

    # S2M on [image, mask, positive, negative]
    m = (lab[0] == 1).float()[None, None]
    pos = torch.zeros_like(m)
    neg = torch.zeros_like(m)
    ys, xs = torch.nonzero(m[0, 0], as_tuple=True)
    if len(ys):
        cy = int(ys.float().mean())
        pos[..., max(cy - 1, 0):cy + 2, :] = 1
        pos = pos * m  # a horizontal stroke through the object
    neg[..., :, max(wp // 8 - 1, 0):wp // 8 + 2] = 1
    neg = neg * (1 - m)  # a vertical stroke in the background
    x = torch.cat([img(0), (lab[1] == 1).float()[None, None], pos, neg], dim=1)
    add("s2m.sigmoid", 1, prob_stats(torch.sigmoid(theirs["s2m"](x)),
                                     torch.sigmoid(ours["s2m"](x)), None),
        "S2M forward of [image, mask, positive, negative], sigmoid")
    return rows


# ============================================================================ timing


def timed_rounds(cases: dict[str, dict[str, Callable[[], Any]]], warmup: int, repeats: int,
                 log) -> dict[str, dict[str, list[float]]]:
    """Run every case's original and ours once per round, interleaved (order alternating by
    round); returns the ms of the timed rounds per case and implementation."""
    samples = {name: {"original": [], "ours": []} for name in cases}
    for r in range(warmup + repeats):
        t0 = time.perf_counter()
        for name, fns in cases.items():
            order = ("original", "ours") if r % 2 == 0 else ("ours", "original")
            for impl in order:
                start = time.perf_counter()
                fns[impl]()
                ms = (time.perf_counter() - start) * 1e3
                if r >= warmup:
                    samples[name][impl].append(ms)
        kind = "warm-up" if r < warmup else "timed"
        log(f"    round {r + 1}/{warmup + repeats} ({kind}): {time.perf_counter() - t0:.1f} s, "
            f"load {note_load(f'stages round {r + 1}')}")
    return samples


def summarise(samples: list[float]) -> dict:
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "samples_ms": [round(x, 3) for x in samples]}


def stage_timings(ours: dict, theirs: dict, orig, s: dict, log) -> list[dict]:
    h, w, t_mem = s["height"], s["width"], s["memory_frames"]
    gen = torch.Generator().manual_seed(2)
    image, _ = pad_divide_by(torch.randn(1, 3, h, w, generator=gen), 16)
    hp, wp = image.shape[-2:]
    gh, gw = hp // 16, wp // 16
    op, tp = ours["propagation"], theirs["propagation"]
    kmax = max(max(s["read_objects"]), max(s["fusion_objects"]))
    ck, cv = op.key_dim, op.value_dim
    mask = (torch.rand(1, 1, hp, wp, generator=gen) > 0.5).float()
    mem_k = torch.randn(kmax, ck, t_mem, gh, gw, generator=gen)
    mem_v = torch.randn(kmax, cv, t_mem, gh, gw, generator=gen)
    theirs_q = tp.get_query_values(image)
    ours_q = op.encode_query(image)
    banks = {k: ours_bank(mem_k[:k].contiguous(), mem_v[:k].contiguous())
             for k in sorted(set(s["read_objects"]) | {1})}
    s2m_in = torch.cat([image, mask, (torch.rand(1, 2, hp, wp, generator=gen) > 0.99).float()],
                       dim=1)
    cases: dict[str, dict[str, Callable[[], Any]]] = {
        "query_encoding": {"original": lambda: tp.get_query_values(image),
                           "ours": lambda: op.encode_query(image)},
        "memorize/1": {"original": lambda: tp.memorize(image, mask),
                       "ours": lambda: op.encode_memory(image, mask, others_masks(mask))},
        f"memory_read/T{t_mem}": {
            "original": lambda: tp.memory(mem_k[:1], mem_v[:1], theirs_q[3]),
            "ours": lambda: op.read(ours_q.key, *banks[1], top_k=TOP_K)},
    }
    for k in s["read_objects"]:
        cases[f"read_decode/{k}"] = {
            "original": lambda k=k: tp.segment_with_query(mem_k[:k], mem_v[:k], *theirs_q),
            "ours": lambda k=k: torch.sigmoid(op.segment(ours_q, *banks[k], top_k=TOP_K))}
    images3 = image.expand(3, -1, -1, -1)[None]
    for k in s["fusion_objects"]:
        diff_bg = torch.rand(k + 1, 1, hp, wp, generator=gen) - 0.5
        prev = torch.softmax(torch.randn(k + 1, 1, hp, wp, generator=gen), dim=0)
        curr = torch.softmax(torch.randn(k + 1, 1, hp, wp, generator=gen), dim=0)
        ref = mem_k[:k, :, 0].contiguous()
        step_t = orig_fuse_step(orig.core.InferenceCore, theirs, images3, k)
        step_o = ours_fuse_step(ours, image, k)
        cases[f"fusion_step/{k}"] = {
            "original": lambda a=(diff_bg, prev, curr, ref.unsqueeze(2), theirs_q[3]), f=step_t:
                f(*a),
            "ours": lambda a=(diff_bg, prev, curr, ref, ours_q.key), f=step_o: f(*a)}
    cases["s2m"] = {"original": lambda: theirs["s2m"](s2m_in), "ours": lambda: ours["s2m"](s2m_in)}
    what = {
        "query_encoding": "query encoder + key/value projections of one frame",
        "memorize/1": "memory encoder + key/value projections, one object",
        f"memory_read/T{t_mem}": f"top-k {TOP_K} read of one object from {t_mem} memory frames",
        "s2m": "S2M forward, one object",
    }
    log(f"  stages at {h}x{w} (padded {hp}x{wp}): {len(cases)} cases x "
        f"({s['warmup']} warm-up + {s['repeats']} timed) rounds")
    res = timed_rounds(cases, s["warmup"], s["repeats"], log)
    rows = []
    for name in cases:
        stage, _, objects = name.partition("/")
        o, t = summarise(res[name]["ours"]), summarise(res[name]["original"])
        rows.append({
            "stage": stage, "case": name,
            "objects": int(objects) if objects.isdigit() else 1,
            "what": what.get(name) or (
                f"top-k {TOP_K} read of {t_mem} memory frames + decoder + sigmoid"
                if stage == "read_decode" else
                "fusion step of one frame: attention, FusionNet, sigmoid, aggregation"),
            "height": h, "width": w, "original_ms": t["median_ms"], "ours_ms": o["median_ms"],
            "ratio": t["median_ms"] / o["median_ms"], "original": t, "ours": o})
    return rows


# ============================================================================ end to end


def _e2e_pair(ours: dict, theirs: dict, orig, frames: np.ndarray, labels: np.ndarray, k: int):
    """Callables running both interactions with the original core and with ours; each returns
    (ms of interaction 1, ms of interaction 2, outputs after 1, outputs after 2)."""
    n = len(frames)
    images = to_images(frames)[None]  # 1 x T x 3 x H x W
    first, last = labels[0], labels[n - 1]

    def original():
        core = orig.core.InferenceCore(theirs["propagation"], theirs["fusion"], images, k,
                                       mem_profile=0, mem_freq=MEM_FREQ, device="cpu")
        outs, times = [], []
        for idx, lab in ((0, first), (n - 1, last)):
            mask = one_hot(lab, k).unsqueeze(1)  # (K+1) x 1 x H x W
            t0 = time.perf_counter()
            masks = core.interact(mask, idx)
            times.append((time.perf_counter() - t0) * 1e3)
            outs.append((core.prob[:, :, 0].clone(), np.array(masks)))
        return times, outs, core

    def mine():
        cfg = InferenceConfig(top_k=TOP_K, mem_every=MEM_FREQ, include_last=True, fusion="diff")
        core = InferenceCore(ours["propagation"], ours["fusion"], frames, num_objects=k,
                             config=cfg, device="cpu")
        outs, times = [], []
        for idx, lab in ((0, first), (n - 1, last)):
            t0 = time.perf_counter()
            masks = core.interact(lab, idx)
            times.append((time.perf_counter() - t0) * 1e3)
            outs.append((core.prob.clone(), np.array(masks)))
        return times, outs, core

    return original, mine


def _compare_outputs(theirs_out, ours_out) -> dict:
    (tp, tm), (op_, om) = theirs_out, ours_out
    stats = prob_stats(tp, op_)  # (K+1) x T x Hp x Wp, padded
    per_frame = (tp - op_).abs().flatten(2).amax(dim=(0, 2))
    stats["max_abs_per_frame"] = [float(x) for x in per_frame]
    stats["output_labels_equal"] = float((tm == om).mean())
    stats["output_labels_differing"] = int((tm != om).sum())
    stats["output_labels_total"] = int(om.size)
    stats["output_foreground_share"] = float((om > 0).mean())
    return stats


def e2e(ours: dict, theirs: dict, orig, s: dict, log) -> tuple[list[dict], list[dict]]:
    timing_rows, agree_rows = [], []
    for h, w, n in s["e2e_sizes"]:
        clips = {k: synthetic(n, h, w, k, seed=3) for k in s["e2e_objects"]}
        log(f"  end to end at {h}x{w}, {n} frames, K = {list(s['e2e_objects'])}: warm-up on 3 "
            f"frames, then {s['e2e_repeats']} timed rounds")
        with torch.inference_mode():
            for k, (frames, labels) in clips.items():  # warm-up: a 3-frame clip of the same size
                for fn in _e2e_pair(ours, theirs, orig, frames[:3], labels[:3], k):
                    fn()
            results: dict[int, dict[str, list]] = {k: {"original": [], "ours": []}
                                                   for k in clips}
            for r in range(s["e2e_repeats"]):
                t0 = time.perf_counter()
                for k, (frames, labels) in clips.items():
                    original, mine = _e2e_pair(ours, theirs, orig, frames, labels, k)
                    order = (("original", original), ("ours", mine))
                    for impl, fn in (order if r % 2 == 0 else order[::-1]):
                        times, outs, core = fn()
                        results[k][impl].append((times, outs))
                        if impl == "ours" and r == 0:
                            same_input = all(torch.equal(core.image(t)[0], pad_divide_by(
                                to_images(frames[t:t + 1]), 16)[0][0]) for t in range(n))
                            results[k]["same_input"] = same_input
                log(f"    round {r + 1}/{s['e2e_repeats']}: {time.perf_counter() - t0:.1f} s, "
                    f"load {note_load(f'e2e {h}x{w} round {r + 1}')}")
        for k, res in results.items():
            row = {"height": h, "width": w, "objects": k, "frames": n}
            for step, (label, frames_done, what) in enumerate((
                    ("interaction_1", n - 1, "frame 0, forward pass, no fusion"),
                    ("interaction_2", n - 2,
                     f"frame {n - 1}, backward pass with difference-aware fusion"))):
                t_ms = [times[step] for times, _ in res["original"]]
                o_ms = [times[step] for times, _ in res["ours"]]
                row[label] = {
                    "what": what, "frames_propagated": frames_done,
                    "original": summarise(t_ms), "ours": summarise(o_ms),
                    "original_ms": statistics.median(t_ms), "ours_ms": statistics.median(o_ms),
                    "ratio": statistics.median(t_ms) / statistics.median(o_ms),
                    "original_ms_per_frame_per_object":
                        statistics.median(t_ms) / (frames_done * k),
                    "ours_ms_per_frame_per_object": statistics.median(o_ms) / (frames_done * k)}
            total_t = [sum(times) for times, _ in res["original"]]
            total_o = [sum(times) for times, _ in res["ours"]]
            row["total"] = {"original_ms": statistics.median(total_t),
                            "ours_ms": statistics.median(total_o),
                            "ratio": statistics.median(total_t) / statistics.median(total_o)}
            timing_rows.append(row)
            # agreement of the outputs (first round of each; later rounds must repeat them)
            (_, t_outs), (_, o_outs) = res["original"][0], res["ours"][0]
            repeat_same = None if len(res["ours"]) < 2 else all(
                torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                for impl in ("original", "ours") for _, outs in res[impl][1:]
                for a, b in zip(outs, res[impl][0][1], strict=True))
            for step in (0, 1):
                stats = _compare_outputs(t_outs[step], o_outs[step])
                agree_rows.append({
                    "check": f"interaction_{step + 1}", "objects": k, "height": h, "width": w,
                    "frames": n, "same_input_frames": res.get("same_input"),
                    "rounds_repeat_identically": repeat_same,
                    "what": ("after interaction 1 (frame 0, forward)" if step == 0 else
                             f"after interaction 2 (frame {n - 1}, backward with fusion)"),
                    **stats})
                log(f"  agree e2e {h}x{w} K={k} interaction {step + 1}: max|d| "
                    f"{_fmt_e(stats['max_abs'])}, output labels equal "
                    f"{stats['output_labels_equal']:.6f} ({stats['output_labels_differing']} px)")
    return timing_rows, agree_rows


# ============================================================================ report


def machine() -> dict:
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "platform": platform.platform(),
            # huge-page CPU allocations, set by util/__init__.py for both sides of the process
            "transparent_huge_pages": transparent_huge_pages_mode(),
            HUGE_PAGES_ENV: os.environ.get(HUGE_PAGES_ENV)}


def ours_version() -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"),
            "modified_files": status.splitlines() if status else []}


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def note_load(what: str) -> float | None:
    """Record (and return) the 1-minute load average now."""
    load = loadavg()
    LOAD_SAMPLES.append((round(time.perf_counter() - _T0, 1), what, load and load[0]))
    return load and load[0]


def markdown(report: dict) -> str:
    s = report["settings"]
    m = report["machine"]
    changed = ", ".join(x.split()[-1] for x in report["ours"]["modified_files"])
    lines = [
        "# This project vs the original MiVOS: outputs and speed",
        "",
        f"Generated by `scripts/bench_original.py` on {report['date']}. Original: "
        f"`{report['original']['folder']}` (git {report['original']['git_commit'] or 'unknown'};"
        f" {TV}: {report['original'][TV]}). Ours: git "
        f"{(report['ours']['commit'] or 'unknown')[:12]}"
        + (f" with local changes to {changed}" if changed else "") + ".",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} "
        f"({m['cpu_capability']}), {m['threads']} threads, fp32. Load average (1, 5, 15 min) "
        f"before / after: {report['loadavg_before']} / {report['loadavg_after']}; 1-minute load "
        f"after each timed round: {_load_range(report['load_samples'])}. Run time "
        f"{report['run_seconds']:.0f} s."
        + (f" Huge-page CPU allocations for both implementations (one process): kernel THP mode "
           f"`{m['transparent_huge_pages']}`, `{HUGE_PAGES_ENV}={m.get(HUGE_PAGES_ENV)}`."
           if "transparent_huge_pages" in m else ""),
        "",
        "Same random weights in both (ours built with seed "
        f"{s['seed']}, loaded strictly into the original's networks):",
        "",
        "| network | tensors | parameters | same key order | official manifest |",
        "|---|---|---|---|---|",
    ]
    for kind, w in report["weights"].items():
        lines.append(f"| {kind} | {w['tensors']} | {w['parameters']:,} | {w['same_order']} | "
                     f"{w.get('manifest', 'n/a')} |")
    lines += ["", "## Agreement (original vs ours, same inputs)", "",
              f"Module checks at {s['agree_height']}x{s['agree_width']} on a synthetic video; "
              "max / mean |difference| of the outputs (probabilities where a label column is "
              "given); labels: argmax over background + objects, or p > 0.5 for one-channel "
              "outputs. *Undecided*: share of our probabilities in (0.05, 0.95), a measure of "
              "how much the comparison can show.", "",
              "| check | K | max abs | mean abs | max rel | labels equal | differing px | "
              "margin there | undecided |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["agreement"]["modules"]:
        lab = (f"{r['labels_equal']:.6f} | {r['labels_differing']} / {r['labels_total']} | "
               f"{_fmt_margin(r['max_margin_at_differing'])} | "
               f"{r['frac_between_0.05_0.95']:.3f}" if "labels_equal" in r else "| | | ")
        lines.append(f"| {r['check']} | {r['objects'] or ''} | {_fmt_e(r['max_abs'])} | "
                     f"{_fmt_e(r['mean_abs'])} | {_fmt_e(r['max_rel'])} | {lab} |")
    lines += ["", "Whole interactions (the end-to-end runs below): stored probabilities of every "
              "frame at the padded size ((K+1) channels), and the returned (unpadded) label maps. "
              "*Margin there*: the largest top-1 minus top-2 probability, in either output, at "
              "the pixels whose padded argmax differs.", "",
              "| size | T | K | after | max abs | mean abs | output labels equal | differing px | "
              "margin there | our foreground share | max abs per frame |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["agreement"]["interactions"]:
        per = ", ".join(_fmt_e(x) for x in r["max_abs_per_frame"])
        lines.append(f"| {r['height']}x{r['width']} | {r['frames']} | {r['objects']} | "
                     f"{r['check']} | {_fmt_e(r['max_abs'])} | {_fmt_e(r['mean_abs'])} | "
                     f"{r['output_labels_equal']:.6f} | {r['output_labels_differing']} / "
                     f"{r['output_labels_total']} | {_fmt_margin(r['max_margin_at_differing'])} | "
                     f"{r['output_foreground_share']:.3f} | {per} |")
    lines += ["", "## Speed (median ms; ratio = original / ours, >= 1 means ours is at least as "
              "fast)", "",
              f"Stages at {s['height']}x{s['width']}, {s['warmup']} warm-up + {s['repeats']} "
              "timed rounds, original and ours interleaved.", "",
              "| stage | K | original ms | ours ms | ratio | what |", "|---|---|---|---|---|---|"]
    for r in report["timing"]["stages"]:
        lines.append(f"| {r['stage']} | {r['objects']} | {r['original_ms']:.1f} | "
                     f"{r['ours_ms']:.1f} | {r['ratio']:.2f} | {r['what']} |")
    lines += ["", "End to end on a clip of T frames: interaction 1 on frame 0 propagates forward "
              "(T - 1 frames, no fusion), interaction 2 on the last frame propagates backward "
              "with difference-aware fusion (T - 2 frames). Warm-up on a 3-frame clip, then "
              f"{s['e2e_repeats']} timed rounds.", "",
              "| size | T | K | step | original ms | ours ms | ratio | original ms/frame/object | "
              "ours ms/frame/object |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["timing"]["end_to_end"]:
        size = f"{r['height']}x{r['width']} | {r['frames']} | {r['objects']}"
        for step in ("interaction_1", "interaction_2"):
            x = r[step]
            lines.append(f"| {size} | {step} | "
                         f"{x['original_ms']:.0f} | {x['ours_ms']:.0f} | {x['ratio']:.2f} | "
                         f"{x['original_ms_per_frame_per_object']:.0f} | "
                         f"{x['ours_ms_per_frame_per_object']:.0f} |")
        t = r["total"]
        lines.append(f"| {size} | both | {t['original_ms']:.0f} | {t['ours_ms']:.0f} | "
                     f"{t['ratio']:.2f} | | |")
    lines += ["", "The original's files used (SHA-256):", ""]
    lines += [f"* `{f}` {h[:16]}" for f, h in report["original"]["files_sha256"].items()]
    return "\n".join(lines) + "\n"


# ============================================================================ main


def parse_size(text: str) -> tuple[int, int, int | None]:
    """``HxW`` or ``HxW:T`` (T: clip length; default ``--e2e-frames``)."""
    size, _, frames = text.partition(":")
    try:
        h, w = (int(x) for x in size.lower().split("x"))
        t = int(frames) if frames else None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HxW or HxW:T, e.g. 480x854:6, got {text!r}") from None
    if h < 16 or w < 16 or (t is not None and t < 3):
        raise argparse.ArgumentTypeError(f"size too small or clip shorter than 3: {text!r}")
    return h, w, t


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", type=Path, required=True,
                   help="a clone of github.com/hkchengrex/MiVOS (not part of this repository)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, few rounds (about 1 minute on 2 idle cores)")
    p.add_argument("--height", type=int, help="stage timings: frame height (default 480)")
    p.add_argument("--width", type=int, help="stage timings: frame width (default 854)")
    p.add_argument("--memory-frames", type=int, help="memory frames of the read timings (20)")
    p.add_argument("--e2e-sizes", type=parse_size, nargs="+",
                   help="end-to-end frame sizes and clip lengths HxW[:T] "
                        "(default 240x432:8 480x854:6)")
    p.add_argument("--e2e-frames", type=int,
                   help="clip length of the --e2e-sizes given without one (default 8)")
    p.add_argument("--repeats", type=int, help="timed rounds of the stages (default 3)")
    p.add_argument("--e2e-repeats", type=int, help="timed rounds end to end (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared random weights")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.add_argument("--markdown", type=Path, help="write the results as a Markdown report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = dict(QUICK if args.quick else DEFAULTS)
    for key in ("height", "width", "memory_frames", "e2e_frames", "repeats", "e2e_repeats"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if s["e2e_frames"] < 3:
        raise SystemExit("--e2e-frames must be at least 3 (two interactions and a frame between)")
    if args.e2e_sizes:
        s["e2e_sizes"] = tuple((h, w, t or s["e2e_frames"]) for h, w, t in args.e2e_sizes)
    s["seed"] = args.seed
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    before = loadavg()
    version = ours_version()  # the code imported above (a later commit would not be measured)
    changed = ", ".join(version["modified_files"])
    log(f"load average {before}; {args.threads} threads; ours at {version['commit']}"
        + (f" (modified: {changed})" if changed else "") + f"; settings {s}")
    orig, orig_report = load_original(args.original)
    log(f"original loaded from {orig_report['folder']} ({TV}: {orig_report[TV]})")
    ours, theirs, weights = build_networks(orig, args.seed)
    for kind, w in weights.items():
        log(f"  weights {kind}: {w['tensors']} tensors, {w['parameters']:,} parameters, "
            f"manifest {w.get('manifest', 'n/a')}")
    with torch.inference_mode():
        log("agreement of the modules")
        agree_modules = agreement(ours, theirs, orig, s, log)
        log("stage timings")
        stages = stage_timings(ours, theirs, orig, s, log)
    for r in stages:
        log(f"  {r['case']:<18} original {r['original_ms']:9.1f} ms  ours {r['ours_ms']:9.1f} ms"
            f"  ratio {r['ratio']:.2f}")
    log("end to end")
    e2e_rows, agree_e2e = e2e(ours, theirs, orig, s, log)
    for r in e2e_rows:
        log(f"  {r['height']}x{r['width']} K={r['objects']}: interaction 1 "
            f"{r['interaction_1']['original_ms']:.0f} / {r['interaction_1']['ours_ms']:.0f} ms "
            f"(ratio {r['interaction_1']['ratio']:.2f}), interaction 2 "
            f"{r['interaction_2']['original_ms']:.0f} / {r['interaction_2']['ours_ms']:.0f} ms "
            f"(ratio {r['interaction_2']['ratio']:.2f})")
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {**s, "top_k": TOP_K, "mem_freq": MEM_FREQ, "include_last": True,
                     "fusion": "diff", "precision": "fp32"},
        "machine": machine(), "ours": version, "original": orig_report,
        "weights": weights, "loadavg_before": before, "loadavg_after": loadavg(),
        "load_samples": LOAD_SAMPLES,
        "run_seconds": time.perf_counter() - start,
        "agreement": {"modules": agree_modules, "interactions": agree_e2e},
        "timing": {"stages": stages, "end_to_end": e2e_rows},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        log(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report))
        log(f"wrote {args.markdown}")
    log(f"done in {report['run_seconds']:.0f} s; load average {report['loadavg_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
