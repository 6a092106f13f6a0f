"""Huge-page CPU allocations (``util/__init__.py``): the switch is set on the first import of any
project module, before the first tensor, and the user's own setting wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import util

ROOT = Path(__file__).resolve().parents[1]

# a fresh interpreter imports one module, then touches a 64 MiB tensor and reports how much of
# the process's anonymous memory the kernel backs with huge pages
_PROBE = """
import importlib, sys
importlib.import_module(sys.argv[1])
import torch
x = torch.empty(64 << 20, dtype=torch.uint8)
x.fill_(1)
kb = 0
with open('/proc/self/smaps_rollup') as f:
    for line in f:
        if line.startswith('AnonHugePages:'):
            kb = int(line.split()[1])
print(kb)
"""


def _huge_kb(module: str, setting: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != util.HUGE_PAGES_ENV}
    if setting is not None:
        env[util.HUGE_PAGES_ENV] = setting
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", _PROBE, module], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1])


def test_request_sets_the_switch_only_when_unset():
    env: dict[str, str] = {}
    assert util.request_huge_pages(env, platform="linux")
    assert env == {util.HUGE_PAGES_ENV: "1"}
    env = {util.HUGE_PAGES_ENV: "0"}
    assert not util.request_huge_pages(env, platform="linux")
    assert env == {util.HUGE_PAGES_ENV: "0"}
    env = {}
    assert not util.request_huge_pages(env, platform="darwin")
    assert env == {}


def test_importing_the_project_set_the_switch():
    assert os.environ.get(util.HUGE_PAGES_ENV) in {"0", "1"}
    assert util.transparent_huge_pages_mode() in {None, "always", "madvise", "never"}


needs_madvise = pytest.mark.skipif(
    not sys.platform.startswith("linux") or util.transparent_huge_pages_mode() != "madvise"
    or not Path("/proc/self/smaps_rollup").exists(),
    reason="huge pages on request need Linux with transparent_hugepage=madvise")


@needs_madvise
@pytest.mark.parametrize("module", ["model.memory", "eval_semi_vos", "train_prop", "benchmark"])
def test_entry_points_get_huge_pages(module):
    assert _huge_kb(module, None) > 0


@needs_madvise
def test_user_can_turn_huge_pages_off():
    assert _huge_kb("model.memory", "0") == 0
