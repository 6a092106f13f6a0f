"""The DAVIS interactive driver end to end: the official session, robot and metrics with our
pipeline (lite networks, random weights) on a small generated DAVIS stand-in."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dataset.synthetic import SequenceSpec, write_dataset

SPECS = [
    SequenceSpec("syn-a", 7, 48, 64, 1, 1, "val"),
    SequenceSpec("syn-b", 6, 48, 64, 2, 1, "val"),
]


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    write_dataset(root, "tiny", seed=3, specs=SPECS)
    return root


def run(root, out, *extra):
    import eval_davis_interactive

    argv = ["--davis", str(root), "--output", str(out), "--preset", "lite", "--random-weights",
            "--device", "cpu", *extra]
    assert eval_davis_interactive.main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_official_session_with_our_pipeline(davis_root, tmp_path):
    out = tmp_path / "run"
    summary = run(davis_root, out, "--max-interactions", "3", "--save-masks")
    assert 0 <= summary["auc"] <= 1
    assert 0 <= summary["metric_at_threshold"]["J_AND_F"] <= 1
    assert len(summary["curve"]["J_AND_F"]) == 3 + 2  # (0,0), one point per interaction, end
    assert (out / "jf_vs_time.png").stat().st_size > 0
    report = pd.read_csv(out / "report.csv")
    # every frame x object x interaction of both samples was scored by the official metrics
    assert len(report) == 3 * (7 * 1 + 6 * 2)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["syn-a__1.csv", "syn-b__1.csv"]
    # palette PNGs of the final masks of every sample, one per frame
    from util.palette import read_mask

    pngs = sorted((out / "masks" / "syn-b" / "1").glob("*.png"))
    assert len(pngs) == 6
    assert read_mask(pngs[0]).shape == (48, 64)


def test_oracle_gives_perfect_interacted_frames_and_resume(davis_root, tmp_path):
    from util.davis_compat import ensure_compat

    ensure_compat()
    from davisinteractive.utils.scribbles import annotated_frames

    out = tmp_path / "oracle"
    first = run(davis_root, out, "--oracle", "--max-interactions", "3")
    report = pd.read_csv(out / "report.csv")
    for spec in SPECS:
        scribble = json.loads((davis_root / "Scribbles" / spec.name / "001.json").read_text())
        frame = annotated_frames(scribble)[0]
        rows = report[(report.sequence == spec.name) & (report.interaction == 1) & (report.frame == frame)]
        assert len(rows) == spec.num_objects
        assert np.allclose(rows.j_and_f, 1.0)

    # resume: a finished sample is not evaluated again, a removed one is
    kept = out / "samples" / "syn-a__1.csv"
    redo = out / "samples" / "syn-b__1.csv"
    mtime = kept.stat().st_mtime_ns
    redo.unlink()
    summary = run(davis_root, out, "--oracle", "--max-interactions", "3")
    assert kept.stat().st_mtime_ns == mtime
    assert redo.exists()
    resumed = pd.read_csv(out / "report.csv")
    assert len(resumed) == len(report)
    # same seeded networks: the redone sample scores exactly as before (timings differ)
    key = ["sequence", "scribble_idx", "interaction", "object_id", "frame"]
    a = report.sort_values(key).reset_index(drop=True)
    b = resumed.sort_values(key).reset_index(drop=True)
    assert np.allclose(a.j_and_f, b.j_and_f)
    assert summary["curve"]["J_AND_F"] == pytest.approx(first["curve"]["J_AND_F"])


def test_missing_davis_root_is_a_clear_error(tmp_path, capsys):
    import eval_davis_interactive

    args = ["--output", str(tmp_path / "o"), "--random-weights", "--preset", "lite"]
    assert eval_davis_interactive.main(["--davis", str(tmp_path / "nope"), *args]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "partial" / "JPEGImages" / "480p").mkdir(parents=True)
    assert eval_davis_interactive.main(["--davis", str(tmp_path / "partial"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Annotations" in err and len(err.splitlines()) == 1


def test_missing_checkpoint_is_a_clear_error(davis_root, tmp_path, capsys):
    import eval_davis_interactive

    code = eval_davis_interactive.main(["--davis", str(davis_root), "--output", str(tmp_path / "o"),
                                        "--preset", "lite", "--oracle", "--fusion", "none",
                                        "--prop-model", str(tmp_path / "x.pth")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"propagation checkpoint {tmp_path / 'x.pth'} not found: pass --prop-model" in err
    assert not (tmp_path / "o").exists()  # nothing written
