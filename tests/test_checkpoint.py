"""Checkpoint layout, strict loading, the CLI, and ImageNet / DeepLab initialisation."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from model.backbone import ResNet, adapt_input_conv
from model.checkpoint import (
    CheckpointFormatError,
    CheckpointMismatchError,
    count_parameters,
    deeplab_s2m,
    imagenet_resnet,
    load_state_dict_file,
    load_weights,
    main,
    save_weights,
)
from model.presets import build_fusion, build_propagation, build_s2m
from train.propagation import load_imagenet

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = REPO_ROOT / "tests" / "data" / "checkpoints"
BUILDERS = {"s2m": build_s2m, "propagation": build_propagation, "fusion": build_fusion}
# Learnable parameters of the official networks (REFERENCE.md k.2).
OFFICIAL_PARAMS = {"propagation": 53_685_953, "fusion": 39_905, "s2m": 39_766_113}
OFFICIAL_MODULE_PARAMS = {
    "propagation": {
        "mask_rgb_encoder": 8_564_864,
        "rgb_encoder": 8_543_296,
        "kv_m_f16": 5_898_880,
        "kv_q_f16": 5_898_880,
        "decoder": 24_780_033,
    },
    "s2m": {"backbone": 23_517_440, "classifier": 16_248_673},
    "fusion": {"conv1": 2_624, "conv2": 18_496, "conv3": 18_496, "final_conv": 289},
}
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def read_manifest(kind: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (MANIFESTS / f"{kind}.tsv").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split(",")) if shape else (), dtype))
    return rows


def random_state(rows, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in rows:
        if DTYPES[dtype].is_floating_point:
            state[key] = torch.randn(shape, generator=gen)
        else:
            state[key] = torch.randint(0, 1000, shape, generator=gen, dtype=DTYPES[dtype])
    return state


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def mivos_nets() -> dict[str, nn.Module]:
    return {kind: build() for kind, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def official_files(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """Random weights in the official layout, saved like the released files (plain dicts)."""
    folder = tmp_path_factory.mktemp("official")
    files = {}
    for i, kind in enumerate(BUILDERS):
        state = random_state(read_manifest(kind), seed=i)
        path = folder / f"{kind}.pth"
        torch.save(state, path)
        files[kind] = (path, state)
    return files


# ---------------------------------------------------------------- official layouts


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_manifest_equals_our_state_dict(kind, mivos_nets):
    net = mivos_nets[kind]
    ours = [
        (k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in net.state_dict().items()
    ]
    assert ours == read_manifest(kind)  # same keys, same order, same shapes and dtypes
    assert count_parameters(net) == OFFICIAL_PARAMS[kind]
    for name, expected in OFFICIAL_MODULE_PARAMS[kind].items():
        assert count_parameters(getattr(net, name)) == expected, name


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_official_layout_loads_strictly(kind, mivos_nets, official_files):
    net = mivos_nets[kind]
    path, state = official_files[kind]
    assert load_weights(net, path) == ([], [], [])
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_cli_accepts_official_layout(kind, official_files, capsys):
    path, _ = official_files[kind]
    assert main(["--kind", kind, str(path)]) == 0
    assert last_line(capsys.readouterr().out) == f"OK {kind} {OFFICIAL_PARAMS[kind]} parameters"


def test_cli_single_object_stage0_layout(official_files, tmp_path, capsys):
    _, state = official_files["propagation"]
    stage0 = dict(state)
    stage0["mask_rgb_encoder.conv1.weight"] = torch.randn(64, 4, 7, 7)
    path = tmp_path / "stage0.pth"
    torch.save(stage0, path)
    assert main(["--kind", "propagation", "--single-object", str(path)]) == 0
    expected = OFFICIAL_PARAMS["propagation"] - 64 * 7 * 7
    assert last_line(capsys.readouterr().out) == f"OK propagation {expected} parameters"


# ---------------------------------------------------------------- mismatches


@pytest.fixture()
def fusion_state(mivos_nets) -> dict[str, torch.Tensor]:
    return random_state(read_manifest("fusion"), seed=7)


def _expect_mismatch(net: nn.Module, state: dict, path: Path) -> CheckpointMismatchError:
    torch.save(state, path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(net, path)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "failed load changed weights"
    assert str(path) in str(info.value)
    return info.value


def test_missing_key_is_reported(fusion_state, tmp_path):
    del fusion_state["conv2.2.bias"]
    err = _expect_mismatch(build_fusion(), fusion_state, tmp_path / "missing.pth")
    assert err.missing == ["conv2.2.bias"] and not err.unexpected and not err.shape_mismatch
    assert "conv2.2.bias" in str(err)


def test_wrong_shape_is_reported_with_both_shapes(fusion_state, tmp_path):
    fusion_state["conv1.0.weight"] = torch.randn(32, 8, 3, 3)
    err = _expect_mismatch(build_fusion(), fusion_state, tmp_path / "shape.pth")
    assert err.shape_mismatch == [("conv1.0.weight", (32, 8, 3, 3), (32, 9, 3, 3))]
    message = str(err)
    assert "conv1.0.weight" in message and "[32, 8, 3, 3]" in message and "[32, 9, 3, 3]" in message


def test_extra_key_is_reported(fusion_state, tmp_path):
    fusion_state["conv4.0.weight"] = torch.randn(3)
    err = _expect_mismatch(build_fusion(), fusion_state, tmp_path / "extra.pth")
    assert err.unexpected == ["conv4.0.weight"] and not err.missing
    assert "conv4.0.weight" in str(err)


def test_cli_lists_mismatch_on_stderr(fusion_state, tmp_path, capsys):
    fusion_state["final_conv.weight"] = torch.randn(2, 32, 3, 3)
    del fusion_state["conv3.0.bias"]
    path = tmp_path / "bad_fusion.pth"
    torch.save(fusion_state, path)
    assert main(["--kind", "fusion", str(path)]) != 0
    captured = capsys.readouterr()
    assert "OK" not in captured.out
    assert str(path) in captured.err
    assert "conv3.0.bias" in captured.err and "final_conv.weight" in captured.err


def test_wrong_kind_fails(official_files, capsys):
    path, _ = official_files["fusion"]
    assert main(["--kind", "s2m", "--preset", "lite", str(path)]) == 1
    err = capsys.readouterr().err
    assert "backbone.conv1.weight" in err and "conv1.0.weight" in err


def test_non_strict_load_skips_and_reports(fusion_state, tmp_path):
    fusion_state["final_conv.weight"] = torch.randn(2, 32, 3, 3)
    path = tmp_path / "partial.pth"
    torch.save(fusion_state, path)
    net = build_fusion()
    result = load_weights(net, path, strict=False)
    assert [k for k, _, _ in result.shape_mismatch] == ["final_conv.weight"]
    assert torch.equal(net.conv1[0].weight, fusion_state["conv1.0.weight"])
    assert torch.equal(net.final_conv.bias, fusion_state["final_conv.bias"])


# ---------------------------------------------------------------- wrappers and formats


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"it": 10, "network": {f"module.{k}": v for k, v in sd.items()}, "lr": [0.1]},
        lambda sd: {"model_state": sd},
        lambda sd: {"net": sd},
        lambda sd: {"model": sd},
    ],
    ids=["ddp", "compile", "state_dict", "resumable", "model_state", "net", "model"],
)
def test_wrapped_and_prefixed_files_load(wrap, fusion_state, tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(fusion_state), path)
    net = build_fusion()
    load_weights(net, path)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in fusion_state.items())


def test_missing_num_batches_tracked_is_tolerated(tmp_path, caplog):
    source = build_s2m("lite")
    for m in source.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight)
            m.num_batches_tracked.fill_(5)
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "no_nbt.pth"
    torch.save(state, path)
    target = build_s2m("lite")
    with caplog.at_level(logging.INFO, logger="model.checkpoint"):
        load_weights(target, path)
    assert "num_batches_tracked" in caplog.text
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert int(target.backbone.bn1.num_batches_tracked) == 0  # kept from the network


def test_missing_num_batches_tracked_plus_other_key_still_fails(tmp_path):
    state = build_s2m("lite").state_dict()
    state = {k: v for k, v in state.items() if "num_batches_tracked" not in k}
    del state["backbone.bn1.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(build_s2m("lite"), path)
    assert info.value.missing == ["backbone.bn1.weight"]


def test_garbage_file_gives_clear_error(tmp_path, capsys):
    path = tmp_path / "garbage.pth"
    path.write_bytes(os.urandom(2048))
    with pytest.raises(CheckpointFormatError, match="not a readable PyTorch checkpoint") as info:
        load_state_dict_file(path)
    assert str(path) in str(info.value)
    assert main(["--kind", "fusion", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_truncated_checkpoint_gives_clear_error(fusion_state, tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save(fusion_state, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointFormatError, match="truncated.pth"):
        load_weights(build_fusion(), path)


@pytest.mark.parametrize("content", [[1, 2, 3], {"epoch": 3, "lr": 0.1}, {}])
def test_checkpoint_without_state_dict_gives_clear_error(content, tmp_path):
    path = tmp_path / "nostate.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointFormatError, match="holds no state dict"):
        load_state_dict_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_weights(build_fusion(), tmp_path / "nothing.pth")


# ---------------------------------------------------------------- lite round trips


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_lite_round_trip_through_save_weights(kind, tmp_path, capsys):
    torch.manual_seed(3)
    source = BUILDERS[kind]("lite")
    path = tmp_path / "sub" / f"{kind}.pth"
    save_weights(source, path)
    save_weights(source.state_dict(), path)  # overwriting an existing file works too
    assert os.listdir(path.parent) == [path.name]  # no temporary files left behind
    torch.manual_seed(4)
    target = BUILDERS[kind]("lite")
    load_weights(target, path)
    src, dst = source.state_dict(), target.state_dict()
    assert list(src) == list(dst)
    assert all(torch.equal(src[k], dst[k]) for k in src)
    assert main(["--kind", kind, "--preset", "lite", str(path)]) == 0
    assert last_line(capsys.readouterr().out) == f"OK {kind} {count_parameters(source)} parameters"


def test_cli_subprocess(tmp_path):
    net = build_propagation("lite", single_object=True)
    path = tmp_path / "prop_lite_s0.pth"
    save_weights(net, path)
    cmd = [sys.executable, "-m", "model.checkpoint", "--kind", "propagation", "--preset", "lite",
           "--single-object", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    ok = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert last_line(ok.stdout) == f"OK propagation {count_parameters(net)} parameters"
    # The same file does not fit the 5-channel (multi-object) network.
    bad = subprocess.run(cmd[:-2] + [str(path)], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1
    assert "mask_rgb_encoder.conv1.weight" in bad.stderr and "[64, 4, 7, 7]" in bad.stderr
    assert "--preset" in subprocess.run(cmd[:3] + ["--help"], cwd=REPO_ROOT, env=env,
                                        capture_output=True, text=True, timeout=120).stdout


def test_save_weights_unwraps_ddp_style_prefix_on_load(tmp_path):
    net = build_fusion("lite")
    wrapped = nn.DataParallel(net)
    path = tmp_path / "dp.pth"
    save_weights(wrapped, path)
    assert all(not k.startswith("module.") for k in torch.load(path, weights_only=True))
    load_weights(nn.DataParallel(build_fusion("lite")), path)


# ---------------------------------------------------------------- ImageNet / DeepLab init


@pytest.fixture()
def fake_imagenet_r18(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision-style ResNet-18 file: 3-ch stem, no conv biases, fc, no num_batches_tracked."""
    torch.manual_seed(11)
    net = ResNet("resnet18", in_channels=3, last_layer=4)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight)
            nn.init.uniform_(m.bias)
    state = {k: v for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("init", ["orthogonal", "zeros"])
def test_load_imagenet_weights_widens_stem(init, fake_imagenet_r18):
    path, state = fake_imagenet_r18
    net = ResNet("resnet18", in_channels=5, conv_bias=True, last_layer=3)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.ones_(m.bias)
    load_weights(net, path, adapt=imagenet_resnet(extra_channel_init=init))

    w = net.conv1.weight.detach()
    assert w.shape == (64, 5, 7, 7)
    assert torch.equal(w[:, :3], state["conv1.weight"])
    extra = w[:, 3:].reshape(64, -1)  # 64 x 98
    if init == "orthogonal":
        assert extra.abs().sum() > 0
        assert torch.allclose(extra @ extra.T, torch.eye(64), atol=1e-4)  # orthonormal rows
    else:
        assert torch.count_nonzero(extra) == 0
    loaded = net.state_dict()
    for key, value in loaded.items():
        if key.endswith(".bias") and key not in state:
            assert torch.count_nonzero(value) == 0, key  # conv biases absent from the file
        elif key in state and key != "conv1.weight":
            assert torch.equal(value, state[key]), key
    assert not hasattr(net, "layer4")


def test_query_encoder_imagenet_rename(fake_imagenet_r18):
    path, state = fake_imagenet_r18
    net = build_propagation("lite")
    load_imagenet(net, path)
    assert torch.equal(net.rgb_encoder.res2[1].conv2.weight, state["layer1.1.conv2.weight"])
    assert torch.equal(net.rgb_encoder.conv1.weight, state["conv1.weight"])
    assert torch.equal(net.mask_rgb_encoder.layer3[0].downsample[0].weight,
                       state["layer3.0.downsample.0.weight"])
    assert torch.count_nonzero(net.mask_rgb_encoder.layer2[0].conv1.bias) == 0


def test_imagenet_weights_of_wrong_depth_fail(fake_imagenet_r18):
    path, _ = fake_imagenet_r18
    with pytest.raises(CheckpointMismatchError, match="resnet18_imagenet.pth"):
        load_weights(ResNet("resnet50", last_layer=3), path, adapt=imagenet_resnet())


def test_adapt_input_conv():
    w = torch.randn(64, 4, 7, 7)
    wide = adapt_input_conv(w, 5)
    assert wide.shape == (64, 5, 7, 7)
    assert torch.equal(wide[:, :4], w)
    assert torch.allclose(wide[:, 4].reshape(64, -1).norm(dim=0), torch.ones(49), atol=1e-4)
    assert torch.count_nonzero(adapt_input_conv(w, 6, "zeros")[:, 4:]) == 0
    with pytest.raises(ValueError, match="narrow"):
        adapt_input_conv(w, 3)


def test_load_deeplab_init(tmp_path):
    """A VainF-style file (3-ch stem, 21 classes, under 'model_state') initialises S2M."""
    torch.manual_seed(5)
    donor = build_s2m("lite")
    state = dict(donor.state_dict())
    state["backbone.conv1.weight"] = torch.randn(64, 3, 7, 7)
    head_c = state["classifier.classifier.3.weight"].shape[1]
    state["classifier.classifier.3.weight"] = torch.randn(21, head_c, 1, 1)
    state["classifier.classifier.3.bias"] = torch.randn(21)
    path = tmp_path / "best_deeplabv3plus_resnet50_voc_os16.pth"
    torch.save({"model_state": state, "cur_itrs": 30000}, path)

    net = build_s2m("lite")
    load_weights(net, path, adapt=deeplab_s2m())
    w = net.backbone.conv1.weight.detach()
    assert torch.equal(w[:, :3], state["backbone.conv1.weight"])
    extra = w[:, 3:].reshape(64, -1)
    assert torch.allclose(extra @ extra.T, torch.eye(64), atol=1e-4)
    final = net.classifier.classifier[3]
    assert final.weight.shape == (1, head_c, 1, 1)
    assert torch.allclose(final.weight.norm(), torch.tensor(1.0), atol=1e-5)  # orthogonal row
    assert torch.count_nonzero(final.bias) == 0
    assert torch.equal(net.classifier.aspp.convs[4][1].weight,
                       state["classifier.aspp.convs.4.1.weight"])

    del state["classifier.project.0.weight"]
    torch.save({"model_state": state}, path)
    with pytest.raises(CheckpointMismatchError, match="classifier.project.0.weight"):
        load_weights(build_s2m("lite"), path, adapt=deeplab_s2m())
