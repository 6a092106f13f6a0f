"""scripts/quickstart.py --mini: the whole job (data, trainings, ablation, report) in-process."""

from __future__ import annotations

import json
import math

import pytest

from tests._scripts import load_script

pytest.importorskip("davisinteractive")


def load_quickstart():
    return load_script("quickstart")


@pytest.mark.slow
def test_quickstart_mini_end_to_end_and_resume(tmp_path, capsys):
    quickstart = load_quickstart()
    out = tmp_path / "qs"
    assert quickstart.main(["--mini", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    report = out / "report.md"
    assert report.is_file() and str(report) in printed

    rows = ("diff", "oracle")
    table = json.loads((out / "ablation" / "table5.json").read_text())
    assert set(table) == set(rows)
    for row in rows:
        summary = json.loads((out / "ablation" / row / "summary.json").read_text())
        for s in (summary, table[row]):
            auc = s["auc"]
            jf60 = s["metric_at_threshold"]["J_AND_F"]
            assert math.isfinite(auc) and 0.0 <= auc <= 1.0
            assert math.isfinite(jf60) and 0.0 <= jf60 <= 1.0
        # 3 interactions in --mini: the curve holds (0, 0), one point each, and the end point
        assert len(summary["curve"]["J_AND_F"]) == 3 + 2

    text = report.read_text()
    assert "difference-aware fusion" in text and "perfect interaction" in text
    assert "AUC-J&F" in text and "J&F@60s" in text
    assert "J&F after the last interaction" in text
    # the do-nothing reference, recomputed here from the ground truth by hand: frames where an
    # object is absent score 1 (J and F of two empty masks), the others 0
    import numpy as np

    from util.palette import read_mask

    val = out / "data" / "val"
    per_sample = []
    for seq in (val / "ImageSets" / "2017" / "val.txt").read_text().split():
        gt = np.stack([read_mask(f) for f in sorted((val / "Annotations" / "480p" / seq)
                                                     .glob("*.png"))])
        absent = [float(not (gt[t] == k).any()) for k in range(1, int(gt[0].max()) + 1)
                  for t in range(len(gt))]
        per_sample += absent * len(list((val / "Scribbles" / seq).glob("*.json")))
    floor = sum(per_sample) / len(per_sample)
    assert f"all-background answer scores J&F {floor:.3f}" in text
    assert (out / "ablation" / "table5_curves.png").is_file()
    # per-sequence scores reproduce the official curve's last point, and the paired interval
    # of perfect interaction against difference-aware fusion is in the report
    from inference.davis_interactive import per_interaction_scores

    ablation = load_script("ablation")
    for row in rows:
        seqs = ablation.sequence_scores(out / "ablation" / row / "report.csv")
        total = sum(v[0] for v in seqs.values()) / sum(v[1] for v in seqs.values())
        summary = json.loads((out / "ablation" / row / "summary.json").read_text())
        assert total == pytest.approx(per_interaction_scores(summary)[-1], abs=1e-9)
    ci = json.loads((out / "ablation" / "table5_intervals.json").read_text())
    assert set(ci) == {"oracle-diff"}
    assert ci["oracle-diff"]["low"] <= ci["oracle-diff"]["difference"] <= ci["oracle-diff"]["high"]
    assert "Paired bootstrap over sequences" in text and "perfect interaction - difference-aware fusion" in text
    overlay = out / "overlay_diff.png"
    assert overlay.is_file() and overlay.stat().st_size > 0
    from PIL import Image

    with Image.open(overlay) as im:
        assert im.mode == "RGB" and im.size[0] > 64 and im.size[1] > 48

    timings = json.loads((out / "timings.json").read_text())
    for step in ("data", "s2m", "prop_s0", "prop_s2", "fusion", "ablation", "report"):
        assert timings[step]["status"] == "done" and timings[step]["seconds"] >= 0
        assert f"| {step} |" in text
    for name in ("s2m/s2m_final.pth", "prop_s0/prop_s0_final.pth", "prop_s2/prop_s2_final.pth",
                 "fusion/fusion_s0_final.pth"):
        assert (out / "train" / name).is_file()

    # a re-run skips every finished step and rewrites the report
    stamp = (out / "train" / "s2m" / "s2m_final.pth").stat().st_mtime_ns
    assert quickstart.main(["--mini", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, skipped") == 6
    assert (out / "train" / "s2m" / "s2m_final.pth").stat().st_mtime_ns == stamp
    timings = json.loads((out / "timings.json").read_text())
    assert timings["s2m"]["status"] == "done earlier"
    assert report.is_file()


def mini_jobs(quickstart) -> int:
    return quickstart.settings(quickstart.build_parser().parse_args(["--mini"]))["ablation_jobs"]


def test_quickstart_settings_scale_and_overrides():
    quickstart = load_quickstart()
    args = quickstart.build_parser().parse_args(["--scale", "2", "--fusion-iterations", "7"])
    cfg = quickstart.settings(args)
    assert cfg["iterations"]["s2m"] == 2 * quickstart.FULL_ITERATIONS["s2m"]
    assert cfg["iterations"]["prop_s2"] == 2 * quickstart.FULL_ITERATIONS["prop_s2"]
    assert cfg["iterations"]["fusion"] == 7
    assert cfg["rows"] == list(quickstart.ROW_KEYS) and cfg["max_interactions"] == 8
    specs = quickstart.val_specs(cfg)
    assert len(specs) == 20 and all(s.subset == "val" and s.num_frames == 16 for s in specs)
    assert cfg["arch"] == "stcn"
    # S2M from random weights at a higher LR than the recipe's, bf16 where native; the ablation
    # rows two at a time on two threads (a runtime setting: not in the fingerprint)
    assert cfg["s2m_lr"] == quickstart.S2M_LR and cfg["s2m_amp"] == "auto"
    assert cfg["ablation_jobs"] == 2 and mini_jobs(quickstart) == 1  # --num-threads 2
    fp = quickstart.run_fingerprint(args, cfg)
    other = quickstart.run_fingerprint(args, {**cfg, "ablation_jobs": 1})
    assert fp == other and fp != quickstart.run_fingerprint(args, {**cfg, "s2m_lr": 1e-4})
    assert {s.num_objects for s in specs} <= {1, 2, 3}
    assert {s.num_scribbles for s in specs} <= {1, 2}
    mini = quickstart.settings(quickstart.build_parser().parse_args(["--mini"]))
    assert mini["rows"] == ["diff", "oracle"] and mini["max_interactions"] == 3
    mini_specs = quickstart.val_specs(mini)
    assert 1 <= len(mini_specs) <= 2
    assert all((s.height, s.width) == (48, 64) and 6 <= s.num_frames <= 8 for s in mini_specs)


def test_default_workers_use_only_cores_left_by_the_threads(monkeypatch):
    import os

    import util.device
    from util.device import usable_cores

    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
    quickstart = load_quickstart()
    for cores, threads, workers in [(2, 2, 0), (3, 2, 1), (16, 2, 2), (1, 2, 0), (4, 1, 2)]:
        monkeypatch.setattr(util.device, "usable_cores", lambda c=cores: c)
        assert quickstart.default_workers(threads) == workers
