"""benchmark.py in its --quick mode: valid JSON, every row type, sane numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

import benchmark

EXPECTED_MODULES = {"s2m", "propagation", "propagation_topk", "fusion", "e2e_propagation",
                    "e2e_propagation_fusion"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, md_path = out / "bench.json", out / "bench.md"
    threads = torch.get_num_threads()
    rc = benchmark.main(["--quick", "--quiet", "--device", "cpu", "--threads", "2",
                         "--json", str(json_path), "--markdown", str(md_path),
                         "--inference-memory-json", str(out / "missing.json")])
    assert rc == 0
    assert torch.get_num_threads() == threads  # restored
    text = json_path.read_text()
    # strict JSON: no NaN / Infinity tokens
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON token {c}"))
    return data, md_path.read_text()


def test_json_layout(quick_run):
    data, _ = quick_run
    assert set(data) >= {"machine", "settings", "rows"}
    machine = data["machine"]
    for key in ("cpu", "cores", "ram_gib", "torch", "cuda_device"):
        assert key in machine
    assert machine["torch"] == torch.__version__
    settings = data["settings"]
    assert settings["quick"] is True
    assert settings["memory_frames"] == 3 and settings["top_k"] == 50
    assert settings["presets"] == ["lite"]


def test_every_row_type_with_positive_times_and_finite_ratios(quick_run):
    data, _ = quick_run
    rows = data["rows"]
    assert {r["module"] for r in rows} == EXPECTED_MODULES
    for r in rows:
        for key in ("module", "preset", "device", "precision"):
            assert key in r
        assert r["device"] == "cpu" and r["preset"] == "lite"
    ok = [r for r in rows if "error" not in r]
    # every module type has at least one measured row, all fp32 rows are measured
    assert {r["module"] for r in ok} == EXPECTED_MODULES
    assert all("error" not in r for r in rows if r["precision"] == "fp32")
    # the module rows (not end to end) are measured in every precision, AMP included
    modules = {(r["module"], r["precision"]) for r in ok}
    for m in ("s2m", "propagation", "propagation_topk", "fusion"):
        assert {(m, "fp32"), (m, "amp-bf16")} <= modules
    for r in ok:
        assert r["ms_per_frame_per_object"] > 0
        assert r["baseline_ms"] > 0
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert math.isfinite(r["amp_over_fp32"]) and r["amp_over_fp32"] > 0
        if r["precision"] == "fp32" and not r["module"].startswith("propagation"):
            assert r["ratio"] == pytest.approx(1.0)
    for r in rows:
        if "error" in r:
            assert isinstance(r["error"], str) and r["error"]


def test_propagation_parts_and_baselines(quick_run):
    data, _ = quick_run
    for r in data["rows"]:
        if not r["module"].startswith("propagation"):
            continue
        parts = r["parts"]
        assert set(parts) == {"encode_query_ms", "read_ms", "decoder_ms", "encode_memory_ms"}
        assert all(v > 0 for v in parts.values())
        assert r["ms_per_frame_per_object"] == pytest.approx(sum(parts.values()))
        assert r["memory_frames"] == 3
        assert "dense" in r["baseline"]
        assert math.isfinite(r["read_ratio"]) and r["read_ratio"] > 0
        if r["module"] == "propagation_topk":
            assert r["top_k"] == 50 and "top-k" in r["baseline"]
            assert math.isfinite(r["topk_over_full_softmax"])


def test_markdown_report(quick_run):
    _, md = quick_run
    assert "Table 3" in md and "machine:" in md
    assert "| preset | module |" in md
    assert "T = 3" in md
    assert "ms per frame per object" in md


def test_baselines_match_library_read():
    """The dense baselines compute the same readout as model.memory's read."""
    from model.memory import read_memory

    gen = torch.Generator().manual_seed(0)
    qk = torch.randn(2, 8, 3, 5, generator=gen)
    mk = torch.randn(2, 8, 4, 3, 5, generator=gen)
    mv = torch.randn(2, 6, 4, 3, 5, generator=gen)
    for top_k in (None, 7):
        ours = read_memory(mk.flatten(2), mv.flatten(2), qk.flatten(2), top_k=top_k)
        if top_k is None:
            base = benchmark.baseline_dense_softmax_read(qk, mk, mv)
        else:
            base = benchmark.baseline_dense_topk_read(qk, mk, mv, top_k)
        torch.testing.assert_close(base.flatten(2), ours, rtol=1e-5, atol=1e-5)


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--quick", "--json", "--markdown", "--repeats", "--warmup", "--device",
                 "--memory-frames", "--threads"):
        assert flag in text
    assert "ms" in text and "baseline" in text


def test_from_json_includes_inference_memory_table(quick_run, tmp_path):
    data, _ = quick_run
    src = tmp_path / "bench.json"
    src.write_text(json.dumps(data))
    mem = tmp_path / "inference_memory.json"
    mem.write_text(json.dumps({
        "info": {"machine": "test machine", "preset": "lite", "objects": 2},
        "results": [
            {"frames": 50, "resolution": "480p", "kind": "probe", "setup": "bounded",
             "peak_rss_gib": 1.25, "seconds_per_frame": 2.5},
            {"frames": 1000, "resolution": "1080p", "kind": "probe", "setup": "original",
             "error": "not run: too big"},
        ]}))
    out = tmp_path / "report.md"
    assert benchmark.main(["--from-json", str(src), "--markdown", str(out),
                           "--inference-memory-json", str(mem), "--quiet"]) == 0
    md = out.read_text()
    assert "Peak memory against video length and resolution" in md
    assert "| 50 | 480p | probe | bounded | 1.25 | 2.50 |" in md
    assert "not run: too big" in md
