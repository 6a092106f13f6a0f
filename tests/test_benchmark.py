"""benchmark.py in its --quick mode: valid JSON, every row type, sane numbers; the FLOP counter,
the peak measurement, the stage baselines and the long-video worker at tiny sizes (no timing
assertions)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

import benchmark
from model.presets import build_fusion, build_propagation
from util.amp import native_bf16

EXPECTED_MODULES = {"s2m", "propagation", "propagation_topk", "fusion", "e2e_propagation",
                    "e2e_propagation_fusion"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, md_path = out / "bench.json", out / "bench.md"
    threads = torch.get_num_threads()
    rc = benchmark.main(["--quick", "--quiet", "--device", "cpu", "--threads", "2",
                         "--json", str(json_path), "--markdown", str(md_path),
                         "--inference-memory-json", str(out / "missing.json"),
                         "--stage-objects", "1", "2", "--long-video-frames", "3", "5",
                         "--long-video-height", "48", "--long-video-width", "64",
                         "--peak-gemm", "256", "--peak-conv", "32", "16", "24"])
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
    # the module rows (not end to end) are measured in every precision, CPU bf16 autocast only
    # where the CPU computes bf16 natively
    precisions = data["settings"]["precisions"]["cpu"]
    assert ("amp-bf16" in precisions) == native_bf16()
    modules = {(r["module"], r["precision"]) for r in ok}
    for m in ("s2m", "propagation", "propagation_topk", "fusion"):
        assert {(m, p) for p in precisions} <= modules
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
    # the sections of the peak, the stages and the long videos, the CPU features, bf16
    for text in ("## Machine peak, measured in this run", "GEMM (`torch.mm`)", "3x3 conv",
                 "## Stages: time, FLOPs, fraction of peak, baseline", "% of GEMM peak",
                 "% of conv peak", "baseline / ours", "read + decode", "fusion pass",
                 "Memory read against its affinity GEMM alone (goal: at most 1.3x)",
                 "## Long videos: ms per frame and peak memory", "T = 5 against T = 3",
                 "CPU features: torch CPU capability", "bf16 figures need bf16 hardware",
                 "regenerates this page"):
        assert text in md, text


def test_peak_stage_and_long_video_json(quick_run):
    data, _ = quick_run
    machine = data["machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["native_bf16"] == native_bf16()
    if machine["cpu_flags"] is not None:
        assert set(machine["cpu_flags"]) == set(benchmark.CPU_FLAGS)
    peak = data["peak"]["cpu"]
    assert peak["threads"] == 2
    assert peak["gemm"]["flops"] == 2 * 256 ** 3
    assert peak["conv3x3"]["flops"] == 2 * 32 * 32 * 9 * 16 * 24
    assert peak["gemm"]["gflops"] > 0 and peak["conv3x3"]["gflops"] > 0

    rows = data["stages"]["rows"]
    assert {(r["stage"], r["objects"]) for r in rows} == {
        ("encode_query", 1), ("memorize", 1), ("affinity_gemm", 1), ("affinity_gemm_reused", 1),
        ("memory_read", 1),
        ("read_decode", 1), ("read_decode", 2), ("fusion_pass", 1), ("fusion_pass", 2),
        ("s2m", 1)}
    for r in rows:
        assert r["median_ms"] > 0 and r["flops"] > 0 and r["gflops"] > 0
        assert r["frac_gemm_peak"] > 0 and r["frac_conv_peak"] > 0
        if r["stage"] in ("memory_read", "read_decode", "fusion_pass"):
            assert r["baseline_ms"] > 0 and r["baseline_over_ours"] > 0
        else:
            assert "baseline_ms" not in r
    by = {(r["stage"], r["objects"]): r for r in rows}
    read = by[("memory_read", 1)]
    assert read["read_over_gemm"] == pytest.approx(read["median_ms"] / read["gemm_ms"])
    assert read["read_over_gemm_reused"] == pytest.approx(read["median_ms"]
                                                          / read["gemm_reused_ms"])
    gemm_at_peak_ms = 2 * read["key_dim"] * read["memory_positions"] * read["query_positions"] / (
        peak["gemm"]["gflops"] * 1e6)
    assert read["read_over_gemm_at_peak"] == pytest.approx(read["median_ms"] / gemm_at_peak_ms)
    # more objects, more work: the read + decode FLOPs grow with K
    assert by[("read_decode", 2)]["flops"] > by[("read_decode", 1)]["flops"]
    # the affinity GEMM is counted analytically: 2 CK N M
    gemm = by[("affinity_gemm", 1)]
    assert gemm["flops"] == (2 * gemm["key_dim"] * gemm["memory_positions"]
                             * gemm["query_positions"])

    long_video = data["long_video"]
    assert long_video["options"]["prob_dtype"] == "uint8"
    assert [r["frames"] for r in long_video["rows"]] == [3, 5]
    for r in long_video["rows"]:
        assert "error" not in r, r.get("error")
        assert r["frames_propagated"] == r["frames"] - 1
        assert r["ms_per_frame"] > 0
        assert r["peak_rss_mib"] >= r["model_rss_mib"] > 0
        assert (r["height"], r["width"], r["preset"], r["threads"]) == (48, 64, "lite", 2)
    ratios = long_video["ratios"]
    assert (ratios["short_frames"], ratios["long_frames"]) == (3, 5)
    assert ratios["ms_per_frame_ratio"] > 0 and ratios["peak_rss_ratio"] > 0
    assert ratios["ms_per_frame_without_read_ratio"] > 0


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


def test_flop_counter_against_hand_computed_layers():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.zeros(1, 3, 10, 12)
    # every one of the 8 x 10 x 12 outputs sums 3 x 3 x 3 products; FLOPs = 2 x MACs
    assert benchmark.count_flops(lambda: conv(x), conv) == 2 * (8 * 10 * 12) * (3 * 3 * 3)
    grouped = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
    y = torch.zeros(2, 8, 10, 12)  # -> 2 x 16 x 5 x 6, each output sums 8/4 x 3 x 3 products
    assert benchmark.count_flops(lambda: grouped(y), grouped) == 2 * (2 * 16 * 5 * 6) * (2 * 9)
    linear = nn.Linear(5, 7)
    z = torch.zeros(2, 5)
    assert benchmark.count_flops(lambda: linear(z), linear) == 2 * 2 * 7 * 5
    net = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(8, 4, 1))
    with benchmark.FlopCounter(net, net) as counter:  # a network given twice counts once
        net(x)
    assert counter.calls == 2
    assert counter.flops == 2 * 960 * 27 + 2 * (4 * 10 * 12) * 8
    assert not conv._forward_hooks  # the hooks are gone afterwards


def test_read_flops_analytic():
    # per batch item and query column: affinity 2 CK N, readout 2 CV k (top-k) or 2 CV N
    assert benchmark.read_flops(2, 4, 6, 10, 3, top_k=5) == 2 * 2 * 3 * (4 * 10 + 6 * 5)
    assert benchmark.read_flops(2, 4, 6, 10, 3, top_k=None) == 2 * 2 * 3 * (4 * 10 + 6 * 10)
    assert benchmark.read_flops(1, 4, 6, 10, 3, top_k=50) == 2 * 3 * (4 * 10 + 6 * 10)


def test_measure_peak_returns_positive_gflops():
    peak = benchmark.measure_peak(torch.device("cpu"), 32, (4, 6, 8), 0, 2, lambda msg: None)
    assert peak["gemm"]["flops"] == 2 * 32 ** 3
    assert peak["conv3x3"]["flops"] == 2 * 4 * 4 * 9 * 6 * 8
    for kernel in ("gemm", "conv3x3"):
        assert peak[kernel]["gflops"] > 0
        assert peak[kernel]["best_gflops"] >= peak[kernel]["gflops"]
        assert len(peak[kernel]["samples_ms"]) == 2
    assert peak["threads"] == torch.get_num_threads()


def test_parse_peak_rss_from_proc_status():
    status = "Name:\tpython\nVmPeak:\t  999999 kB\nVmHWM:\t  123456 kB\nVmRSS:\t   654 kB\n"
    assert benchmark.parse_status_kib(status, "VmHWM") == 123456
    assert benchmark.parse_status_kib(status, "VmRSS") == 654
    assert benchmark.parse_status_kib(status, "VmSwap") is None
    assert benchmark.parse_status_kib("VmHWM:\tlots kB\n", "VmHWM") is None
    out = 'a log line\n{"frames": 3, "peak_rss_mib": 120.5}\n'
    assert benchmark.parse_worker_output(out) == {"frames": 3, "peak_rss_mib": 120.5}
    with pytest.raises(ValueError):
        benchmark.parse_worker_output("no result\n")


def test_long_video_worker_reports_its_peak_rss():
    threads = torch.get_num_threads()
    spec = {"frames": 3, "preset": "lite", "height": 32, "width": 48, "objects": 1,
            "top_k": 50, "threads": 1, "options": dict(benchmark.LONG_VIDEO_OPTIONS)}
    try:
        row = benchmark.long_video_worker(spec)
    finally:
        torch.set_num_threads(threads)
    assert row["frames_propagated"] == 2 and row["ms_per_frame"] > 0
    # the memory read was timed (and the wrapper put back), and is part of the frame's cost
    assert 0 < row["read_ms_per_frame"] < row["ms_per_frame"]
    assert row["ms_per_frame_without_read"] == pytest.approx(
        row["ms_per_frame"] - row["read_ms_per_frame"])
    import model.propagation as propagation_module
    from model.memory import read_memory
    assert propagation_module.read_memory is read_memory
    # VmHWM of this process, in MiB: at least what it held after building the network
    assert row["peak_rss_mib"] >= row["model_rss_mib"] > 0
    frames = benchmark.LazyFrames(3, 32, 48)
    assert len(frames) == 3 and frames[2].shape == (32, 48, 3)
    with pytest.raises(IndexError):
        frames[3]


def test_stage_baselines_compute_what_ours_computes():
    """The per-object baselines give the same logits as the batched calls they are timed
    against (read + decode and the fusion pass, 3 objects)."""
    torch.manual_seed(0)
    prop = build_propagation("lite").eval()
    fusion = build_fusion("lite").eval()
    gen = torch.Generator().manual_seed(0)
    k, hp, wp = 3, 32, 48
    image = torch.randn(1, 3, hp, wp, generator=gen)
    mem_key = torch.randn(k, prop.key_dim, 2, hp // 16, wp // 16, generator=gen)
    mem_value = torch.randn(k, prop.value_dim, 2, hp // 16, wp // 16, generator=gen)
    ref_key = torch.randn(k, prop.key_dim, hp // 16, wp // 16, generator=gen)
    diff = torch.rand(k, 2, hp, wp, generator=gen)
    prev, curr = torch.rand(k, 1, hp, wp, generator=gen), torch.rand(k, 1, hp, wp, generator=gen)
    dist = torch.tensor([[0.25, 0.75]]).expand(k, 2)
    with torch.inference_mode():
        query = prop.encode_query(image)
        ours = benchmark.read_decode(prop, query, mem_key, mem_value, 5)
        base = benchmark.baseline_read_decode(prop, query, mem_key, mem_value, 5)
        torch.testing.assert_close(base, ours, rtol=1e-4, atol=1e-4)
        args = (ref_key, query.key, diff, image, prev, curr, dist)
        ours = benchmark.fusion_pass(prop, fusion, *args)
        base = benchmark.baseline_fusion_pass(prop, fusion, *args)
        torch.testing.assert_close(base, ours, rtol=1e-4, atol=1e-4)
    assert ours.shape == (k, 1, hp, wp)


def test_cpu_bf16_rows_skipped_without_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(benchmark, "native_bf16", lambda: False)
    reason = benchmark.bf16_skip_reason()
    assert reason is not None and "no native bf16" in reason
    assert torch.backends.cpu.get_cpu_capability() in reason
    assert benchmark._precisions_for(cpu, ["fp32", "amp"], cpu_bf16=False) == ["fp32"]
    assert benchmark._precisions_for(cpu, ["fp32", "amp"], cpu_bf16=True) == ["fp32", "amp-bf16"]
    monkeypatch.setattr(benchmark, "native_bf16", lambda: True)
    assert benchmark.bf16_skip_reason() is None


def test_markdown_says_when_bf16_rows_were_skipped(quick_run):
    data, _ = quick_run
    data = json.loads(json.dumps(data))
    data["settings"]["bf16"] = {"native": False, "forced_emulated": False,
                                "cpu_rows_skipped": True,
                                "reason": "this CPU has no native bf16: torch CPU capability AVX2"}
    md = benchmark.to_markdown(data, None)
    assert "they were **skipped**: this CPU has no native bf16: torch CPU capability AVX2" in md


def test_from_json_of_an_earlier_version(quick_run, tmp_path):
    """A JSON without the peak, stage and long-video sections still renders, and says so."""
    data, _ = quick_run
    old = {key: value for key, value in data.items()
           if key not in ("peak", "stages", "long_video")}
    old["settings"] = {k: v for k, v in old["settings"].items()
                       if k not in ("stage_repeats", "bf16")}
    old["machine"] = {k: v for k, v in old["machine"].items()
                      if k not in ("cpu_flags", "cpu_capability", "native_bf16")}
    src = tmp_path / "old.json"
    src.write_text(json.dumps(old))
    out = tmp_path / "old.md"
    assert benchmark.main(["--from-json", str(src), "--markdown", str(out), "--quiet"]) == 0
    md = out.read_text()
    assert "earlier version of `benchmark.py`" in md
    assert "## Stages" not in md and "| preset | module |" in md
