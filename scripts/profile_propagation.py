"""Profile of the propagation step on the CPU: the tables of docs/PROFILE.md.

Stages (per preset, architecture and number of objects K; frames H x W, T memory frames):

  read+decode (1st)   ``PropagationEngine.segment`` of a frame whose query features are cached
                      (the memory read, the decoder, sigmoid and aggregation) the first time the
                      frame is decoded
  read+decode (again) the same frame decoded again (a fusion pass, a later interaction)
  per-object loop     the straightforward version: for each object, read its own memory (one
                      contiguous tensor per object) and decode it with the frame's features
                      (``net.segment`` per object), then sigmoid and aggregation
  encode memory       ``PropagationEngine.encode_memory`` of one frame (all K objects)
  encode query        the query (key) encoder on one frame
  fusion pass         ``InferenceCore.interact`` on the last frame of a short video after a
                      first interaction on frame 0: a backward pass in which every frame is
                      segmented, memorised and fused; ms per fused frame

Variants, each in its own worker process, measured in turns (every repetition runs each stage
once per variant, the variants' order rotating) so that a load change on a shared machine hits
them alike; the tables give medians over the repetitions and ratios of medians:

  before   the tree with the propagation files (``--baseline-files``) as at ``--baseline``
  after    the tree as committed (``--tree``, default HEAD)
  cl       ``after`` with the image encoders in channels-last memory format (an option of the
           engine, off by default: it changes results by rounding)

Both trees are extracted with ``git archive`` into a temporary folder, so uncommitted edits in
the working tree are not measured. ``before`` and ``after`` must give bit-identical outputs (the
script checks the SHA-1 of every stage's output and says so); for ``cl`` it reports the largest
difference of the probabilities.

    python scripts/profile_propagation.py --threads 2 --repeats 5 \\
        --json docs/profile_propagation.json --markdown /tmp/profile_tables.md
    python scripts/profile_propagation.py --presets lite --objects 2 --profile   # op tables

``--profile`` adds, per configuration and variant, torch.profiler's ops of each stage with their
input shapes (self CPU time, one run), which is where copies and layout changes show up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: the commit before the propagation speed work (skip-branch cache, copy-free memory reads)
DEFAULT_BASELINE = "99d15bf"
#: the files that differ between ``before`` and ``after``
PROPAGATION_FILES = ("model/propagation.py", "model/stcn.py", "inference/engine.py",
                     "inference/arch.py", "inference/memory_bank.py")
STAGES = ("read_decode_first", "read_decode_again", "per_object_loop", "encode_memory",
          "encode_query", "fusion_pass")
STAGE_NAMES = {
    "read_decode_first": "read+decode (1st)",
    "read_decode_again": "read+decode (again)",
    "per_object_loop": "per-object loop",
    "encode_memory": "encode memory",
    "encode_query": "encode query",
    "fusion_pass": "fusion pass / frame",
}
#: stages each variant runs (the per-object loop is the same network code in both trees)
VARIANT_STAGES = {
    "before": ("read_decode_first", "read_decode_again", "encode_memory", "encode_query",
               "fusion_pass"),
    "after": STAGES,
    "cl": ("read_decode_first", "read_decode_again", "encode_memory", "encode_query",
           "fusion_pass"),
}


# ============================================================================ worker side


def _digest(t) -> str:
    return hashlib.sha1(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


class Setup:
    """One configuration in a worker: networks, an engine with T memory frames, a short video
    for the fusion pass."""

    def __init__(self, preset: str, arch: str, k: int, size: tuple[int, int], mem_frames: int,
                 fusion_frames: int, channels_last: bool) -> None:
        import numpy as np
        import torch

        from inference.arch import adapter_for, defaults_for
        from inference.engine import PropagationEngine
        from inference.inference_core import InferenceConfig, InferenceCore
        from model.presets import build_fusion, build_propagation

        self.torch = torch
        torch.manual_seed(0)
        self.net = build_propagation(preset, arch=arch).eval()
        self.fusion = build_fusion(preset).eval()
        if channels_last:
            adapter_for(self.net).encoders_channels_last()
        self.k, self.arch = k, arch
        self.top_k = defaults_for(arch).top_k
        h, w = size
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 255, size=(mem_frames + 1, h, w, 3), dtype=np.uint8)
        self.engine = PropagationEngine(self.net, (h, w), frames=frames, top_k=self.top_k,
                                        image_cache=mem_frames + 2, feature_cache_mb=1e6)
        gen = torch.Generator().manual_seed(1)
        self.query_t = mem_frames
        with torch.inference_mode():
            self.bank = self.engine.new_bank()
            for t in range(mem_frames):
                self.engine.memorise(t, self._random_prob(gen), [self.bank], "permanent")
            self.prob_q = self._random_prob(gen)
            self.feats = self.engine.query_features(self.query_t)  # the plain features
            keys, values = self.bank.read_tensors()
            # the per-object loop's memory: one contiguous tensor per object
            if self.engine.adapter.shared_key:
                self.loop_memory = [(keys.contiguous(), values[i:i + 1].unsqueeze(0).contiguous())
                                    for i in range(k)]
            else:
                self.loop_memory = [(keys[i:i + 1].contiguous(), values[i:i + 1].contiguous())
                                    for i in range(k)]

        # the fusion pass: a short video, one interaction on frame 0 (kept as a snapshot)
        video = np.stack([np.roll(frames[0], 7 * i, axis=1) for i in range(fusion_frames)])
        self.core = InferenceCore(self.net, self.fusion, video, k,
                                  InferenceConfig.for_arch(arch))
        self.labels = np.zeros((h, w), np.int64)
        for i in range(1, k + 1):
            self.labels[(i * h) // (k + 2):((i + 1) * h) // (k + 2), w // 8:(5 * w) // 8] = i
        self.labels2 = self.labels.copy()
        self.labels2[h // 3:h // 2, (5 * w) // 8:(7 * w) // 8] = 1
        self.core.interact(self.labels, 0)
        self.snapshot = (self.core.prob.clone(), self.core.padded_masks.copy(),
                         list(self.core.interacted), self.core.permanent.copy())
        self.fusion_frames = fusion_frames

    def _random_prob(self, gen):
        p = self.torch.rand(self.k + 1, self.engine.ph, self.engine.pw, generator=gen)
        return p / p.sum(0, keepdim=True)

    def _fresh_features(self) -> None:
        """Frame query_t's cache entry back to the plain features (no decoder skips)."""
        self.engine._features[self.query_t] = self.feats
        self.engine._last_features = (self.query_t, self.feats)

    # ---------------------------------------------------------------- stages (one run each)
    def read_decode_first(self):
        self._fresh_features()
        return self.engine.segment(self.query_t, [self.bank])

    def read_decode_again(self):
        return self.engine.segment(self.query_t, [self.bank])

    def per_object_loop(self):
        from model.aggregate import aggregate

        torch = self.torch
        rows = []
        for key, value in self.loop_memory:
            logits = self.net.segment(self.feats, key, value, top_k=self.top_k)
            rows.append(logits.reshape(-1, *logits.shape[-2:]))
        return aggregate(torch.sigmoid(torch.cat(rows)), dim=0)

    def encode_memory(self):
        key, value = self.engine.encode_memory(self.query_t, self.prob_q)
        return value

    def encode_query(self):
        return self.engine.adapter.encode_query(self.engine.image(self.query_t)).key

    def fusion_pass(self):
        prob, masks, interacted, permanent = self.snapshot
        self.core.prob = prob.clone()
        self.core.padded_masks[...] = masks
        self.core.interacted = list(interacted)
        self.core.permanent = permanent.copy()
        self.core.interact(self.labels2, self.fusion_frames - 1)
        return self.core.prob

    def run(self, stage: str) -> tuple[float, float, Any]:
        """One run of a stage: wall-clock ms, CPU ms (all threads of the process), output."""
        torch = self.torch
        with torch.inference_mode():
            cpu = time.process_time()
            start = time.perf_counter()
            out = getattr(self, stage)()
            ms = (time.perf_counter() - start) * 1000
            cpu_ms = (time.process_time() - cpu) * 1000
        if stage == "fusion_pass":  # per fused frame
            ms /= self.fusion_frames - 2
            cpu_ms /= self.fusion_frames - 2
        return ms, cpu_ms, out

    def profile(self, stage: str, rows: int) -> str:
        from torch.profiler import ProfilerActivity, profile

        torch = self.torch
        with torch.inference_mode():
            getattr(self, stage)()  # warm
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                getattr(self, stage)()
        return prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=34,
            max_shapes_column_width=70)


def worker_main(root: str, threads: int) -> None:
    """Answer JSON commands on stdin, one per line (stdout carries only the answers)."""
    sys.path.insert(0, root)
    import torch

    torch.set_num_threads(threads)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything else printed goes to stderr
    setups: dict[str, Setup] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "setup":
                setups.clear()  # one configuration at a time (memory)
                setups[cmd["name"]] = Setup(cmd["preset"], cmd["arch"], cmd["objects"],
                                            tuple(cmd["size"]), cmd["mem_frames"],
                                            cmd["fusion_frames"], cmd["channels_last"])
                answer: dict[str, Any] = {"ok": True}
            elif cmd["cmd"] == "run":
                ms, cpu_ms, result = setups[cmd["name"]].run(cmd["stage"])
                answer = {"ok": True, "ms": ms, "cpu_ms": cpu_ms, "digest": _digest(result)}
                if cmd.get("keep"):
                    path = Path(cmd["keep"])
                    torch.save(result.detach().float().cpu(), path)
            elif cmd["cmd"] == "profile":
                answer = {"ok": True, "table": setups[cmd["name"]].profile(cmd["stage"],
                                                                          cmd["rows"])}
            else:
                answer = {"ok": False, "error": f"unknown command {cmd['cmd']!r}"}
        except Exception as exc:  # reported to the parent, which stops
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


# ============================================================================ parent side


class Worker:
    def __init__(self, name: str, root: Path, threads: int) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   PYTHONDONTWRITEBYTECODE="1")
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(root),
             "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(root))

    def ask(self, **cmd: Any) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"worker {self.name}: {answer.get('error')}")
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def extract_tree(rev: str, dest: Path, override_rev: str | None = None,
                 override_files: tuple[str, ...] = ()) -> None:
    """``git archive rev`` into dest, then the override files as at override_rev."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for path in override_files:
        text = subprocess.run(["git", "-C", str(REPO), "show", f"{override_rev}:{path}"],
                              check=True, capture_output=True).stdout
        (dest / path).write_bytes(text)


def machine_info() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return info
    flags: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            info["cpu"] = value.strip()
        elif key.strip() == "CPU(s)":
            info["cpus"] = value.strip()
        elif key.strip() == "Flags":
            flags = value.split()
    info["isa"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
                               "amx_bf16") if f in flags]
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def run_profile(args: argparse.Namespace) -> dict:
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()
                                             if k not in ("worker",)},
                               "machine_start": machine_info(), "configs": [], "profiles": []}
    variants = ["before", "after"] + (["cl"] if args.channels_last else [])
    with tempfile.TemporaryDirectory(prefix="profile_propagation_") as tmp:
        tmp_path = Path(tmp)
        roots = {"after": tmp_path / "after", "before": tmp_path / "before"}
        for path in roots.values():
            path.mkdir()
        extract_tree(args.tree, roots["after"])
        extract_tree(args.tree, roots["before"], args.baseline, tuple(args.baseline_files))
        roots["cl"] = roots["after"]
        workers = {v: Worker(v, roots[v], args.threads) for v in variants}
        try:
            for preset in args.presets:
                for arch in args.archs:
                    for k in args.objects:
                        config = {"preset": preset, "arch": arch, "objects": k}
                        log(f"setting up {config}")
                        for v, w in workers.items():
                            w.ask(cmd="setup", name=v, preset=preset, arch=arch, objects=k,
                                  size=args.size, mem_frames=args.memory_frames,
                                  fusion_frames=args.fusion_frames,
                                  channels_last=v == "cl")
                        results["configs"].append(measure(config, workers, args, tmp_path))
                        if args.json:  # after each configuration: a stopped run keeps these
                            args.json.write_text(json.dumps(results, indent=1, default=str))
                        if args.profile:
                            for v, w in workers.items():
                                for stage in args.profile_stages:
                                    if stage not in VARIANT_STAGES[v]:
                                        continue
                                    table = w.ask(cmd="profile", name=v, stage=stage,
                                                  rows=args.profile_rows)["table"]
                                    results["profiles"].append(
                                        {**config, "variant": v, "stage": stage,
                                         "table": table})
        finally:
            for w in workers.values():
                w.close()
    results["machine_end"] = machine_info()
    return results


def measure(config: dict, workers: dict[str, Worker], args: argparse.Namespace,
            tmp: Path) -> dict:
    import torch

    times: dict[str, dict[str, list[float]]] = {v: {s: [] for s in VARIANT_STAGES[v]}
                                                for v in workers}
    cpu_times: dict[str, dict[str, list[float]]] = {v: {s: [] for s in VARIANT_STAGES[v]}
                                                    for v in workers}
    digests: dict[str, dict[str, set[str]]] = {v: {s: set() for s in VARIANT_STAGES[v]}
                                               for v in workers}
    order = list(workers)
    for rep in range(args.warmup + args.repeats):
        for stage in STAGES:
            turn = order[rep % len(order):] + order[:rep % len(order)]
            for v in turn:
                if stage not in VARIANT_STAGES[v]:
                    continue
                keep = None
                if rep == 0 and stage in ("read_decode_first", "fusion_pass") and v in (
                        "after", "cl"):
                    keep = str(tmp / f"{v}_{stage}.pt")
                answer = workers[v].ask(cmd="run", name=v, stage=stage, keep=keep)
                digests[v][stage].add(answer["digest"])
                if rep >= args.warmup:
                    times[v][stage].append(answer["ms"])
                    cpu_times[v][stage].append(answer["cpu_ms"])
        log(f"  repetition {rep + 1}/{args.warmup + args.repeats} done")
    out = dict(config)
    out["ms"] = {v: {s: median(t) for s, t in st.items()} for v, st in times.items()}
    out["min_ms"] = {v: {s: min(t) if t else None for s, t in st.items()}
                     for v, st in times.items()}
    out["cpu_ms"] = {v: {s: median(t) for s, t in st.items()} for v, st in cpu_times.items()}
    out["samples_ms"] = times
    out["samples_cpu_ms"] = cpu_times
    out["identical_before_after"] = {
        s: digests["before"][s] == digests["after"][s] and len(digests["after"][s]) == 1
        for s in VARIANT_STAGES["before"]}
    # the per-object loop must give the engine's result too (same values, other code path)
    out["loop_matches_engine"] = digests["after"]["per_object_loop"] == digests["after"][
        "read_decode_first"]
    if "cl" in workers:
        diffs = {}
        for stage in ("read_decode_first", "fusion_pass"):
            a = torch.load(tmp / f"after_{stage}.pt", weights_only=True)
            b = torch.load(tmp / f"cl_{stage}.pt", weights_only=True)
            diffs[stage] = float((a - b).abs().max())
        out["cl_max_abs_diff"] = diffs
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def markdown(results: dict) -> str:
    """The tables: ms per stage (medians), before/after ratios, and the channels-last ratios."""
    lines = []
    m = results["machine_start"]
    s = results["settings"]
    lines.append(f"Machine: {m.get('cpu', '?')} ({m.get('cpus', '?')} CPUs; "
                 f"{', '.join(m.get('isa', [])) or 'no avx2'}), torch {m.get('torch', '?')}, "
                 f"{s['threads']} threads; load average at start "
                 f"{', '.join(f'{x:.1f}' for x in m.get('load_average', ()))}, at end "
                 f"{', '.join(f'{x:.1f}' for x in results['machine_end'].get('load_average', ()))}.")
    lines.append(f"Frames {s['size'][0]}x{s['size'][1]}, {s['memory_frames']} memory frames, "
                 f"fusion pass over {s['fusion_frames'] - 2} frames; medians of {s['repeats']} "
                 f"repetitions (after {s['warmup']} warm-up), variants interleaved.")
    lines.append("")
    lines.append("Wall-clock ms: medians; ratios > 1: the second variant is faster. 'min': "
                 "ratio of the fastest repetitions (noise only adds time); 'CPU': ratio of the "
                 "median CPU times of the process (all threads; time spent descheduled by other "
                 "jobs does not count).")
    lines.append("")
    lines.append("| preset | arch | K | stage | before ms | after ms | before/after | (min) | "
                 "(CPU) | per-object loop ms | loop/after | (min) | (CPU) | identical |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in results["configs"]:
        ms, lo, cpu = c["ms"], c["min_ms"], c["cpu_ms"]
        for stage in ("read_decode_first", "read_decode_again", "encode_memory",
                      "encode_query", "fusion_pass"):
            b, a = ms["before"].get(stage), ms["after"].get(stage)
            b_min, a_min = lo["before"].get(stage), lo["after"].get(stage)
            b_cpu, a_cpu = cpu["before"].get(stage), cpu["after"].get(stage)
            loop = loop_min = loop_cpu = None
            if stage.startswith("read_decode"):
                loop = ms["after"]["per_object_loop"]
                loop_min = lo["after"]["per_object_loop"]
                loop_cpu = cpu["after"]["per_object_loop"]
            same = "yes" if c["identical_before_after"].get(stage) else "NO"
            lines.append(f"| {c['preset']} | {c['arch']} | {c['objects']} | "
                         f"{STAGE_NAMES[stage]} | {fmt(b)} | {fmt(a)} | {ratio(b, a)} | "
                         f"{ratio(b_min, a_min)} | {ratio(b_cpu, a_cpu)} | {fmt(loop)} | "
                         f"{ratio(loop, a)} | {ratio(loop_min, a_min)} | "
                         f"{ratio(loop_cpu, a_cpu)} | {same} |")
    if any("cl" in c["ms"] for c in results["configs"]):
        lines.append("")
        lines.append("| preset | arch | K | stage | after ms | channels-last ms | "
                     "after/channels-last | (min) | (CPU) | max abs diff of probabilities |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for c in results["configs"]:
            if "cl" not in c["ms"]:
                continue
            for stage in VARIANT_STAGES["cl"]:
                a, cl = c["ms"]["after"].get(stage), c["ms"]["cl"].get(stage)
                a_min, cl_min = c["min_ms"]["after"].get(stage), c["min_ms"]["cl"].get(stage)
                diff = c.get("cl_max_abs_diff", {}).get(stage)
                a_cpu, cl_cpu = c["cpu_ms"]["after"].get(stage), c["cpu_ms"]["cl"].get(stage)
                lines.append(f"| {c['preset']} | {c['arch']} | {c['objects']} | "
                             f"{STAGE_NAMES[stage]} | {fmt(a)} | {fmt(cl)} | {ratio(a, cl)} | "
                             f"{ratio(a_min, cl_min)} | {ratio(a_cpu, cl_cpu)} | "
                             f"{'-' if diff is None else f'{diff:.1e}'} |")
    if any(not c.get("loop_matches_engine") for c in results["configs"]):
        lines.append("")
        lines.append("The per-object loop's probabilities differ from the engine's in the last "
                     "bits where marked in the JSON (loop_matches_engine); the times compare "
                     "the same work.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--presets", nargs="+", default=["lite", "mivos"])
    p.add_argument("--archs", nargs="+", default=["mivos"], help="mivos and / or stcn")
    p.add_argument("--objects", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--size", nargs=2, type=int, default=[240, 432], metavar=("H", "W"))
    p.add_argument("--memory-frames", type=int, default=20)
    p.add_argument("--fusion-frames", type=int, default=6,
                   help="frames of the fusion-pass video (the pass fuses all but two)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tree", default="HEAD", help="commit measured as 'after'")
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help="commit whose propagation files are measured as 'before'")
    p.add_argument("--baseline-files", nargs="+", default=list(PROPAGATION_FILES))
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="skip the channels-last variant")
    p.add_argument("--profile", action="store_true", help="torch.profiler op tables too")
    p.add_argument("--profile-rows", type=int, default=25)
    p.add_argument("--profile-stages", nargs="+", choices=STAGES,
                   default=["read_decode_first", "read_decode_again"])
    p.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                   help="only print the tables of earlier runs' JSON files (merged in order)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.threads)
        return 0
    if args.render:
        runs = [json.loads(path.read_text()) for path in args.render]
        results = dict(runs[0])
        results["configs"] = [c for run in runs for c in run["configs"]]
        results["machine_end"] = runs[-1].get("machine_end", runs[-1]["machine_start"])
        results["profiles"] = []
        print(markdown(results))
        return 0
    results = run_profile(args)
    text = markdown(results)
    print(text)
    for prof in results["profiles"]:
        print(f"### {prof['preset']} {prof['arch']} K={prof['objects']} {prof['variant']} "
              f"{prof['stage']}\n```\n{prof['table']}```\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
