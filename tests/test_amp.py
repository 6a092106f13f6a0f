"""util.amp: one spelling of the autocast modes and one autocast helper."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from util import amp


@pytest.mark.parametrize("name,canonical,dtype", [
    (None, None, None),
    ("none", None, None),
    ("bf16", "bf16", torch.bfloat16),
    ("bfloat16", "bf16", torch.bfloat16),
    ("fp16", "fp16", torch.float16),
    ("float16", "fp16", torch.float16),
])
def test_names_and_dtypes(name, canonical, dtype):
    assert amp.canonical_amp(name) == canonical
    assert amp.amp_dtype(name) is dtype
    assert canonical in amp.AMP_CHOICES


@pytest.mark.parametrize("bad", ["fp32", "BF16", "half", "", 16])
def test_unknown_names_are_refused(bad):
    with pytest.raises(ValueError, match="amp must be"):
        amp.canonical_amp(bad)
    with pytest.raises(ValueError, match="amp must be"):
        amp.autocast("cpu", bad)


def test_autocast_context():
    with amp.autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        y = torch.ones(4, 4) @ torch.ones(4, 4)
    assert y.dtype == torch.bfloat16
    with amp.autocast(torch.device("cpu"), "bfloat16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    # None switches autocast off, also inside an outer autocast region
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with amp.autocast("cpu", None):
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("level,flags,expected", [
    ("DEFAULT", {"avx512_bf16"}, False),
    ("AVX2", {"avx512_bf16", "amx_bf16"}, False),
    ("AVX512", set(), False),
    ("AVX512", {"avx512f", "avx512_bf16"}, True),
    ("AVX512", {"amx_bf16"}, True),
    ("AVX512_BF16", set(), True),
    ("AMX", set(), True),
])
def test_native_bf16(monkeypatch, level, flags, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: level)
    monkeypatch.setattr(amp, "_cpu_flags", lambda: set(flags))
    assert amp.native_bf16() is expected


def test_native_bf16_on_this_machine():
    assert isinstance(amp.native_bf16(), bool)


def test_util_amp_imports_no_project_package():
    tree = ast.parse(Path(amp.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"model", "dataset", "inference"}


def test_inference_configs_accept_both_spellings():
    from inference.inference_core import InferenceConfig
    from inference.semi_vos import SemiVOSConfig

    for name in (None, "bf16", "bfloat16", "fp16", "float16"):
        InferenceConfig(amp=name).validate()
        SemiVOSConfig(amp=name).validate()
    with pytest.raises(ValueError, match="amp must be"):
        InferenceConfig(amp="int8").validate()
    with pytest.raises(ValueError, match="amp must be"):
        SemiVOSConfig(amp="int8").validate()


def test_long_amp_name_is_the_one_table_of_long_spellings():
    from util.amp import long_amp_name

    assert long_amp_name(None) is None and long_amp_name("none") is None
    for spelling in ("bf16", "bfloat16"):
        assert long_amp_name(spelling) == "bfloat16"
    for spelling in ("fp16", "float16"):
        assert long_amp_name(spelling) == "float16"
    with pytest.raises(ValueError):
        long_amp_name("fp8")
