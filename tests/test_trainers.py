"""Trainers end to end on generated data (CPU, lite networks, 64 x 64 crops, batch 2).

Covers: typed configs and their CLI, the three trainers (in-process ``main(argv)``) writing
checkpoints that ``python -m model.checkpoint`` accepts, exact resuming, a 2-process gloo DDP
run, the fusion data generator and dataset, overfitting a fixed batch with each module,
sampler / data-stream / RNG bookkeeping, and clear errors for missing data.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import default_collate

import train_fusion
import train_prop
import train_s2m
from model import checkpoint as ckpt_cli
from model.checkpoint import (
    CheckpointMismatchError,
    load_propagation_weights,
    load_weights,
    save_weights,
)
from model.losses import BootstrappedCE
from model.presets import build_fusion, build_propagation, build_s2m, get_preset
from train import propagation as train_prop_module
from train import s2m as train_s2m_module
from train.common import freeze_bn
from train.fusion import AttentionReader, FusionTrainConfig, FusionTrainWrapper, fusion_loss
from train.propagation import PropagationTrainWrapper, PropTrainConfig, propagation_loss
from train.s2m import S2MTrainConfig, S2MTrainWrapper, s2m_loss
from util.config import (
    ConfigError,
    build_parser,
    config_from_dict,
    config_to_dict,
    resolve_config,
)
from util.tensor_util import normalize_image
from util.trainer import (
    DataStream,
    DistInfo,
    ShardedSampler,
    capture_rng_state,
    restore_rng_state,
    sync_batchnorm,
)

REPO = Path(__file__).resolve().parents[1]
S = 64


def common_args(data_root: Path) -> list[str]:
    return ["--preset", "lite", "--data", "synthetic", "--data-root", str(data_root),
            "--synthetic-preset", "tiny", "--synthetic-static-count", "6",
            "--synthetic-static-size", "96", "--crop-size", str(S), "--batch-size", "2",
            "--num-workers", "0", "--no-progress", "--no-tensorboard", "--image-interval", "0",
            "--log-interval", "1"]


def check_cli(kind: str, path: Path, *extra: str) -> int:
    return ckpt_cli.main(["--kind", kind, "--preset", "lite", *extra, str(path)])


def same_weights(a: Path, b: Path) -> list[str]:
    sa = torch.load(a, map_location="cpu", weights_only=True)
    sb = torch.load(b, map_location="cpu", weights_only=True)
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU OpenMP spinning makes two
    threads many times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def prop_s0(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prop_s0")
    assert train_prop.main(common_args(data_root) + ["--stage", "s0", "--iterations", "2",
                                                     "--output", str(out)]) == 0
    return out / "prop_s0_final.pth"


@pytest.fixture(scope="module")
def prop_s2(data_root, prop_s0, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prop_s2")
    assert train_prop.main(common_args(data_root) + [
        "--stage", "s2", "--iterations", "2", "--load", str(prop_s0), "--output", str(out)]) == 0
    return out / "prop_s2_final.pth"


@pytest.fixture(scope="module")
def fusion_data(data_root, prop_s2) -> tuple[Path, Path]:
    """Synthetic tiny videos and fusion data generated from the s2 weights."""
    from dataset.generate_fusion import main as gen_main

    videos = data_root / "synthetic" / "tiny"
    run = data_root / "fusion_cli_run"
    args = ["--data", str(videos), "--prop-model", str(prop_s2), "--preset", "lite",
            "--output", str(run), "--separation", "3", "--range", "4", "--device", "cpu",
            "--no-progress"]
    assert gen_main(args) == 0
    return videos, run


# ============================================================================ configs


def test_stage_presets_follow_the_spec():
    s0, s1, s2, s02 = (PropTrainConfig.for_stage(s) for s in ("s0", "s1", "s2", "s02"))
    assert (s0.batch_size, s0.iterations, s0.lr_steps, s0.single_object) == (7, 300_000,
                                                                            (250_000,), True)
    assert (s1.batch_size, s1.iterations, s1.lr_steps) == (4, 500_000, (450_000,))
    assert s1.curriculum_fractions == (0.1, 0.2, 0.3, 0.4, 0.8)
    assert (s2.iterations, s2.lr_steps, s2.curriculum_fractions[-1]) == (150_000, (125_000,), 0.9)
    assert s02.iterations == 300_000 and not s02.single_object
    for c in (s0, s1, s2, s02):
        assert (c.lr, c.lr_gamma, c.weight_decay, c.start_warm, c.end_warm, c.save_interval,
                c.crop_size) == (1e-5, 0.1, 1e-7, 20_000, 70_000, 50_000, 384)
    f0, f1 = FusionTrainConfig.s0(), FusionTrainConfig.s1()
    assert (f0.batch_size, f0.iterations, f0.lr, f0.lr_steps, f0.start_warm, f0.end_warm) == (
        12, 30_000, 1e-4, (20_000,), 6_000, 15_000)
    assert (f1.iterations, f1.lr_steps, f1.start_warm, f1.end_warm, f1.save_interval) == (
        10_000, (7_500,), 2_000, 5_000, 5_000)
    m = S2MTrainConfig.main()
    assert (m.batch_size, m.iterations, m.lr, m.lr_steps, m.start_warm, m.end_warm,
            m.save_interval, m.weight_decay, m.top_p) == (16, 80_000, 1e-4, (), 10_000, 30_000,
                                                          20_000, 1e-7, 0.15)


def test_cli_overrides_lite_defaults_scaling_and_json(tmp_path):
    cfg, given = resolve_config(PropTrainConfig, ["--stage", "s1", "--preset", "lite",
                                                  "--iterations", "1000", "--output", "o"])
    assert given == {"stage": "s1", "preset": "lite", "iterations": 1000, "output": "o"}
    assert (cfg.crop_size, cfg.batch_size) == (96, 4)
    assert cfg.lr_steps == (900,) and (cfg.start_warm, cfg.end_warm) == (40, 140)
    cfg2, _ = resolve_config(PropTrainConfig, ["--stage", "s1", "--iterations", "1000",
                                               "--lr-steps", "10", "20", "--output", "o",
                                               "--grad-clip", "none", "--no-scale-schedule"])
    assert cfg2.lr_steps == (10, 20) and cfg2.start_warm == 20_000 and cfg2.grad_clip is None
    assert config_from_dict(PropTrainConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    with pytest.raises(ConfigError, match="crop-size"):
        resolve_config(S2MTrainConfig, ["--crop-size", "100", "--output", "o"])
    with pytest.raises(ConfigError, match="single-object"):
        resolve_config(PropTrainConfig, ["--stage", "s2", "--single-object", "--output", "o"])
    # --config FILE then flags on top
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config_to_dict(cfg)))
    cfg3, _ = resolve_config(PropTrainConfig, ["--config", str(path), "--lr", "0.5"])
    assert cfg3.stage == "s1" and cfg3.lr == 0.5 and cfg3.crop_size == 96


@pytest.mark.parametrize("cls", [S2MTrainConfig, PropTrainConfig, FusionTrainConfig])
def test_every_option_has_help(cls):
    parser = build_parser(cls)
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and "default:" in action.help, action.dest


@pytest.mark.parametrize("module", [train_s2m, train_prop, train_fusion])
def test_scripts_help(module, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--output" in text and "--resume" in text and "Examples" in text


# ============================================================================ trainers


def test_s2m_trains_writes_checkpoints_and_resumes_exactly(data_root, tmp_path):
    args = common_args(data_root) + ["--iterations", "4", "--robot-prob", "0.5",
                                     "--save-interval", "3"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_s2m.main(args + ["--output", str(straight), "--tensorboard",
                                  "--image-interval", "2"]) == 0
    final = straight / "s2m_final.pth"
    assert check_cli("s2m", final) == 0
    assert (straight / "s2m_3.pth").is_file() and (straight / "s2m_4.pth").is_file()
    assert list((straight / "images").glob("*.png")) and list((straight / "tb").iterdir())
    cfg = json.loads((straight / "config.json").read_text())
    assert cfg["_type"] == "S2MTrainConfig" and cfg["iterations"] == 4
    state = torch.load(straight / "s2m_checkpoint.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 4 and state["config"]["name"] == "s2m"
    assert {"torch", "numpy", "python"} <= set(state["rng"][0])
    assert state["data"] == {"epoch": 1, "position": 1}  # 6 samples / batch 2 = 3 per epoch

    # 2 steps, stop, resume to 4: identical weights (dropout and BatchNorm statistics included)
    assert train_s2m.main(args + ["--output", str(split), "--stop-at", "2"]) == 0
    assert not (split / "s2m_final.pth").exists()
    assert train_s2m.main(args + ["--output", str(split), "--resume", "auto"]) == 0
    assert same_weights(final, split / "s2m_final.pth") == []


def test_propagation_stages_and_checkpoint_kinds(prop_s0, prop_s2):
    assert check_cli("propagation", prop_s0, "--single-object") == 0
    assert check_cli("propagation", prop_s0) == 1  # 4-channel stem: needs --single-object
    assert check_cli("propagation", prop_s2) == 0
    s0 = torch.load(prop_s0, weights_only=True)["mask_rgb_encoder.conv1.weight"]
    s2 = torch.load(prop_s2, weights_only=True)["mask_rgb_encoder.conv1.weight"]
    assert s0.shape[1] == 4 and s2.shape[1] == 5


def test_propagation_resume_equals_straight_run(data_root, tmp_path):
    # tiny set: 3 videos, batch 2 -> one batch per epoch, so every step starts a new epoch
    # and the max_jump curriculum changes across the interruption
    args = common_args(data_root) + ["--stage", "s2", "--iterations", "4"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_prop.main(args + ["--output", str(a)]) == 0
    assert train_prop.main(args + ["--output", str(b), "--stop-at", "2"]) == 0
    resume = str(b / "prop_s2_checkpoint.pth")
    assert train_prop.main(args + ["--output", str(b), "--resume", resume]) == 0
    assert same_weights(a / "prop_s2_final.pth", b / "prop_s2_final.pth") == []


def test_fusion_trains_from_synthetic_data(data_root, prop_s2, tmp_path):
    out = tmp_path / "fusion"
    args = common_args(data_root) + ["--iterations", "2", "--prop-model", str(prop_s2),
                                     "--generate-separation", "3", "--generate-range", "4",
                                     "--output", str(out)]
    assert train_fusion.main(args) == 0
    assert check_cli("fusion", out / "fusion_s0_final.pth") == 0
    runs = list((data_root / "synthetic" / "fusion" / "tiny").iterdir())
    assert len(runs) == 1 and (runs[0] / "fusion_run.json").is_file()


def test_ddp_two_processes_gloo(data_root, prop_s0, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(port), "train_prop.py", *common_args(data_root),
           "--stage", "s0", "--iterations", "2", "--device", "cpu", "--save-rank-weights",
           "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = out / "prop_s0_rank0_final.pth", out / "prop_s0_rank1_final.pth"
    # gradients are averaged over the ranks, so every parameter is identical; the lite preset
    # trains BatchNorm with batch statistics, which SyncBatchNorm would share on CUDA only, so
    # on CPU each rank keeps its own running statistics (rank 0's are saved)
    differing = same_weights(r0, r1)
    assert differing and all(k.endswith(("running_mean", "running_var")) for k in differing)
    assert same_weights(r0, out / "prop_s0_final.pth") == []
    assert (out / "train_rank1.log").is_file()
    state = torch.load(out / "prop_s0_checkpoint.pth", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2


def test_missing_dataset_root_is_named(tmp_path, capsys):
    missing = tmp_path / "no_such_bl30k"
    rc = train_prop.main(["--stage", "s1", "--preset", "lite", "--bl30k-root", str(missing),
                          "--output", str(tmp_path / "o1"), "--no-tensorboard"])
    assert rc == 2
    assert str(missing) in capsys.readouterr().err
    missing_static = tmp_path / "no_static"
    rc = train_s2m.main(["--preset", "lite", "--static-roots", str(missing_static),
                         "--output", str(tmp_path / "o2"), "--no-tensorboard"])
    assert rc == 2 and str(missing_static) in capsys.readouterr().err
    rc = train_prop.main(["--stage", "s2", "--preset", "lite", "--output", str(tmp_path / "o3"),
                          "--no-tensorboard"])
    assert rc == 2 and "--davis-root" in capsys.readouterr().err
    rc = train_fusion.main(["--preset", "lite", "--output", str(tmp_path / "o4"),
                            "--prop-model", str(tmp_path / "nope.pth"), "--no-tensorboard"])
    assert rc == 2 and "nope.pth" in capsys.readouterr().err


# ============================================================================ fusion data


def test_generate_fusion_layout_and_resume(fusion_data, prop_s2):
    from dataset.generate_fusion import main as gen_main

    videos, run = fusion_data
    done = json.loads((run / "tiny-002" / "done.json").read_text())
    assert done["references"], "tiny-002 should have usable references"
    r, ref = next(iter(done["references"].items()))
    lo, hi = ref["frames"]
    obj = ref["objects"][0]
    pngs = sorted((run / "tiny-002" / f"{int(r):05d}" / f"{obj:05d}").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(lo, hi + 1)]
    assert hi - lo <= 8  # --range 4
    import cv2

    at_ref = cv2.imread(str(pngs[int(r) - lo]), cv2.IMREAD_GRAYSCALE)
    assert at_ref.max() == 255 and at_ref.dtype.name == "uint8"  # the reference is the GT
    mtime = (run / "tiny-002" / "done.json").stat().st_mtime
    args = ["--data", str(videos), "--prop-model", str(prop_s2), "--preset", "lite",
            "--output", str(run), "--separation", "3", "--range", "4", "--no-progress"]
    assert gen_main(args) == 0  # resumable: finished videos are skipped
    assert (run / "tiny-002" / "done.json").stat().st_mtime == mtime
    assert gen_main(args[:-5] + ["--separation", "5", "--no-progress"]) == 2  # other settings


def test_fusion_dataset_sample(fusion_data):
    from dataset.fusion_dataset import FusionDataset

    videos, run = fusion_data
    ds = FusionDataset(videos, run, size=S, seed=3, samples_per_video=4)
    assert len(ds) == 4 * len(ds.names)
    item = ds[1]
    assert item["rgb"].shape == (3, S, S) and item["ref_rgb"].shape == (3, S, S)
    for k in ("seg1", "seg2", "before", "after"):
        assert item[k].shape == (2, S, S) and 0 <= float(item[k].min()) <= float(item[k].max()) <= 1
    info = item["info"]
    r1, r2, t = info["r1"], info["r2"], info["t"]
    assert r1 != r2
    expected = torch.tensor([abs(r1 - t) / abs(r1 - r2), abs(r2 - t) / abs(r1 - r2)])
    assert torch.allclose(item["dist"], expected)
    assert item["cls_gt"].dtype == torch.int64 and int(item["cls_gt"].max()) <= 2
    if float(item["selector"][1]) == 0:
        assert float(item["seg1"][1].abs().sum()) == 0 and int(item["cls_gt"].max()) <= 1
    again = ds[1]
    assert all(torch.equal(item[k], again[k]) for k in ("rgb", "seg1", "dist", "cls_gt"))
    ds.set_epoch(1)
    assert ds[1]["info"] != info or not torch.equal(ds[1]["rgb"], item["rgb"])


# ============================================================================ overfitting


def _overfit(loss_fn, params, lr: float, max_steps: int) -> tuple[float, float, int]:
    opt = torch.optim.Adam([p for p in params if p.requires_grad], lr=lr)
    first = None
    for step in range(1, max_steps + 1):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = float(loss.detach())
        first = value if first is None else first
        if value < first / 2:
            return first, value, step
    return first, value, max_steps


CE = BootstrappedCE(10**9, 10**9 + 1)  # plain cross-entropy (before the warm-up)


def test_overfit_s2m(data_root, tmp_path):
    from dataset.static_dataset import S2MDataset

    torch.manual_seed(0)
    root = data_root / "synthetic" / "static"
    if not root.is_dir():
        from dataset.synthetic import generate_static_pairs

        generate_static_pairs(root, 6, 96, 14159265)
    ds = S2MDataset(root, size=S, robot_prob=0.0, seed=1)
    b = default_collate([ds[i] for i in range(2)])
    w = S2MTrainWrapper(build_s2m("lite"))
    w.train_mode()

    def loss_fn():
        out = w(normalize_image(b["rgb"]), b["prev_mask"], b["pos"], b["neg"])
        return s2m_loss(CE, out, b["cls_gt"], 0)[0]

    first, last, steps = _overfit(loss_fn, w.parameters(), 1e-3, 40)
    assert last < first / 2, (first, last, steps)


def test_overfit_propagation(data_root, prop_s2):
    from dataset.vos_dataset import VOSClipDataset

    torch.manual_seed(0)
    ds = VOSClipDataset(data_root / "synthetic" / "tiny", size=S, seed=2)
    items = [ds[i] for i in range(6)]
    items.sort(key=lambda x: -float(x["selector"][1]))  # prefer clips with two objects
    b = default_collate(items[:2])
    w = PropagationTrainWrapper(build_propagation("lite"))
    w.train_mode()
    assert not any(m.training for m in w.modules() if isinstance(m, nn.BatchNorm2d))

    def loss_fn():
        out = w(normalize_image(b["rgb"]), b["gt"], b["sec_gt"], b["selector"])
        return propagation_loss(CE, out, b["cls_gt"], 0, b["selector"])[0]

    first, last, steps = _overfit(loss_fn, w.parameters(), 1e-3, 40)
    assert last < first / 2, (first, last, steps)


def test_overfit_fusion(fusion_data, prop_s2):
    from dataset.fusion_dataset import FusionDataset

    torch.manual_seed(0)
    videos, run = fusion_data
    ds = FusionDataset(videos, run, size=S, seed=5, samples_per_video=2)
    b = default_collate([ds[i] for i in range(2)])
    reader = AttentionReader(get_preset("lite").propagation)
    reader.load_from_propagation(prop_s2)
    w = FusionTrainWrapper(build_fusion("lite"), reader)
    w.train_mode()
    before = {k: v.clone() for k, v in reader.state_dict().items()}

    def loss_fn():
        out = w(normalize_image(b["rgb"]), normalize_image(b["ref_rgb"]), b["seg1"], b["seg2"],
                b["before"], b["after"], b["dist"], b["selector"])
        assert out.attn.shape == (2, 2, 2, S, S)
        return fusion_loss(CE, out, b["cls_gt"], 0, b["selector"])[0]

    first, last, steps = _overfit(loss_fn, w.parameters(), 1e-3, 60)
    assert last < first / 2, (first, last, steps)
    assert all(torch.equal(before[k], v) for k, v in reader.state_dict().items())  # frozen


# ============================================================================ building blocks


def test_sharded_sampler_shards_and_resumes():
    shards = [ShardedSampler(10, 2, r, seed=4).indices() for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])
    s = ShardedSampler(10, 1, 0, seed=4)
    s.set_epoch(3)
    full = list(s)
    s.set_start(4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(4)
    s.set_start(0)
    assert list(s) != full


def test_data_stream_state_round_trip():
    data = list(range(7))
    a = DataStream(data, batch_size=2, seed=1)  # 3 batches per epoch
    seen = [next(a).tolist() for _ in range(5)]
    b = DataStream(data, batch_size=2, seed=1)
    for _ in range(2):
        next(b)
    state = b.state_dict()
    c = DataStream(data, batch_size=2, seed=1)
    c.load_state_dict(state)
    assert [next(c).tolist() for _ in range(3)] == seen[2:]
    with pytest.raises(ValueError, match="fewer than one batch"):
        DataStream(list(range(3)), batch_size=2, info=DistInfo(0, 2, 0))


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pth")
    x = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    y = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(x[0], y[0]) and np.array_equal(x[1], y[1]) and x[2] == y[2]


def test_freeze_bn_keeps_affine_trainable():
    net = build_s2m("lite")
    net.train()
    n = freeze_bn(net)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert n == len(bns) > 0 and not any(m.training for m in bns)
    assert all(m.weight.requires_grad for m in bns)


def test_crop_scale_reaches_the_video_clips(data_root):
    argv = common_args(data_root) + ["--stage", "s2", "--output", "unused"]
    default = resolve_config(PropTrainConfig, argv)[0]
    scaled = resolve_config(PropTrainConfig, argv + ["--crop-scale", "0.1", "0.25"])[0]
    info = DistInfo()
    geometry = [train_prop_module.build_dataset(c, info).shared_geometry.transforms[1].scale
                for c in (default, scaled)]
    assert geometry == [(0.36, 1.0), (0.1, 0.25)]
    for bad in (["0.5"], ["0.5", "0.2"], ["0", "1"], ["0.5", "1.5"]):
        with pytest.raises(ConfigError, match="crop-scale"):
            resolve_config(PropTrainConfig, argv + ["--crop-scale", *bad])


def test_sync_batchnorm_only_under_ddp_on_cuda():
    def n_sync(m):
        return sum(isinstance(x, nn.SyncBatchNorm) for x in m.modules())

    w = PropagationTrainWrapper(build_propagation("lite"), batchnorm="train")
    single, pair = DistInfo(), DistInfo(rank=0, world_size=2)
    assert sync_batchnorm(w, single, torch.device("cuda")) is w
    assert sync_batchnorm(w, pair, torch.device("cpu")) is w
    n_bn = sum(isinstance(x, nn.BatchNorm2d) for x in w.modules())
    assert n_sync(w) == 0
    converted = sync_batchnorm(w, pair, torch.device("cuda"))  # conversion needs no GPU
    assert n_sync(converted) == n_bn > 0


def test_propagation_batchnorm_modes():
    """'frozen' (the reference recipe) leaves the running statistics alone during a training
    forward; 'train' (the lite default, for random initialisation) updates them."""
    assert PropTrainConfig.for_stage("s2").batchnorm == "frozen"
    assert PropTrainConfig.for_stage("s2").lite().batchnorm == "train"
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 3, 32, 32)
    gt = (torch.rand(2, 3, 1, 32, 32) > 0.5).float()
    for mode, changes in (("frozen", False), ("train", True)):
        w = PropagationTrainWrapper(build_propagation("lite"), batchnorm=mode)
        w.train_mode()
        bn = w.net.mask_rgb_encoder.bn1
        before = bn.running_mean.clone()
        w(frames, gt)
        assert bn.training == changes
        assert (not torch.equal(before, bn.running_mean)) == changes, mode
    with pytest.raises(ValueError, match="batchnorm"):
        PropagationTrainWrapper(build_propagation("lite"), batchnorm="sync")


def test_propagation_weight_loading_widens_stem_and_reader_is_strict(tmp_path):
    single = build_propagation("lite", single_object=True)
    save_weights(single, tmp_path / "s0.pth")
    multi = build_propagation("lite")
    load_propagation_weights(multi, tmp_path / "s0.pth")
    w = multi.state_dict()["mask_rgb_encoder.conv1.weight"]
    assert torch.equal(w[:, :4], single.state_dict()["mask_rgb_encoder.conv1.weight"])
    save_weights(multi, tmp_path / "s2.pth")
    reader = AttentionReader(get_preset("lite").propagation)
    reader.load_from_propagation(tmp_path / "s2.pth")  # decoder entries ignored
    assert not any(p.requires_grad for p in reader.parameters())
    with pytest.raises(CheckpointMismatchError):
        reader.load_from_propagation(tmp_path / "s0.pth")  # single-object stem
    bad = {**multi.state_dict(), "extra.weight": torch.zeros(1)}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="extra.weight"):
        reader.load_from_propagation(tmp_path / "bad.pth")
    fusion = build_fusion("lite")
    save_weights(fusion, tmp_path / "f.pth")
    load_weights(build_fusion("lite"), tmp_path / "f.pth")


def test_initialisation_flags(tmp_path):
    """--imagenet (propagation encoders, S2M backbone), --deeplab (S2M) and --load."""
    from types import SimpleNamespace

    from model.backbone import ResNet

    imagenet = tmp_path / "resnet18_imagenet.pth"
    torch.save(ResNet("resnet18", in_channels=3, last_layer=4).state_dict(), imagenet)
    ref = torch.load(imagenet, weights_only=True)["conv1.weight"]
    ctx = SimpleNamespace(resume_path=None)

    cfg, _ = resolve_config(PropTrainConfig, ["--preset", "lite", "--stage", "s2", "--output",
                                              "o", "--imagenet", str(imagenet)])
    net = train_prop_module.build_network(cfg, ctx)
    assert torch.equal(net.rgb_encoder.conv1.weight, ref)
    assert torch.equal(net.mask_rgb_encoder.conv1.weight[:, :3], ref)

    cfg, _ = resolve_config(S2MTrainConfig, ["--preset", "lite", "--output", "o",
                                             "--imagenet", str(imagenet)])
    s2m = train_s2m_module.build_network(cfg, ctx)
    assert torch.equal(s2m.backbone.conv1.weight[:, :3], ref)

    # a VainF-style DeepLab file: 3-channel stem, 21-class head, wrapped under model_state
    donor = build_s2m("lite").state_dict()
    donor["backbone.conv1.weight"] = donor["backbone.conv1.weight"][:, :3].clone()
    head_w = donor["classifier.classifier.3.weight"]
    donor["classifier.classifier.3.weight"] = torch.randn(21, *head_w.shape[1:])
    donor["classifier.classifier.3.bias"] = torch.randn(21)
    torch.save({"model_state": donor}, tmp_path / "deeplab.pth")
    cfg, _ = resolve_config(S2MTrainConfig, ["--preset", "lite", "--output", "o",
                                             "--deeplab", str(tmp_path / "deeplab.pth")])
    s2m = train_s2m_module.build_network(cfg, ctx)
    assert torch.equal(s2m.backbone.conv1.weight[:, :3], donor["backbone.conv1.weight"])

    # --load from a single-object stage-0 file into a stage-2 network widens the stem
    save_weights(build_propagation("lite", single_object=True), tmp_path / "s0.pth")
    cfg, _ = resolve_config(PropTrainConfig, ["--preset", "lite", "--stage", "s2", "--output",
                                              "o", "--load", str(tmp_path / "s0.pth")])
    assert train_prop_module.build_network(cfg, ctx).mask_rgb_encoder.conv1.weight.shape[1] == 5
    # resuming skips the initialisation (weights come from the checkpoint)
    assert train_prop_module.build_network(cfg, SimpleNamespace(resume_path=Path("x"))) is not None


def test_bf16_autocast_and_grad_clip(data_root, tmp_path, monkeypatch):
    # bf16 is what is tested: keep it on CPUs that would emulate it (util.amp.resolve_amp)
    monkeypatch.setenv("MIVOS_ALLOW_EMULATED_BF16", "1")
    out = tmp_path / "bf16"
    args = common_args(data_root) + ["--stage", "s2", "--iterations", "1", "--amp", "bf16",
                                     "--grad-clip", "1.0", "--output", str(out)]
    assert train_prop.main(args) == 0
    assert json.loads((out / "config.json").read_text())["amp"] == "bf16"
    state = torch.load(out / "prop_s2_final.pth", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())


def test_data_stream_close_stops_its_workers():
    """close() joins the DataLoader's worker processes at once instead of leaving them to a
    later garbage collection (which stalled the quickstart's next step by tens of seconds)."""
    from torch.utils.data import TensorDataset

    from util.trainer import DataStream

    stream = DataStream(TensorDataset(torch.arange(16.0)), batch_size=4, num_workers=2)
    next(stream)
    workers = list(stream._iter._workers)
    assert workers and all(w.is_alive() for w in workers)
    stream.close()
    assert stream._iter is None and not any(w.is_alive() for w in workers)
    stream.close()  # a second close is a no-op
    assert next(stream)[0].shape == (4,)  # and the stream goes on where it was
    stream.close()
