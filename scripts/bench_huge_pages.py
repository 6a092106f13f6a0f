"""Huge-page CPU allocations on and off: the same work in fresh processes, alternated.

``util/__init__.py`` sets ``THP_MEM_ALLOC_ENABLE=1`` (unless the user set it), and PyTorch reads
the variable once per process, so each setting needs its own process. This script starts
``--runs`` pairs of worker processes (``THP_MEM_ALLOC_ENABLE=0`` and ``=1``, alternating), each
timing the same workloads at 480p (random weights, fp32, ``--threads`` threads, median of
``--repeats`` calls after one warm-up), and writes the medians over the runs with the ratio
off / on (above 1: huge pages are faster). Outputs are not compared here: the allocator setting
does not change any arithmetic (``tests/test_huge_pages.py`` checks that the switch takes
effect).

    python scripts/bench_huge_pages.py --json docs/huge_pages.json --markdown docs/HUGE_PAGES.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "fresh_copy": "copy of a 1620 x 32400 float32 tensor into a new one (210 MB)",
    "query_encoding": "query encoder, mivos preset, one 864 x 480 frame",
    "memory_read": "top-k 50 read, mivos preset, 20 memory frames, one object",
    "fusion_net_4": "FusionNet, 4 objects at 864 x 480",
    "s2m": "S2M forward, mivos preset, 864 x 480",
}


def worker(threads: int, repeats: int) -> dict:
    """Time every workload in this process; the medians in ms."""
    import torch  # after util set the switch (or not)

    import util  # noqa: F401
    from model.presets import build_fusion, build_propagation, build_s2m

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    h, w = 480, 864
    prop = build_propagation("mivos").eval()
    fusion = build_fusion("mivos").eval()
    s2m = build_s2m("mivos").eval()
    big = torch.randn(1620, 32400)
    image = torch.randn(1, 3, h, w)
    query = prop.encode_query(image)
    t_mem = 20
    mem_key = torch.randn(1, t_mem * 1620, prop.key_dim).transpose(1, 2)
    mem_value = torch.randn(1, t_mem * 1620, prop.value_dim).transpose(1, 2)
    k = 4
    fusion_in = (image.expand(k, -1, -1, -1), torch.rand(k, 1, h, w), torch.rand(k, 1, h, w),
                 torch.rand(k, 2, h, w), torch.tensor([[0.4, 0.6]]).expand(k, 2))
    s2m_in = torch.randn(1, 6, h, w)
    fns = {
        "fresh_copy": lambda: big.clone(),
        "query_encoding": lambda: prop.encode_query(image),
        "memory_read": lambda: prop.read(query.key, mem_key, mem_value, top_k=50),
        "fusion_net_4": lambda: fusion(*fusion_in),
        "s2m": lambda: s2m(s2m_in),
    }
    out = {}
    with torch.inference_mode():
        for name, fn in fns.items():
            fn()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            out[name] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="pairs of worker processes (default 3)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed calls per workload in a worker (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--json", type=Path, help="write the raw figures here")
    p.add_argument("--markdown", type=Path, help="write the report here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.threads, args.repeats)))
        return 0

    sys.path.insert(0, str(ROOT))
    from util import HUGE_PAGES_ENV, transparent_huge_pages_mode
    from util.device import cpu_model
    from util.fileio import atomic_write_text

    started = time.time()
    samples: dict[str, list[dict]] = {"0": [], "1": []}
    for run in range(args.runs):
        for setting in ("0", "1") if run % 2 == 0 else ("1", "0"):
            env = dict(os.environ, **{HUGE_PAGES_ENV: setting}, PYTHONPATH=str(ROOT))
            res = subprocess.run([sys.executable, __file__, "--worker", "--threads",
                                  str(args.threads), "--repeats", str(args.repeats)],
                                 env=env, cwd=ROOT, check=True, capture_output=True, text=True)
            samples[setting].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"run {run + 1}/{args.runs} {HUGE_PAGES_ENV}={setting}: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in samples[setting][-1].items()),
                  flush=True)
    rows = []
    for name, what in WORKLOADS.items():
        off = statistics.median(s[name] for s in samples["0"])
        on = statistics.median(s[name] for s in samples["1"])
        rows.append({"workload": name, "what": what, "off_ms": off, "on_ms": on,
                     "off_over_on": off / on,
                     "off_samples_ms": [s[name] for s in samples["0"]],
                     "on_samples_ms": [s[name] for s in samples["1"]]})
    report = {"thp_mode": transparent_huge_pages_mode(), "threads": args.threads,
              "runs": args.runs, "repeats": args.repeats, "rows": rows,
              "seconds": time.time() - started, "cpu": cpu_model()}
    lines = ["# Huge-page CPU allocations on and off", "",
             "Produced by `python scripts/bench_huge_pages.py --json docs/huge_pages.json "
             "--markdown docs/HUGE_PAGES.md` "
             f"({report['seconds'] / 60:.1f} min). Machine: {report['cpu']}, "
             f"{args.threads} torch threads, kernel THP mode `{report['thp_mode']}`. "
             f"{args.runs} pairs of fresh processes, `{HUGE_PAGES_ENV}=0` and `=1` alternating; "
             f"each times every workload {args.repeats} times after one warm-up (median); the "
             "table gives the median over the processes, random weights, fp32, inference mode.",
             "", "| workload | what | off ms | on ms | off / on |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['workload']} | {r['what']} | {r['off_ms']:.1f} | {r['on_ms']:.1f} | "
              f"{r['off_over_on']:.2f} |" for r in rows]
    lines += ["", "Per-process medians (ms), off: "
              + "; ".join(f"{r['workload']} {', '.join(f'{x:.0f}' for x in r['off_samples_ms'])}"
                          for r in rows)
              + ". On: "
              + "; ".join(f"{r['workload']} {', '.join(f'{x:.0f}' for x in r['on_samples_ms'])}"
                          for r in rows) + ".", ""]
    text = "\n".join(lines)
    print(text)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
