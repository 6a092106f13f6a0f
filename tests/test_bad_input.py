"""Bad input, table-driven: every command-line entry point, in-process, on tiny generated data
with one defect at a time. A bad input must end with exit status 2 and one line
``error: <file>: <problem>`` naming the file; the object-set cases that are valid input must
follow the benchmark's rule instead (checked here as well).

CLIs: E1 eval_davis_interactive, E2 eval_semi_vos (davis2017), T1 train_s2m, T2 train_prop
(stage s2, DAVIS root), T3 train_fusion, G1 dataset.generate_fusion, G2 dataset.synthetic.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dataset.synthetic import SequenceSpec, generate_static_pairs, write_dataset
from util.palette import colorize, read_annotation, read_mask, write_palette_png

SPECS = [SequenceSpec("bi-a", 8, 48, 64, 2, 1, "val"), SequenceSpec("bi-b", 6, 48, 64, 1, 1, "val")]
A = "bi-a"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Pristine inputs, copied for every case: DAVIS-layout videos, static pairs, fusion data,
    and checkpoints (lite propagation, lite S2M, a truncated file)."""
    base = tmp_path_factory.mktemp("bad_input_src")
    davis = base / "davis"
    write_dataset(davis, "tiny", seed=5, specs=SPECS)
    generate_static_pairs(base / "static", 4, 64, 0)
    fusion = base / "fusion"
    fusion.mkdir()
    (fusion / "fusion_run.json").write_text("{}")
    for spec in SPECS:  # two references sharing object 1: enough for FusionDataset's index
        (fusion / spec.name).mkdir()
        refs = {"0": {"objects": [1], "frames": [0, spec.num_frames - 1]},
                "3": {"objects": [1], "frames": [0, spec.num_frames - 1]}}
        (fusion / spec.name / "done.json").write_text(json.dumps({"references": refs}))
    from model.presets import build_propagation, build_s2m

    torch.manual_seed(0)
    torch.save(build_propagation("lite").state_dict(), base / "prop_lite.pth")
    torch.save(build_s2m("lite").state_dict(), base / "s2m_lite.pth")
    (base / "truncated.pth").write_bytes((base / "prop_lite.pth").read_bytes()[:4096])
    return base


@pytest.fixture
def work(sources, tmp_path):
    """A private copy of the inputs."""
    for name in ("davis", "static", "fusion"):
        shutil.copytree(sources / name, tmp_path / name)
    for name in ("prop_lite.pth", "s2m_lite.pth", "truncated.pth"):
        shutil.copy(sources / name, tmp_path / name)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path


# ------------------------------------------------------------------------------------ the CLIs

TRAIN_COMMON = ["--preset", "lite", "--iterations", "1", "--device", "cpu", "--num-workers", "0",
                "--no-tensorboard", "--no-progress", "--crop-size", "32", "--batch-size", "1"]


def _e1(w: Path, davis=None, out=None, ckpt=None, extra=()) -> int:
    import eval_davis_interactive

    argv = ["--davis", str(davis or w / "davis"), "--output", str(out or w / "out"),
            "--preset", "lite", "--device", "cpu", "--max-interactions", "1", *extra]
    argv += ["--oracle", "--fusion", "none", "--prop-model", str(ckpt)] if ckpt else ["--random-weights"]
    return eval_davis_interactive.main(argv)


def _e2(w: Path, davis=None, out=None, ckpt=None, extra=()) -> int:
    import eval_semi_vos

    argv = ["--dataset", "davis2017", "--root", str(davis or w / "davis"), "--output",
            str(out or w / "out"), "--preset", "lite", "--device", "cpu", "--no-progress", *extra]
    argv += ["--prop-model", str(ckpt)] if ckpt else ["--random-weights"]
    return eval_semi_vos.main(argv)


def _t1(w: Path, static=None, out=None, ckpt=None, **_) -> int:
    import train_s2m

    argv = [*TRAIN_COMMON, "--static-roots", str(static or w / "static"), "--output",
            str(out or w / "out")]
    return train_s2m.main(argv + (["--load", str(ckpt)] if ckpt else []))


def _t2(w: Path, davis=None, out=None, ckpt=None, **_) -> int:
    import train_prop

    argv = [*TRAIN_COMMON, "--stage", "s2", "--davis-root", str(davis or w / "davis"),
            "--no-use-youtube", "--output", str(out or w / "out")]
    return train_prop.main(argv + (["--load", str(ckpt)] if ckpt else []))


def _t3(w: Path, davis=None, out=None, ckpt=None, **_) -> int:
    import train_fusion

    argv = [*TRAIN_COMMON, "--video-root", str(davis or w / "davis"), "--fusion-root",
            str(w / "fusion"), "--prop-model", str(ckpt or w / "prop_lite.pth"), "--output",
            str(out or w / "out")]
    return train_fusion.main(argv)


def _g1(w: Path, davis=None, out=None, ckpt=None, **_) -> int:
    from dataset import generate_fusion

    return generate_fusion.main(["--data", str(davis or w / "davis"), "--prop-model",
                                 str(ckpt or w / "prop_lite.pth"), "--preset", "lite",
                                 "--output", str(out or w / "out"), "--subset", "all",
                                 "--no-progress", "--device", "cpu"])


def _g2(w: Path, out=None, **_) -> int:
    from dataset import synthetic

    return synthetic.main(["--out", str(out or w / "out"), "--preset", "tiny", "--no-progress"])


CLIS: dict[str, Callable[..., int]] = {"E1": _e1, "E2": _e2, "T1": _t1, "T2": _t2, "T3": _t3,
                                       "G1": _g1, "G2": _g2}
VIDEO_CLIS = ("E1", "E2", "T2", "T3", "G1")  # read the DAVIS-layout videos
CKPT_CLIS = ("E1", "E2", "T1", "T2", "T3", "G1")  # take a checkpoint


# ------------------------------------------------------------------------------- the defects


def _ann(w: Path, t: int = 0, seq: str = A) -> Path:
    return w / "davis" / "Annotations" / "480p" / seq / f"{t:05d}.png"


def _jpg(w: Path, t: int, seq: str = A) -> Path:
    return w / "davis" / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg"


def truncated_jpeg(w: Path, cli: str) -> tuple[dict, Path]:
    f = (w / "static" / "00001.jpg") if cli == "T1" else _jpg(w, 2)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return {}, f


def zero_byte_png(w: Path, cli: str) -> tuple[dict, Path]:
    f = (w / "static" / "00001.png") if cli == "T1" else _ann(w)
    f.write_bytes(b"")
    return {}, f


def mask_other_size(w: Path, cli: str) -> tuple[dict, Path]:
    if cli == "T1":
        f = w / "static" / "00001.png"
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(f)
    else:
        f = _ann(w)
        write_palette_png(f, np.pad(read_annotation(f), ((0, 8), (0, 0))))
    return {}, f


def rgb_mask(w: Path, cli: str) -> tuple[dict, Path]:
    f = _ann(w)
    Image.fromarray(colorize(read_annotation(f))).save(f)  # DAVIS colours, but RGB
    return {}, f


def mask_0_255(w: Path, cli: str) -> tuple[dict, Path]:
    for t in range(SPECS[0].num_frames):  # palette 0/255 everywhere: only void, no object
        f = _ann(w, t)
        write_palette_png(f, (read_annotation(f) > 0).astype(np.uint8) * 255)
    return {}, _ann(w)


def ids_1_and_3(w: Path, cli: str) -> tuple[dict, Path]:
    for t in range(SPECS[0].num_frames):  # object 2 of bi-a becomes 3 (metadata says 2)
        f = _ann(w, t)
        m = read_annotation(f)
        m[m == 2] = 3
        write_palette_png(f, m)
    return {}, _ann(w)


def object_from_frame_5(w: Path, cli: str) -> tuple[dict, Path]:
    for t in range(5):  # object 2 of bi-a is not annotated before frame 5
        f = _ann(w, t)
        m = read_annotation(f)
        m[m == 2] = 0
        write_palette_png(f, m)
    return {}, _ann(w)


def malformed_scribble(w: Path, cli: str) -> tuple[dict, Path]:
    f = w / "davis" / "Scribbles" / A / "001.json"
    f.write_text('{"scribbles": [[{"path": [[0.1, 0.2]', encoding="utf-8")
    return {}, f


def missing_middle_frame(w: Path, cli: str) -> tuple[dict, Path]:
    f = _jpg(w, 3)
    f.unlink()
    return {}, f


def wrong_checkpoint(w: Path, cli: str) -> tuple[dict, Path]:
    # the propagation CLIs get an S2M file, train_s2m a propagation file
    f = w / ("prop_lite.pth" if cli == "T1" else "s2m_lite.pth")
    return {"ckpt": f}, f


def truncated_checkpoint(w: Path, cli: str) -> tuple[dict, Path]:
    return {"ckpt": w / "truncated.pth"}, w / "truncated.pth"


def empty_folder(w: Path, cli: str) -> tuple[dict, Path]:
    return ({"static": w / "empty"} if cli == "T1" else {"davis": w / "empty"}), w / "empty"


def output_is_a_file(w: Path, cli: str) -> tuple[dict, Path]:
    return {"out": w / "a_file"}, w / "a_file"


# case -> (defect, CLIs where it is bad input, words the message must hold)
BAD = {
    "truncated JPEG": (truncated_jpeg, ("E1", "E2", "T1", "T2", "T3", "G1"), "truncated JPEG"),
    "zero-byte PNG": (zero_byte_png, ("E1", "E2", "T1", "T2", "T3", "G1"), "0 bytes"),
    "mask of another size": (mask_other_size, ("E1", "E2", "T1", "T2", "T3", "G1"), "(WxH)"),
    "RGB mask": (rgb_mask, VIDEO_CLIS, "RGB"),
    "0/255 mask": (mask_0_255, ("E1", "E2"), "no object"),
    "ids 1 and 3": (ids_1_and_3, ("E1",), "object ids [1, 3]"),
    "malformed scribble JSON": (malformed_scribble, ("E1",), "malformed scribble JSON"),
    "missing middle frame": (missing_middle_frame, VIDEO_CLIS, "frame missing"),
    "checkpoint of the wrong kind": (wrong_checkpoint, CKPT_CLIS, "this looks like a lite"),
    "truncated checkpoint": (truncated_checkpoint, CKPT_CLIS, "not a readable PyTorch checkpoint"),
    "empty folder": (empty_folder, CKPT_CLIS, ""),
    "output path that is a file": (output_is_a_file, tuple(CLIS), "is a file"),
}
CASES = [(case, cli) for case, (_, clis, _) in BAD.items() for cli in clis]


@pytest.mark.parametrize("case,cli", CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_bad_input_exits_2_with_one_line_naming_the_file(case, cli, work, capsys):
    defect, _, words = BAD[case]
    kwargs, path = defect(work, cli)
    capsys.readouterr()
    code = CLIS[cli](work, **kwargs)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert str(path) in lines[0] and words in lines[0], lines[0]
    if case == "checkpoint of the wrong kind":
        assert ("--s2m-model" if cli != "T1" else "--prop-model") in lines[0]


def test_wrong_preset_says_which_flag_to_add(work, capsys):
    # a lite propagation checkpoint given to the (default) mivos network
    import eval_semi_vos

    code = eval_semi_vos.main(["--dataset", "davis2017", "--root", str(work / "davis"),
                               "--output", str(work / "out"), "--device", "cpu", "--no-progress",
                               "--prop-model", str(work / "prop_lite.pth")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and str(work / "prop_lite.pth") in line
    assert "this looks like a lite propagation checkpoint: add --preset lite" in line


# ------------------------------------------------- valid object sets: each benchmark's rule


def test_semi_vos_ids_1_and_3_are_mapped_and_written_back(work, capsys):
    ids_1_and_3(work, "E2")
    assert _e2(work, extra=["--sequences", A]) == 0, capsys.readouterr().err
    out = read_mask(work / "out" / A / "00000.png")
    assert set(np.unique(out)) <= {0, 1, 3} and (out == 3).any()  # ids written back as given
    # davis2017-evaluation: objects 1..max id of the first frame = 3 (object 2 absent: J = 1)
    scores = pd.read_csv(work / "out" / "scores.csv").set_index("sequence")
    assert scores.loc[A, "objects"] == 3


def test_semi_vos_object_from_frame_5_follows_davis2017(work, capsys):
    object_from_frame_5(work, "E2")
    assert _e2(work, extra=["--sequences", A]) == 0, capsys.readouterr().err
    masks = [read_mask(work / "out" / A / f"{t:05d}.png") for t in range(SPECS[0].num_frames)]
    assert all(set(np.unique(m)) <= {0, 1} for m in masks)  # not given, never predicted
    # davis2017-evaluation counts ids 1..max id of frame 0 = 1: the late object is not scored
    scores = pd.read_csv(work / "out" / "scores.csv").set_index("sequence")
    assert scores.loc[A, "objects"] == 1


def test_interactive_object_from_frame_5_is_an_object_of_the_session(work, capsys):
    object_from_frame_5(work, "E1")
    assert _e1(work) == 0, capsys.readouterr().err
    report = pd.read_csv(work / "out" / "report.csv")
    rows = report[report.sequence == A]
    # the object count is the session's metadata (2), not frame 0's largest label (1)
    assert sorted(rows.object_id.unique()) == [1, 2]
    scribble = json.loads((work / "davis" / "Scribbles" / A / "001.json").read_text())
    scribbled = [t for t, strokes in enumerate(scribble["scribbles"]) if strokes]
    late = rows[(rows.object_id == 2) & (rows.frame < 5)]
    assert len(late) == 5
    # absent before frame 5 and, away from the scribbled frame, not predicted there: J = 1
    assert np.allclose(late[~late.frame.isin(scribbled)].jaccard, 1.0)


def test_training_treats_void_as_background(work):
    from dataset.vos_dataset import VOSClipDataset

    ds = VOSClipDataset(work / "davis", size=32, layout="davis")
    masks = [np.array([[0, 1, 254, 255]], np.uint8)]
    assert ds.usable_labels(masks, ds.videos[0].void_labels) == [1]
    assert ds.usable_labels(masks, (255,)) == [1, 254]  # outside DAVIS only 255 is void
    mask_0_255(work, "T2")  # a video whose masks hold only void trains on background
    video = next(v for v in ds.videos if v.name == A)
    assert all(ds.usable_labels([read_annotation(video.mask_dir / f"{f}.png")],
                                video.void_labels) == [] for f in video.frames)
