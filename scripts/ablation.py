"""The DAVIS interactive ablation in the layout of the paper's Table 5.

Runs ``eval_davis_interactive.py`` once per row, each into its own folder (so every row resumes
on its own), then writes a Markdown table (AUC-J&F, J&F@60s, J&F after each interaction) and one
plot with the J&F-vs-time curves of all rows.

Rows (what changes between them):

| row | memory read | fusion | interaction |
|---|---|---|---|
| no top-k | full softmax | none | S2M |
| top-k | top-k 50 | none | S2M |
| linear fusion | top-k 50 | linear | S2M |
| difference-aware fusion | top-k 50 | diff | S2M |
| perfect interaction | top-k 50 | diff | ground truth |

Example (official weights on real DAVIS)::

    python scripts/ablation.py --davis ../DAVIS/2017/trainval --output out/ablation \\
        --s2m-model s2m.pth --prop-model propagation_model.pth --fusion-model fusion.pth

Everything after ``--`` is passed to every evaluation (e.g. ``-- --device cuda --amp bf16``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ROWS = [
    ("no_topk", "no top-k", ["--top-k", "none", "--fusion", "none"]),
    ("topk", "top-k", ["--top-k", "50", "--fusion", "none"]),
    ("linear", "linear fusion", ["--top-k", "50", "--fusion", "linear"]),
    ("diff", "difference-aware fusion", ["--top-k", "50", "--fusion", "diff"]),
    ("oracle", "perfect interaction", ["--top-k", "50", "--fusion", "diff", "--oracle"]),
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


def plot(results: dict[str, dict], labels: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, s in results.items():
        ax.plot(s["curve"]["time"], s["curve"]["J_AND_F"], marker="o", markersize=3, label=labels[key])
    ax.axvline(60, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("J&F")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


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
    p.add_argument("--rows", nargs="+", default=[r[0] for r in ROWS], choices=[r[0] for r in ROWS],
                   help="which rows to run (default: all)")
    args = p.parse_args(argv)

    import eval_davis_interactive

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    labels = {key: label for key, label, _ in ROWS}
    results: dict[str, dict] = {}
    for key, label, flags in ROWS:
        if key not in args.rows:
            continue
        row_out = out / key
        cmd = ["--davis", args.davis, "--output", str(row_out), "--preset", args.preset, *flags]
        for flag, value in (("--s2m-model", args.s2m_model), ("--prop-model", args.prop_model),
                            ("--fusion-model", args.fusion_model)):
            if value:
                cmd += [flag, value]
        print(f"== {label}: eval_davis_interactive.py {' '.join(cmd + passthrough)}", flush=True)
        eval_davis_interactive.main(cmd + passthrough)
        results[key] = json.loads((row_out / "summary.json").read_text())

    md = table(results, labels)
    (out / "table5.md").write_text(
        "# DAVIS interactive ablation (layout of the paper's Table 5)\n\n"
        f"Data: `{args.davis}`; preset `{args.preset}`.\n\n{md}\n")
    (out / "table5.json").write_text(json.dumps(results, indent=2))
    plot(results, labels, out / "table5_curves.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
