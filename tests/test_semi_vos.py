"""Semi-supervised VOS: the forward propagator and eval_semi_vos.py on tiny generated datasets.

Everything runs on the CPU with ``lite`` networks and random weights on data generated here in
the DAVIS 2017 / DAVIS 2016 / YouTubeVOS / generic layouts (3 sequences x 6 frames x 48 x 64).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import eval_semi_vos
from inference.semi_vos import SemiVOSConfig, SemiVOSPropagator
from model.presets import build_propagation
from util.palette import colorize, read_mask, write_palette_png

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64
T = 6
SEQS = {"alpha": [1, 2], "beta": [1], "gamma": [1, 2]}


# ---------------------------------------------------------------------------------------------
# data generation
# ---------------------------------------------------------------------------------------------


def _boxes(t: int, ids: list[int], h: int = H, w: int = W) -> np.ndarray:
    """Label map of frame t: object k is a box that moves 2 px per frame."""
    m = np.zeros((h, w), np.uint8)
    for k, i in enumerate(ids):
        y, x = 6 + 20 * k, 4 + 2 * t + 6 * k
        m[y:y + 14, x:x + 20] = i
    return m


def _frame(t: int, labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 110, size=(*labels.shape, 3), dtype=np.uint8)
    colours = {1: (220, 40, 40), 2: (40, 200, 60), 3: (30, 60, 220), 7: (230, 220, 30)}
    for i, c in colours.items():
        img[labels == i] = c
    return img


def _write_jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def make_davis(root: Path, seqs: dict[str, list[int]] = SEQS, n: int = T,
               sets: tuple[str, ...] = ("2017",)) -> Path:
    """DAVIS layout: JPEGImages/480p, Annotations/480p (every frame), ImageSets/<set>/val.txt."""
    for s, (name, ids) in enumerate(seqs.items()):
        for t in range(n):
            lab = _boxes(t, ids)
            _write_jpg(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", _frame(t, lab, s))
            write_palette_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", lab)
    for st in sets:
        (root / "ImageSets" / st).mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / st / "val.txt").write_text("".join(f"{k}\n" for k in seqs))
    return root


def make_youtube(root: Path, n: int = 16) -> Path:
    """YouTubeVOS layout: object 3 appears at frame 00005, object 7 at frame 00010."""
    valid = root / "valid"
    names = [f"{t:05d}" for t in range(n)]
    for t, nm in enumerate(names):
        lab = np.zeros((H, W), np.uint8)
        if t >= 5:
            lab[6:20, 4 + t:24 + t] = 3
        if t >= 10:
            lab[28:44, 30:50] = 7
        img = _frame(t, lab, 5)
        _write_jpg(root / "valid_all_frames" / "JPEGImages" / "vid" / f"{nm}.jpg", img)
        if t % 5 == 0:
            _write_jpg(valid / "JPEGImages" / "vid" / f"{nm}.jpg", img)
        if t == 5:
            write_palette_png(valid / "Annotations" / "vid" / f"{nm}.png", lab)
        if t == 10:
            write_palette_png(valid / "Annotations" / "vid" / f"{nm}.png", np.where(lab == 7, 7, 0))
    meta = {"videos": {"vid": {"objects": {
        "3": {"category": "cat", "frames": ["00005", "00010", "00015"]},
        "7": {"category": "dog", "frames": ["00010", "00015"]},
    }}}}
    (valid / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny inputs: one torch thread (avoids OpenMP spinning on a busy, shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def davis_master(tmp_path_factory) -> Path:
    return make_davis(tmp_path_factory.mktemp("davis") / "DAVIS")


@pytest.fixture
def davis(davis_master, tmp_path) -> Path:
    """A private copy (tests may damage it)."""
    return Path(shutil.copytree(davis_master, tmp_path / "DAVIS"))


@pytest.fixture(scope="module")
def lite_net():
    torch.manual_seed(0)
    return build_propagation("lite").eval()


def run(argv: list[str], capsys=None) -> tuple[int, str, str]:
    code = eval_semi_vos.main([str(a) for a in argv])
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def lite_args(dataset: str, root: Path, out: Path, *extra) -> list[str]:
    return ["--dataset", dataset, "--root", root, "--output", out, "--preset", "lite",
            "--random-weights", "--device", "cpu", "--no-progress", *extra]


def read_scores(path: Path) -> dict[str, dict[str, float]]:
    with open(path, newline="") as fh:
        return {r["sequence"]: r for r in csv.DictReader(fh)}


def png_mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.png")}


# ---------------------------------------------------------------------------------------------
# scoring path: perfect and damaged predictions
# ---------------------------------------------------------------------------------------------


def test_perfect_prediction_scores_one(davis_master, tmp_path, capsys):
    out = tmp_path / "out"
    for name in SEQS:
        shutil.copytree(davis_master / "Annotations" / "480p" / name, out / name)
    code, stdout, _ = run(["--dataset", "davis2017", "--root", davis_master, "--output", out,
                           "--score-only"], capsys)
    assert code == 0, stdout
    scores = read_scores(out / "scores.csv")
    assert set(scores) == {*SEQS, "overall"}
    for row in scores.values():
        assert float(row["J-Mean"]) == 1.0 and float(row["F-Mean"]) == 1.0
        assert float(row["J&F-Mean"]) == 1.0
    assert int(scores["overall"]["objects"]) == 5
    assert "overall" in stdout and "1.0000" in stdout


def test_eroded_prediction_scores_lower_by_iou(davis_master, tmp_path, capsys):
    out = tmp_path / "out"
    kernel = np.ones((5, 5), np.uint8)
    per_object = []
    for name, ids in SEQS.items():
        ious = {i: [] for i in ids}
        for t in range(T):
            gt = read_mask(davis_master / "Annotations" / "480p" / name / f"{t:05d}.png")
            pred = np.zeros_like(gt)
            for i in ids:
                e = cv2.erode((gt == i).astype(np.uint8), kernel)
                pred[e > 0] = i
                if 0 < t < T - 1:  # DAVIS protocol: first and last frame not scored
                    g, p = gt == i, e > 0
                    ious[i].append((g & p).sum() / (g | p).sum())
            write_palette_png(out / name / f"{t:05d}.png", pred)
        per_object += [np.mean(v) for v in ious.values()]
    expected_j = float(np.mean(per_object))
    assert 0.4 < expected_j < 0.8  # 14x20 boxes eroded by 2 px on each side: 10*16/280

    code, stdout, _ = run(["--dataset", "davis2017", "--root", davis_master, "--output", out,
                           "--score-only"], capsys)
    assert code == 0
    overall = read_scores(out / "scores.csv")["overall"]
    assert float(overall["J-Mean"]) == pytest.approx(expected_j, abs=2e-6)
    assert float(overall["F-Mean"]) < 0.9
    assert float(overall["J&F-Mean"]) == pytest.approx(
        (float(overall["J-Mean"]) + float(overall["F-Mean"])) / 2, abs=2e-6)


# ---------------------------------------------------------------------------------------------
# the propagator
# ---------------------------------------------------------------------------------------------


def _video(n: int, h: int = 40, w: int = 56):
    labels = [_boxes(t, [1, 2], h, w) for t in range(n)]
    frames = [_frame(t, labels[t], 0) for t in range(n)]
    return frames, labels


def test_memory_schedule_single_group(lite_net):
    frames, labels = _video(12)
    prop = SemiVOSPropagator(lite_net, SemiVOSConfig(record_memory=True))
    results = list(prop.propagate(frames, {0: labels[0]}, 2))
    assert [r.index for r in results] == list(range(12))
    mem = {r.index: r.memory for r in results}
    assert mem[0] == []  # the annotated first frame is not segmented
    assert mem[1] == [([1, 2], [0], None)]
    assert mem[2] == [([1, 2], [0], 1)]  # previous frame as temporary memory
    assert mem[6] == [([1, 2], [0, 5], None)]  # every 5th frame becomes permanent
    assert mem[9] == [([1, 2], [0, 5], 8)]
    assert mem[11] == [([1, 2], [0, 5, 10], None)]
    # the first frame's output is its annotation (non-multiple-of-16 size, cropped back)
    assert results[0].labels.shape == (40, 56) and results[0].labels.dtype == np.uint8
    assert np.array_equal(results[0].labels, labels[0])
    assert all(r.seconds > 0 for r in results)
    assert set(np.unique(np.stack([r.labels for r in results]))) <= {0, 1, 2}


def test_objects_enter_late_with_their_own_memory(lite_net):
    frames, _ = _video(9)
    a = np.zeros((40, 56), np.uint8)
    a[5:15, 5:20] = 1
    b = np.zeros((40, 56), np.uint8)
    b[20:35, 30:50] = 2
    prop = SemiVOSPropagator(lite_net, SemiVOSConfig(mem_every=3, record_memory=True))
    results = list(prop.propagate(frames, {2: a, 5: b}, 2, output_size=(80, 112)))
    assert [r.index for r in results] == list(range(2, 9))  # nothing before the first annotation
    mem = {r.index: r.memory for r in results}
    assert mem[5] == [([1], [2], 4)]
    # the frame with the new object is permanent for both groups; object 2 only from there on
    assert mem[6] == [([1], [2, 5], None), ([2], [5], None)]
    assert mem[8] == [([1], [2, 5], 7), ([2], [5], 7)]  # 8 - 5 < 3: 6, 7 were temporary
    by_t = {r.index: r.labels for r in results}
    assert by_t[2].shape == (80, 112)  # resized to the output size
    for t in (2, 3, 4):
        assert not (by_t[t] == 2).any()  # object 2 absent before its first frame
    big_b = cv2.resize(b, (112, 80), interpolation=cv2.INTER_NEAREST)
    assert (by_t[5][big_b == 2] == 2).mean() > 0.95  # overwritten by the annotation
    assert results[3].annotated and not results[1].annotated


@pytest.mark.parametrize("top_k,amp", [(None, None), (50, "bf16")])
def test_full_softmax_and_autocast(lite_net, top_k, amp, monkeypatch):
    # bf16 is what is tested: keep it on CPUs that would emulate it (util.amp.resolve_amp)
    monkeypatch.setenv("MIVOS_ALLOW_EMULATED_BF16", "1")
    frames, labels = _video(4)
    prop = SemiVOSPropagator(lite_net, SemiVOSConfig(top_k=top_k, amp=amp))
    out = list(prop.propagate(frames, {0: labels[0]}, 2))
    assert len(out) == 4 and out[-1].labels.shape == (40, 56)


def test_propagator_rejects_bad_input(lite_net):
    frames, labels = _video(3)
    prop = SemiVOSPropagator(lite_net)
    with pytest.raises(ValueError, match="at least one annotated frame"):
        list(prop.propagate(frames, {}, 2))
    with pytest.raises(ValueError, match="outside 1..1"):
        list(prop.propagate(frames, {0: labels[0]}, 1))
    with pytest.raises(ValueError, match="frame 1 has shape"):
        list(prop.propagate([frames[0], frames[1][:-8]], {0: labels[0]}, 2))
    with pytest.raises(ValueError, match="top_k"):
        SemiVOSConfig(top_k=0).validate()


# ---------------------------------------------------------------------------------------------
# the script end to end
# ---------------------------------------------------------------------------------------------


def test_davis2017_end_to_end(davis_master, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(lite_args("davis2017", davis_master, out), capsys)
    assert code == 0
    for name, ids in SEQS.items():
        files = sorted(p.name for p in (out / name).glob("*.png"))
        assert files == [f"{t:05d}.png" for t in range(T)]
        for f in files:
            img = Image.open(out / name / f)
            assert img.mode == "P" and img.size == (W, H)
            assert set(np.unique(np.array(img)).tolist()) <= {0, *ids}
        first = read_mask(out / name / "00000.png")
        assert np.array_equal(first, _boxes(0, ids))  # the first frame is the ground truth
        assert (out / ".done" / f"{name}.json").is_file()
    scores = read_scores(out / "scores.csv")
    assert list(scores) == [*SEQS, "overall"]
    assert 0.0 <= float(scores["overall"]["J&F-Mean"]) <= 1.0
    info = json.loads((out / "run_info.json").read_text())
    assert info["fps"] > 0 and info["total_frames"] == 3 * T
    assert set(info["sequences"]) == set(SEQS)
    assert all(s["frames"] == T and s["seconds"] > 0 for s in info["sequences"].values())
    assert info["options"]["top_k"] == 50 and info["resolved"]["size"] == -1
    assert info["scores"]["overall"]["J&F"] == pytest.approx(float(scores["overall"]["J&F-Mean"]), abs=1e-6)
    assert "FPS:" in stdout and "overall" in stdout


def test_youtube_object_appearing_mid_video(tmp_path, capsys):
    root = make_youtube(tmp_path / "YouTube")
    out = tmp_path / "out"
    code, stdout, _ = run(lite_args("youtube2019", root, out, "--size", "32"), capsys)
    assert code == 0
    assert "not scored" in stdout and "YouTubeVOS" in stdout
    assert not (out / "scores.csv").exists()
    ann = out / "Annotations" / "vid"
    assert sorted(p.name for p in ann.glob("*.png")) == [f"{t:05d}.png" for t in range(5, 16)]
    masks = {t: read_mask(ann / f"{t:05d}.png") for t in range(5, 16)}
    for t, m in masks.items():
        assert m.shape == (H, W) and Image.open(ann / f"{t:05d}.png").mode == "P"
        assert set(np.unique(m).tolist()) <= {0, 3, 7}  # original ids preserved
    assert (masks[5] == 3).sum() > 100  # present at its first annotated frame
    for t in range(5, 10):
        assert not (masks[t] == 7).any()  # object 7 absent before its first frame
    gt7 = np.zeros((H, W), bool)
    gt7[28:44, 30:50] = True
    assert (masks[10][gt7] == 7).mean() > 0.9  # present at its first annotated frame
    info = json.loads((out / "run_info.json").read_text())
    assert info["sequences"]["vid"]["frames"] == 11 and info["resolved"]["size"] == 32
    assert info["scores"] is None


def test_resume_skips_finished_sequences(davis_master, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(lite_args("davis2017", davis_master, out, "--no-score"), capsys)[0] == 0
    first = png_mtimes(out)
    assert len(first) == 3 * T
    code, _, _ = run(lite_args("davis2017", davis_master, out, "--no-score"), capsys)
    assert code == 0 and png_mtimes(out) == first
    info = json.loads((out / "run_info.json").read_text())
    assert all(s["resumed"] for s in info["sequences"].values())
    assert info["total_frames"] == 3 * T and info["frames_this_run"] == 0
    # a missing marker (interrupted run) and a missing PNG both force a recompute
    (out / ".done" / "beta.json").unlink()
    (out / "gamma" / "00003.png").unlink()
    assert run(lite_args("davis2017", davis_master, out, "--no-score"), capsys)[0] == 0
    third = png_mtimes(out)
    assert set(third) == set(first)
    for k, v in third.items():
        assert (v == first[k]) == k.startswith("alpha"), k
    info = json.loads((out / "run_info.json").read_text())
    assert [n for n, s in info["sequences"].items() if not s["resumed"]] == ["beta", "gamma"]
    # other options: refused (never mixed with the old outputs), or recomputed with --restart
    code, _, err = run(lite_args("davis2017", davis_master, out, "--no-score", "--mem-every", "2"),
                       capsys)
    assert code == 2 and "config.mem_every: 5 -> 2" in err and "--restart" in err
    assert png_mtimes(out) == third
    assert run(lite_args("davis2017", davis_master, out, "--no-score", "--mem-every", "2",
                         "--restart"), capsys)[0] == 0
    info = json.loads((out / "run_info.json").read_text())
    assert not any(s["resumed"] for s in info["sequences"].values())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_single_process(davis_master, tmp_path, capsys):
    single, multi = tmp_path / "single", tmp_path / "multi"
    code, _, _ = run(lite_args("davis2017", davis_master, single, "--threads", "1"), capsys)
    assert code == 0
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, str(REPO / "eval_semi_vos.py"),
               *map(str, lite_args("davis2017", davis_master, multi, "--threads", "1"))]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_out, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    assert "overall" in outs[0][0] and "FPS" in outs[0][0]  # rank 0 prints the merged table
    assert "overall" not in outs[1][0]
    a, b = png_mtimes(single), png_mtimes(multi)
    assert set(a) == set(b) and len(a) == 3 * T
    for rel in a:
        assert np.array_equal(read_mask(single / rel), read_mask(multi / rel)), rel
    assert read_scores(single / "scores.csv") == read_scores(multi / "scores.csv")
    info = json.loads((multi / "run_info.json").read_text())
    assert info["resolved"]["world_size"] == 2
    assert {n: s["rank"] for n, s in info["sequences"].items()} == {"alpha": 0, "beta": 1, "gamma": 0}


# ---------------------------------------------------------------------------------------------
# checkpoints and bad input
# ---------------------------------------------------------------------------------------------


def test_checkpoint_options(davis_master, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run(["--dataset", "davis2017", "--root", davis_master, "--output", out,
             "--prop-model", tmp_path / "nope.pth", "--preset", "lite"])
    assert e.value.code == 2 and "checkpoint file not found" in capsys.readouterr().err
    assert not out.exists()  # no work done
    with pytest.raises(SystemExit):
        run(["--dataset", "davis2017", "--root", davis_master, "--output", out, "--preset", "lite"])
    assert "--random-weights" in capsys.readouterr().err
    # a strictly loaded checkpoint gives the same masks as the same random initialisation
    torch.manual_seed(0)
    net = build_propagation("lite")
    ckpt = tmp_path / "lite.pth"
    torch.save(net.state_dict(), ckpt)
    ref = tmp_path / "ref"
    args = ["--dataset", "davis2017", "--root", davis_master, "--preset", "lite", "--device",
            "cpu", "--no-progress", "--no-score", "--sequences", "beta"]
    assert run([*args, "--output", out, "--prop-model", ckpt], capsys)[0] == 0
    assert run([*args, "--output", ref, "--random-weights", "--seed", "0"], capsys)[0] == 0
    for t in range(T):
        rel = f"beta/{t:05d}.png"
        assert np.array_equal(read_mask(out / rel), read_mask(ref / rel))
    # a checkpoint that does not match the network: clear error naming the file
    state = net.state_dict()
    state.pop(next(iter(state)))
    torch.save(state, ckpt)
    code, _, err = run([*args, "--output", tmp_path / "bad", "--prop-model", ckpt], capsys)
    assert code == 2 and "lite.pth" in err and "missing keys" in err


def test_missing_and_mismatched_input(davis, tmp_path, capsys):
    args = lambda out, *x: lite_args("davis2017", davis, tmp_path / out, "--no-score", *x)  # noqa: E731
    shutil.rmtree(davis / "JPEGImages" / "480p" / "beta")
    code, _, err = run(args("o1"), capsys)
    assert code == 2 and "JPEGImages/480p/beta" in err
    (davis / "JPEGImages" / "480p" / "beta").mkdir()
    code, _, err = run(args("o2", "--sequences", "beta"), capsys)
    assert code == 2 and "no frames" in err
    # annotation / image size mismatch names both files
    write_palette_png(davis / "Annotations" / "480p" / "gamma" / "00000.png", _boxes(0, [1, 2], H + 8, W))
    code, _, err = run(args("o3", "--sequences", "gamma"), capsys)
    assert code == 2 and "size mismatch" in err and "gamma/00000.png" in err
    # unknown sequence
    code, _, err = run(args("o4", "--sequences", "delta"), capsys)
    assert code == 2 and "delta" in err
    # --keep-going: the broken sequence is reported, the others are written
    code, _, err = run(args("o5", "--keep-going"), capsys)
    assert code == 1 and "beta" in err and "gamma" in err
    assert len(list((tmp_path / "o5" / "alpha").glob("*.png"))) == T


def test_non_palette_and_binary_masks(davis, tmp_path, capsys):
    ann = davis / "Annotations" / "480p"
    # gamma: small-label grayscale DAVIS annotation (mode L, values 0/1/2): stored ids, accepted
    Image.fromarray(_boxes(0, [1, 2])).save(ann / "gamma" / "00000.png")
    out = tmp_path / "out"
    code, stdout, err = run(lite_args("davis2017", davis, out, "--sequences", "gamma"), capsys)
    assert code == 0, err
    assert np.array_equal(read_mask(out / "gamma" / "00000.png"), _boxes(0, [1, 2]))
    # DAVIS annotations are read as the official tools read them: an RGB image is refused and a
    # 0/255 image holds only void (255), so no object
    Image.fromarray(colorize(_boxes(0, [1, 2]))).save(ann / "alpha" / "00000.png")
    code, _, err = run(lite_args("davis2017", davis, tmp_path / "o2", "--sequences", "alpha"), capsys)
    assert code == 2 and "alpha/00000.png: RGB image" in err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
    Image.fromarray((_boxes(0, [1]) > 0).astype(np.uint8) * 255).save(ann / "beta" / "00000.png")
    code, _, err = run(lite_args("davis2017", davis, tmp_path / "o3", "--sequences", "beta"), capsys)
    assert code == 2 and "beta/00000.png: the first-frame annotation contains no object" in err
    # generic masks keep the convenient rules: DAVIS-coloured RGB, 0/255 grayscale = one object
    code, _, err = run(lite_args("generic", davis / "JPEGImages" / "480p" / "alpha", tmp_path / "g1",
                                 "--masks", ann / "alpha" / "00000.png"), capsys)
    assert code == 0, err
    assert np.array_equal(read_mask(tmp_path / "g1" / "alpha" / "00000.png"), _boxes(0, [1, 2]))
    code, _, err = run(lite_args("generic", davis / "JPEGImages" / "480p" / "beta", tmp_path / "g2",
                                 "--masks", ann / "beta" / "00000.png"), capsys)
    assert code == 0, err
    assert np.array_equal(read_mask(tmp_path / "g2" / "beta" / "00000.png"), _boxes(0, [1]))


def test_davis2016_binary_outputs(tmp_path, capsys):
    root = make_davis(tmp_path / "DAVIS", {"alpha": [1, 2], "beta": [1]}, n=4, sets=("2016",))
    out = tmp_path / "out"
    code, stdout, err = run(lite_args("davis2016", root, out), capsys)
    assert code == 0, err
    img = Image.open(out / "alpha" / "00000.png")
    assert img.mode == "L" and set(np.unique(np.array(img)).tolist()) == {0, 255}
    assert np.array_equal(np.array(img) > 0, _boxes(0, [1, 2]) > 0)  # both objects merged
    scores = read_scores(out / "scores.csv")
    assert int(scores["alpha"]["objects"]) == 1 and int(scores["overall"]["objects"]) == 2
    # a perfect binary prediction scores 1 against the multi-object ground truth
    perfect = tmp_path / "perfect"
    for name in ("alpha", "beta"):
        for t in range(4):
            gt = read_mask(root / "Annotations" / "480p" / name / f"{t:05d}.png")
            (perfect / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(((gt > 0) * 255).astype(np.uint8)).save(perfect / name / f"{t:05d}.png")
    code, _, _ = run(["--dataset", "davis2016", "--root", root, "--output", perfect, "--score-only"], capsys)
    assert code == 0 and float(read_scores(perfect / "scores.csv")["overall"]["J&F-Mean"]) == 1.0


def test_generic_folder_of_sequences(davis_master, tmp_path, capsys):
    frames_root = tmp_path / "videos"
    masks = tmp_path / "masks"
    for name in ("alpha", "beta"):
        shutil.copytree(davis_master / "JPEGImages" / "480p" / name, frames_root / name)
    masks.mkdir()
    shutil.copy(davis_master / "Annotations" / "480p" / "alpha" / "00000.png", masks / "alpha.png")
    (masks / "beta").mkdir()  # a mask folder: the annotated frame is 00002
    shutil.copy(davis_master / "Annotations" / "480p" / "beta" / "00002.png", masks / "beta" / "00002.png")
    out = tmp_path / "out"
    code, stdout, err = run(lite_args("generic", frames_root, out, "--masks", masks), capsys)
    assert code == 0, err
    assert len(list((out / "alpha").glob("*.png"))) == T
    # output from the annotated frame on
    assert sorted(p.name for p in (out / "beta").glob("*.png")) == [f"{t:05d}.png" for t in range(2, T)]
    assert np.array_equal(read_mask(out / "beta" / "00002.png"), _boxes(2, [1]))
    assert "not scored" in stdout
    # a single sequence (frames folder + one mask file), scored against --gt
    one = tmp_path / "one"
    code, stdout, err = run(lite_args("generic", frames_root / "alpha", one, "--masks",
                                      masks / "alpha.png", "--gt",
                                      davis_master / "Annotations" / "480p"), capsys)
    assert code == 0, err
    assert len(list((one / "alpha").glob("*.png"))) == T
    assert list(read_scores(one / "scores.csv")) == ["alpha", "overall"]
    with pytest.raises(SystemExit):
        run(lite_args("generic", frames_root, out))  # --masks is required
    capsys.readouterr()
