"""Resume contract of the resumable jobs (DAVIS interactive, semi-supervised VOS, the ablation
runner): all finished, changed option, changed weights, a leftover temporary file, and a kill
in the middle. Tiny generated data, lite networks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dataset.synthetic import SequenceSpec, write_dataset

SPECS = [SequenceSpec("rs-a", 6, 48, 64, 2, 1, "val"), SequenceSpec("rs-b", 6, 48, 64, 1, 1, "val")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    write_dataset(base / "davis", "tiny", seed=9, specs=SPECS)
    from model.presets import build_fusion, build_propagation, build_s2m

    for seed, name in ((0, "prop_a.pth"), (1, "prop_b.pth")):
        torch.manual_seed(seed)
        torch.save(build_propagation("lite").state_dict(), base / name)
    torch.manual_seed(0)
    torch.save(build_s2m("lite").state_dict(), base / "s2m.pth")
    torch.save(build_fusion("lite").state_dict(), base / "fusion.pth")
    return base


class _Forbidden(Exception):
    pass


def _forbid(monkeypatch, target, name: str, what: str) -> None:
    def fail(*_a, **_k):
        raise _Forbidden(f"{what} must not run")

    monkeypatch.setattr(target, name, fail)


def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.glob(pattern))}


# ---------------------------------------------------------------------------- DAVIS interactive


def _interactive(data: Path, out: Path, prop: str = "prop_a.pth", *extra) -> int:
    import eval_davis_interactive

    return eval_davis_interactive.main([
        "--davis", str(data / "davis"), "--output", str(out), "--preset", "lite", "--device",
        "cpu", "--oracle", "--fusion", "none", "--prop-model", str(data / prop),
        "--max-interactions", "1", *extra])


def test_interactive_resume_contract(data, tmp_path, monkeypatch, capsys):
    from util.davis_compat import ensure_compat

    ensure_compat()
    from davisinteractive.session import DavisInteractiveSession

    import eval_davis_interactive
    from inference import davis_interactive as di

    out = tmp_path / "run"
    # kill in the middle: the second sample's first interaction dies
    calls = {"n": 0}
    step = di.DavisSampleProcessor.step

    def dying_step(self, scribbles):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return step(self, scribbles)

    monkeypatch.setattr(di.DavisSampleProcessor, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        _interactive(data, out)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["rs-a__1.csv"]
    kept = _mtimes(out / "samples", "*.csv")
    assert _interactive(data, out) == 0  # resumes: only the unfinished sample runs
    assert _mtimes(out / "samples", "rs-a__1.csv") == kept
    report = pd.read_csv(out / "report.csv")
    assert sorted(report.sequence.unique()) == ["rs-a", "rs-b"] and len(report) == 6 * 2 + 6 * 1
    summary = json.loads((out / "summary.json").read_text())

    # all finished (a leftover temporary file of a killed write next to the results): the
    # summary is rebuilt without the session and without building a network
    (out / "samples" / ".rs-b__1.csv.k2j3h4.tmp").write_text("half a row")
    (out / "samples" / "rs-b__1.csv.abc123.tmp").write_text("half a row")
    (out / "summary.json").unlink()
    _forbid(monkeypatch, DavisInteractiveSession, "__init__", "the session")
    _forbid(monkeypatch, eval_davis_interactive, "load_networks", "network loading")
    assert _interactive(data, out) == 0
    assert json.loads((out / "summary.json").read_text()) == summary
    assert len(pd.read_csv(out / "report.csv")) == len(report)

    # changed option / changed weights: refused with the differing keys, nothing touched
    before = {**_mtimes(out, "*.json"), **_mtimes(out / "samples", "*.csv")}
    capsys.readouterr()
    assert _interactive(data, out, "prop_a.pth", "--top-k", "none") == 2
    err = capsys.readouterr().err
    assert "config.inference.top_k: 50 -> null" in err and "--restart" in err
    assert _interactive(data, out, "prop_b.pth") == 2
    assert "weights.propagation: sha256" in capsys.readouterr().err
    assert {**_mtimes(out, "*.json"), **_mtimes(out / "samples", "*.csv")} == before
    assert json.loads((out / "config.json").read_text())["inference"]["top_k"] == 50
    # --restart discards and runs again with the new settings
    monkeypatch.undo()
    assert _interactive(data, out, "prop_a.pth", "--top-k", "none", "--restart") == 0
    assert json.loads((out / "config.json").read_text())["inference"]["top_k"] is None
    assert not (out / "samples" / "rs-b__1.csv.abc123.tmp").exists()


def test_atomic_temp_names_never_match_result_globs(tmp_path):
    from util.fileio import atomic_write, is_temp_name

    seen = []

    def writer(tmp: str) -> None:
        seen.append(Path(tmp).name)
        Path(tmp).write_text("x")
        # while the write is in progress, the temporary file matches no result glob
        matches = {p.name for pattern in ("*__*.csv", "*.csv", "*.png") for p in tmp_path.glob(pattern)}
        assert Path(tmp).name not in matches and Path(tmp).exists()

    atomic_write(tmp_path / "seq__1.csv", writer)
    atomic_write(tmp_path / "00000.png", writer)
    assert all(n.startswith(".") and n.endswith(".tmp") and is_temp_name(n) for n in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.png", "seq__1.csv"]


# ------------------------------------------------------------------------ semi-supervised VOS


def _semi(data: Path, out: Path, *extra) -> int:
    import eval_semi_vos

    return eval_semi_vos.main(["--dataset", "davis2017", "--root", str(data / "davis"),
                               "--output", str(out), "--preset", "lite", "--device", "cpu",
                               "--no-progress", *extra])


def test_semi_vos_resume_contract(data, tmp_path, monkeypatch, capsys):
    import eval_semi_vos

    out = tmp_path / "semi"
    ckpt = ["--prop-model", str(data / "prop_a.pth")]
    # kill in the middle: the second sequence dies
    process = eval_semi_vos.process_sequence
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return process(*a, **k)

    monkeypatch.setattr(eval_semi_vos, "process_sequence", dying)
    with pytest.raises(KeyboardInterrupt):
        _semi(data, out, *ckpt)
    monkeypatch.undo()
    first = _mtimes(out, "rs-a/*.png")
    assert len(first) == 6 and not (out / ".done" / "rs-b.json").exists()
    assert _semi(data, out, *ckpt) == 0
    assert _mtimes(out, "rs-a/*.png") == first  # finished sequence kept
    info = json.loads((out / "run_info.json").read_text())
    assert info["sequences"]["rs-a"]["resumed"] and not info["sequences"]["rs-b"]["resumed"]
    scores = (out / "scores.csv").read_text()

    # all finished, with leftover temporary files of killed writes: nothing recomputed, the
    # propagator is not even built, the scores are rebuilt
    (out / "rs-b" / ".00003.png.x1y2z3.tmp").write_bytes(b"\x89PNG")
    (out / ".done" / ".rs-b.json.a1b2c3.tmp").write_text("{")
    (out / "scores.csv").unlink()
    _forbid(monkeypatch, eval_semi_vos, "_build_propagator", "the propagator")
    assert _semi(data, out, *ckpt) == 0
    assert (out / "scores.csv").read_text() == scores
    all_pngs = _mtimes(out, "*/*.png")

    # changed options (the ones the issue found ignored) and changed weights: refused
    capsys.readouterr()
    assert _semi(data, out, *ckpt, "--km-sigma", "1.0") == 2
    assert "config.km_sigma: null -> 1.0" in capsys.readouterr().err
    assert _semi(data, out, "--prop-model", str(data / "prop_b.pth")) == 2
    assert "weights.propagation: sha256" in capsys.readouterr().err
    assert _mtimes(out, "*/*.png") == all_pngs
    monkeypatch.undo()
    assert _semi(data, out, *ckpt, "--km-sigma", "1.0", "--restart") == 0
    info = json.loads((out / "run_info.json").read_text())
    assert not any(s["resumed"] for s in info["sequences"].values())


def test_semi_vos_fingerprint_holds_every_output_option(data):
    import eval_semi_vos

    p = eval_semi_vos.build_parser()
    base = ["--dataset", "youtube2019", "--root", str(data), "--output", "x", "--random-weights"]

    def fp(*extra):
        return eval_semi_vos.run_fingerprint(p.parse_args([*base, *extra]), 480)

    from util.fingerprint import differences

    for flag, value, key in (("--km-sigma", "1.0", "km_sigma"), ("--youtube-frames", "sampled",
                             "youtube_frames"), ("--top-k", "20", "top_k"), ("--seed", "3", "")):
        diffs = differences(fp(), fp(flag, value))
        assert diffs and (key in diffs[0] or "weights" in diffs[0]), (flag, diffs)
    davis = ["--dataset", "davis2017", "--root", str(data), "--output", "x", "--random-weights"]
    a = eval_semi_vos.run_fingerprint(p.parse_args(davis), -1)
    b = eval_semi_vos.run_fingerprint(p.parse_args([*davis, "--davis-res", "Full-Resolution"]), -1)
    assert differences(a, b) == ["config.davis_res: \"480p\" -> \"Full-Resolution\""]
    # runtime options are not part of it
    c = eval_semi_vos.run_fingerprint(p.parse_args([*davis, "--device", "cpu", "--writers", "0",
                                                    "--threads", "1", "--output", "y"]), -1)
    assert differences(a, c) == []


# --------------------------------------------------------------------------- ablation runner


def _ablation():
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    import ablation

    return ablation


def _run_ablation(data: Path, out: Path, prop: str = "prop_a.pth", *extra) -> int:
    return _ablation().main([
        "--davis", str(data / "davis"), "--output", str(out), "--preset", "lite",
        "--s2m-model", str(data / "s2m.pth"), "--prop-model", str(data / prop),
        "--fusion-model", str(data / "fusion.pth"), "--rows", "topk", "oracle", *extra, "--",
        "--device", "cpu", "--max-interactions", "1"])


def test_ablation_resume_contract(data, tmp_path, monkeypatch, capsys):
    from util.davis_compat import ensure_compat

    ensure_compat()
    from davisinteractive.session import DavisInteractiveSession

    import eval_davis_interactive

    out = tmp_path / "ablation"
    # kill in the middle: the second row dies
    main = eval_davis_interactive.main
    calls = {"n": 0}

    def dying(argv):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return main(argv)

    monkeypatch.setattr(eval_davis_interactive, "main", dying)
    with pytest.raises(KeyboardInterrupt):
        _run_ablation(data, out)
    monkeypatch.undo()
    assert (out / "topk" / "summary.json").is_file() and not (out / "oracle").exists()
    row = _mtimes(out / "topk" / "samples", "*.csv")
    assert _run_ablation(data, out) == 0
    assert _mtimes(out / "topk" / "samples", "*.csv") == row
    table = json.loads((out / "table5.json").read_text())
    assert list(table) == ["topk", "oracle"]

    # all finished (plus a leftover temporary file): every row is skipped without a session,
    # and the table is rebuilt
    (out / "oracle" / "samples" / ".rs-a__1.csv.q1w2e3.tmp").write_text("x")
    (out / "table5.md").unlink()
    _forbid(monkeypatch, DavisInteractiveSession, "__init__", "the session")
    assert _run_ablation(data, out) == 0
    assert json.loads((out / "table5.json").read_text()) == table
    assert "| perfect interaction |" in (out / "table5.md").read_text()

    # changed option / weights: stops before any row, with the differing keys
    capsys.readouterr()
    assert _ablation().main([
        "--davis", str(data / "davis"), "--output", str(out), "--preset", "lite",
        "--s2m-model", str(data / "s2m.pth"), "--prop-model", str(data / "prop_a.pth"),
        "--fusion-model", str(data / "fusion.pth"), "--rows", "topk", "oracle", "--",
        "--device", "cpu", "--max-interactions", "2"]) == 2
    assert "config.evaluation_options" in capsys.readouterr().err
    assert _run_ablation(data, out, "prop_b.pth") == 2
    assert "weights.propagation: sha256" in capsys.readouterr().err
    assert json.loads((out / "table5.json").read_text()) == table
    monkeypatch.undo()
    assert _run_ablation(data, out, "prop_b.pth", "--restart") == 0
    assert np.isfinite(json.loads((out / "table5.json").read_text())["oracle"]["auc"])



def test_ablation_parallel_rows_give_the_sequential_results(data, tmp_path, capsys):
    """--jobs 2: each row in its own process with one thread; the J&F of every frame, object
    and interaction is that of the rows run one after the other in this process."""
    seq, par = tmp_path / "seq", tmp_path / "par"
    assert _run_ablation(data, seq) == 0
    assert _run_ablation(data, par, "prop_a.pth", "--jobs", "2", "--threads-per-job", "1") == 0
    for row in ("topk", "oracle"):
        a = pd.read_csv(seq / row / "report.csv").drop(columns="timing")
        b = pd.read_csv(par / row / "report.csv").drop(columns="timing")
        pd.testing.assert_frame_equal(a, b)
        assert (par / "logs" / f"{row}.log").is_file()
    assert list(json.loads((par / "table5.json").read_text())) == ["topk", "oracle"]
    # a row that fails names itself and its log, and the exit status is passed on
    capsys.readouterr()
    bad = tmp_path / "bad"
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    assert _run_ablation(data, bad, str(tmp_path / "corrupt.pth"), "--jobs", "2") == 2
    err = capsys.readouterr().err
    assert "row 'topk'" in err and str(bad / "logs" / "topk.log") in err
