"""The DAVIS interactive ablation in the layout of the paper's Table 5.

Runs ``eval_davis_interactive.py`` once per row, each into its own folder (so every row resumes
on its own), then writes a Markdown table (AUC-J&F, J&F@60s, J&F after each interaction) and one
plot with the J&F-vs-time curves of all rows.

Rows (what changes between them):

| row | memory read | fusion | interaction |
|---|---|---|---|
| no top-k | full softmax | none | S2M |
| top-k | top-k | none | S2M |
| linear fusion | top-k | linear | S2M |
| difference-aware fusion | top-k | diff | S2M |
| perfect interaction | top-k | diff | ground truth (empty robot scribble: keep the frame) |

Every row runs the evaluation's protocol (``--protocol``, default ``mivos``). The perfect
interaction row adds ``--empty-scribble keep``: with the ground truth on the interacted frame
the robot finds nothing to correct there and returns an empty scribble, which the original
driver's rule (``last-frame``) would turn into a "perfect interaction" on the last frame of the
video, whose ground truth may be empty; the row would then measure that rule, not the
interaction. Pass ``-- --empty-scribble last-frame`` to run every row with the original rule.

``--arch mivos|stcn`` is passed to every evaluation: the propagation architecture, with its
top-k (50 for mivos, 20 for stcn) and its default weight names.

Example (official weights on real DAVIS)::

    python scripts/ablation.py --davis ../DAVIS/2017/trainval --output out/ablation \\
        --s2m-model s2m.pth --prop-model propagation_model.pth --fusion-model fusion.pth

Everything after ``--`` is passed to every evaluation (e.g. ``-- --device cuda --amp bf16``).

``--jobs N`` evaluates N rows at a time, each in its own process with ``--threads-per-job``
torch threads and its log in ``OUT/logs/<row>.log``; the J&F of every frame is that of the rows
run one after the other (on a CPU with 2 cores, ``--jobs 2`` finishes the five rows sooner).

Resuming: ``OUT/fingerprint.json`` records the data, the preset, the options passed to the
evaluations (not ``--device``, ``--save-masks``, ``-v``) and the SHA-256 of every weight file;
each row's folder has its own (see ``eval_davis_interactive.py``). A rerun with the same
fingerprint skips every finished row (the evaluation rebuilds its summary without running the
session), continues an interrupted one, and rebuilds the table and the plot. A rerun with
another fingerprint stops with exit status 2 and a message naming what differs; ``--restart``
discards the earlier results of the rows run (their folders) and starts them over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the top-k rows use the architecture's top-k (the evaluation's default for --arch)
ROWS = [
    ("no_topk", "no top-k", ["--top-k", "none", "--fusion", "none"]),
    ("topk", "top-k", ["--fusion", "none"]),
    ("linear", "linear fusion", ["--fusion", "linear"]),
    ("diff", "difference-aware fusion", ["--fusion", "diff"]),
    ("oracle", "perfect interaction", ["--fusion", "diff", "--oracle", "--empty-scribble", "keep"]),
]


def table(results: dict[str, dict], labels: dict[str, str]) -> str:
    from inference.davis_interactive import per_interaction_scores

    n = max((len(per_interaction_scores(s)) for s in results.values()), default=0)
    head = "| | AUC-J&F | J&F@60s | " + " | ".join(f"J&F@{i + 1}" for i in range(n)) + " |"
    sep = "|---|---:|---:|" + "---:|" * n
    lines = [head, sep]
    for key, summary in results.items():
        scores = per_interaction_scores(summary)
        lines.append(f"| {labels[key]} | {summary['auc']:.3f} | "
                     f"{summary['metric_at_threshold']['J_AND_F']:.3f} | "
                     + " | ".join(f"{s:.3f}" for s in scores) + " |")
    return "\n".join(lines)


#: differences reported with a paired bootstrap interval: (a, b) means "a - b"; the paper's
#: order is perfect interaction >= difference-aware >= linear fusion, and top-k >= no top-k
PAIRS = [("oracle", "diff"), ("diff", "linear"), ("linear", "topk"), ("diff", "topk"),
         ("topk", "no_topk")]


def sequence_scores(report_csv: Path, interaction: int | None = None) -> dict[str, tuple[float, int]]:
    """Per sequence: (sum, count) of the J&F of its (scribble, object) entries after
    ``interaction`` (default: the last), each entry the mean over the frames of the sequence.

    This is how the official summary forms a point of its curve: a sample that timed out before
    ``interaction`` keeps its last result; the curve's value is the sum over all sequences
    divided by the count.
    """
    import pandas as pd

    df = pd.read_csv(report_csv)
    n = int(df["interaction"].max()) if interaction is None else interaction
    df = df[df["interaction"] <= n]
    keys = ["sequence", "scribble_idx", "object_id"]
    last = df.groupby(keys)["interaction"].transform("max")
    entries = df[df["interaction"] == last].groupby(keys)["j_and_f"].mean().reset_index()
    grouped = entries.groupby("sequence")["j_and_f"]
    return {str(seq): (float(v.sum()), int(len(v))) for seq, v in grouped}


def intervals(out: Path, keys: list[str], labels: dict[str, str], seed: int = 0) -> tuple[str, dict]:
    """Markdown lines and a JSON-able dict of the paired bootstrap intervals of :data:`PAIRS`
    (rows of ``keys`` that have a ``report.csv``), at the last interaction."""
    from util.stats import paired_bootstrap

    scores = {k: sequence_scores(out / k / "report.csv") for k in keys
              if (out / k / "report.csv").is_file()}
    lines, data = [], {}
    for a, b in PAIRS:
        if a in scores and b in scores:
            d = paired_bootstrap(scores[a], scores[b], seed=seed)
            data[f"{a}-{b}"] = {"difference": d.difference, "low": d.low, "high": d.high,
                                "sequences": d.sequences, "contains_zero": d.contains_zero}
            lines.append(f"| {labels[a]} - {labels[b]} | {d.difference:+.3f} | "
                         f"[{d.low:+.3f}, {d.high:+.3f}] | "
                         f"{'yes: no difference shown' if d.contains_zero else 'no'} |")
    if not lines:
        return "", data
    head = ["| difference (J&F after the last interaction) | value | 95% interval | contains 0 |",
            "|---|---:|---:|---|"]
    return "\n".join(head + lines), data


def plot(results: dict[str, dict], labels: dict[str, str], path: Path) -> None:
    """Two panels: J&F against time (the official curve) and J&F after each interaction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from inference.davis_interactive import per_interaction_scores

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, s in results.items():
        ax.plot(s["curve"]["time"], s["curve"]["J_AND_F"], marker="o", markersize=3, label=labels[key])
        scores = per_interaction_scores(s)
        ax2.plot(range(1, len(scores) + 1), scores, marker="o", markersize=4, label=labels[key])
    ax.axvline(60, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("J&F")
    ax.set_title("J&F against time (official curve)")
    ax2.set_xlabel("interaction")
    ax2.set_ylabel("J&F")
    ax2.set_title("J&F after each interaction")
    for a in (ax, ax2):
        a.set_ylim(0, 1)
        a.grid(alpha=0.3)
    ax2.xaxis.get_major_locator().set_params(integer=True)
    ax2.legend(loc="lower right")
    fig.tight_layout()
    from util.fileio import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


#: evaluation options that do not change a result (left out of the fingerprint)
RUNTIME_FLAGS = {"--device": 1, "--num-threads": 1, "--save-masks": 0, "-v": 0, "--verbose": 0,
                 "--restart": 0, "--no-resume": 0}


def result_options(passthrough: list[str]) -> list[str]:
    """The passed-through evaluation options that change results (runtime flags removed)."""
    out, i = [], 0
    while i < len(passthrough):
        arg = passthrough[i]
        name = arg.split("=", 1)[0]
        if name in RUNTIME_FLAGS:
            i += 1 + (RUNTIME_FLAGS[name] if "=" not in arg else 0)
            continue
        out.append(arg)
        i += 1
    return out


def ablation_fingerprint(args: argparse.Namespace, passthrough: list[str]) -> dict[str, Any]:
    """Data, preset, result-changing evaluation options and the hash of each weight file."""
    from util.fingerprint import make_fingerprint, weights_entry

    config = {"davis": str(Path(args.davis).resolve()), "preset": args.preset, "arch": args.arch,
              "evaluation_options": result_options(passthrough),
              "row_options": {key: flags for key, _, flags in ROWS}}
    weights = {kind: weights_entry(path) for kind, path in (
        ("s2m", args.s2m_model), ("propagation", args.prop_model),
        ("fusion", args.fusion_model)) if path}
    return make_fingerprint(config, weights, kind="ablation")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--davis", required=True, help="DAVIS 2017 root or a synthetic stand-in")
    p.add_argument("--output", required=True, help="folder for one sub-folder per row and the table")
    p.add_argument("--s2m-model", help="S2M weights")
    p.add_argument("--prop-model", help="propagation weights")
    p.add_argument("--fusion-model", help="fusion weights")
    p.add_argument("--preset", default="mivos", choices=["mivos", "lite"])
    p.add_argument("--arch", default="mivos", choices=["mivos", "stcn"],
                   help="propagation architecture passed to every evaluation (default: mivos)")
    p.add_argument("--rows", nargs="+", default=[r[0] for r in ROWS], choices=[r[0] for r in ROWS],
                   help="which rows to run (default: all)")
    p.add_argument("--jobs", type=int, default=1,
                   help="rows evaluated at the same time, each in its own process "
                        "(default: 1, in this process). The robot, the metrics and the scribble "
                        "rasterisation are single-threaded Python, so two rows with one torch "
                        "thread each finish sooner than one row after the other with two. The "
                        "J&F after each interaction does not change; the measured times (hence "
                        "AUC and J&F@60s) are those of the rows' own thread counts")
    p.add_argument("--threads-per-job", type=int, default=None,
                   help="torch threads of each row's process with --jobs > 1 (default: the "
                        "usable CPU cores divided by --jobs, at least 1)")
    p.add_argument("--restart", action="store_true",
                   help="discard the earlier results of the rows run (needed when they were made "
                        "with other settings or weights) and start them over")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads_per_job is not None and args.threads_per_job < 1:
        p.error(f"--threads-per-job must be at least 1, got {args.threads_per_job}")

    from util.errors import InputError, report

    try:
        return _run(args, passthrough)
    except (InputError, FileNotFoundError) as exc:
        return report(exc)


def _run(args: argparse.Namespace, passthrough: list[str]) -> int:
    import eval_davis_interactive
    from util.errors import require_output_dir
    from util.fileio import atomic_save_json, atomic_write_text
    from util.fingerprint import check_fingerprint, load_fingerprint, save_fingerprint

    out = Path(args.output)
    require_output_dir(out)
    fingerprint = ablation_fingerprint(args, passthrough)
    if not args.restart:
        check_fingerprint(load_fingerprint(out), fingerprint, out, "--restart")
    else:  # discard up front, so that a restart killed half-way resumes without --restart
        import shutil

        for key in args.rows:
            if (out / key).is_dir():
                shutil.rmtree(out / key)
        for name in ("table5.md", "table5.json", "table5_curves.png", "table5_intervals.json"):
            if (out / name).is_file():
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    save_fingerprint(out, fingerprint)
    labels = {key: label for key, label, _ in ROWS}
    commands: dict[str, list[str]] = {}
    for key, _label, flags in ROWS:
        if key not in args.rows:
            continue
        cmd = ["--davis", args.davis, "--output", str(out / key), "--preset", args.preset,
               "--arch", args.arch, *flags]
        for flag, value in (("--s2m-model", args.s2m_model), ("--prop-model", args.prop_model),
                            ("--fusion-model", args.fusion_model)):
            if value:
                cmd += [flag, value]
        commands[key] = cmd + passthrough
    if args.jobs > 1 and len(commands) > 1:
        rc = _run_parallel(commands, labels, out, args.jobs, args.threads_per_job)
    else:
        rc = 0
        for key, cmd in commands.items():
            print(f"== {labels[key]}: eval_davis_interactive.py {' '.join(cmd)}", flush=True)
            rc = eval_davis_interactive.main(cmd)
            if rc != 0:
                print(f"error: row {key!r} ({out / key}) stopped with exit status {rc}",
                      file=sys.stderr)
                break
    if rc != 0:
        return rc
    results: dict[str, dict] = {key: json.loads((out / key / "summary.json").read_text())
                                for key in commands}

    md = table(results, labels)
    ci_md, ci = intervals(out, list(results), labels)
    ci_text = ("\n\nPaired bootstrap over sequences (10,000 resamples, seed 0) of the "
               f"differences between rows:\n\n{ci_md}\n" if ci_md else "\n")
    atomic_write_text(out / "table5.md",
                      "# DAVIS interactive ablation (layout of the paper's Table 5)\n\n"
                      f"Data: `{args.davis}`; preset `{args.preset}`.\n\n{md}{ci_text}")
    atomic_save_json(out / "table5.json", results)
    atomic_save_json(out / "table5_intervals.json", ci)
    plot(results, labels, out / "table5_curves.png")
    print(md)
    if ci_md:
        print(ci_md)
    return 0


def _run_parallel(commands: dict[str, list[str]], labels: dict[str, str], out: Path,
                  jobs: int, threads: int | None) -> int:
    """Each row in its own ``eval_davis_interactive.py`` process, ``jobs`` at a time, with
    ``threads`` torch threads each (the last row, which ends alone, with ``threads`` x the
    jobs); a row's output goes to ``OUT/logs/<row>.log``. Returns the
    first non-zero exit status (after every started row has finished), else 0."""
    import os
    import subprocess
    import time
    from concurrent.futures import ThreadPoolExecutor

    from util.device import usable_cores

    threads = threads or max(1, usable_cores() // jobs)
    env = dict(os.environ)  # the thread count is --num-threads (torch.set_num_threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    script = ROOT / "eval_davis_interactive.py"

    last = list(commands)[-1]
    # the last row runs alone once the others are done: it gets the threads of every job
    last_threads = threads * min(jobs, len(commands))

    def run(key: str) -> int:
        n = last_threads if key == last else threads
        cmd = [sys.executable, str(script), *commands[key], "--num-threads", str(n)]
        print(f"== {time.strftime('%H:%M:%S')} {labels[key]} (process, {n} thread(s), "
              f"log {logs / key}.log): "
              f"eval_davis_interactive.py {' '.join(commands[key])}", flush=True)
        with open(logs / f"{key}.log", "w", encoding="utf-8") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0:
            tail = (logs / f"{key}.log").read_text(encoding="utf-8").strip().splitlines()[-3:]
            print(f"error: row {key!r} ({out / key}) stopped with exit status {rc}; last lines "
                  f"of {logs / key}.log:\n  " + "\n  ".join(tail), file=sys.stderr)
        else:
            print(f"== {time.strftime('%H:%M:%S')} {labels[key]}: done", flush=True)
        return rc

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(run, list(commands)))
    return next((rc for rc in codes if rc != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
