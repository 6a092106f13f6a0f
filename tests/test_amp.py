"""util.amp: one spelling of the autocast modes and one autocast helper."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from util import amp
from util.amp import EmulatedPrecisionWarning, resolve_amp


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


# ---------------------------------------------------------------------------------------------
# resolve_amp: an explicit bf16 / fp16 never silently emulated on a CPU. Every test here fixes
# what the CPU "has" by monkeypatching, so the results do not depend on the machine.
# ---------------------------------------------------------------------------------------------


def _set_cpu(monkeypatch, *, bf16: bool, fp16: bool = False, level: str = "AVX2") -> None:
    monkeypatch.setattr(amp, "native_bf16", lambda: bf16)
    monkeypatch.setattr(amp, "native_fp16", lambda: fp16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: level)
    for env in amp.ALLOW_EMULATED_ENV.values():
        monkeypatch.delenv(env, raising=False)


@pytest.fixture
def avx2_cpu(monkeypatch):
    """A CPU without native bf16 / fp16 (what torch reports on an AVX2-only machine)."""
    _set_cpu(monkeypatch, bf16=False, level="AVX2")
    return monkeypatch


@pytest.fixture
def native_cpu(monkeypatch):
    """A CPU with native bf16 (AVX512-BF16 / AMX) and fp16."""
    _set_cpu(monkeypatch, bf16=True, fp16=True, level="AVX512")
    return monkeypatch


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("spelling", ["bf16", "bfloat16"])
def test_resolve_amp_falls_back_to_float32_on_a_cpu_without_native_bf16(avx2_cpu, spelling):
    with pytest.warns(EmulatedPrecisionWarning) as record:
        assert resolve_amp(spelling, "cpu", what="the test") is None
    assert len(record) == 1
    text = str(record[0].message)
    # the reason (the capability torch reports, emulation), what happens, and how to force it
    assert text.startswith("the test: ")
    assert "AVX2" in text and "no native bf16" in text and "emulated" in text
    assert "float32 instead" in text
    assert "MIVOS_ALLOW_EMULATED_BF16=1" in text and "allow_emulated=True" in text
    assert issubclass(EmulatedPrecisionWarning, UserWarning)


def test_resolve_amp_keeps_bf16_on_a_native_cpu(native_cpu, no_warnings):
    for spelling in ("bf16", "bfloat16"):
        assert resolve_amp(spelling, "cpu") == "bf16"
        assert resolve_amp(spelling, torch.device("cpu")) == "bf16"
    assert resolve_amp("float16", "cpu") == "fp16"


def test_resolve_amp_overrides_keep_emulated_bf16(avx2_cpu, no_warnings):
    assert resolve_amp("bf16", "cpu", allow_emulated=True) == "bf16"
    avx2_cpu.setenv("MIVOS_ALLOW_EMULATED_BF16", "1")
    assert resolve_amp("bfloat16", "cpu") == "bf16"
    # the keyword wins over the environment
    with pytest.warns(EmulatedPrecisionWarning):
        assert resolve_amp("bf16", "cpu", allow_emulated=False) is None
    # the bf16 variable does not allow fp16, and "0" allows nothing
    with pytest.warns(EmulatedPrecisionWarning, match="MIVOS_ALLOW_EMULATED_FP16=1"):
        assert resolve_amp("fp16", "cpu") is None
    avx2_cpu.setenv("MIVOS_ALLOW_EMULATED_BF16", "0")
    with pytest.warns(EmulatedPrecisionWarning):
        assert resolve_amp("bf16", "cpu") is None


def test_resolve_amp_fp16_on_a_cpu_follows_native_fp16(monkeypatch):
    _set_cpu(monkeypatch, bf16=True, fp16=False, level="AVX512")
    with pytest.warns(EmulatedPrecisionWarning, match="no native fp16.*AVX512"):
        assert resolve_amp("fp16", "cpu") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_amp("bf16", "cpu") == "bf16"
        assert resolve_amp("fp16", "cpu", allow_emulated=True) == "fp16"
        monkeypatch.setenv("MIVOS_ALLOW_EMULATED_FP16", "1")
        assert resolve_amp("float16", "cpu") == "fp16"


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
@pytest.mark.parametrize("spelling,canonical", [("bf16", "bf16"), ("bfloat16", "bf16"),
                                                ("fp16", "fp16"), ("float16", "fp16")])
def test_resolve_amp_passes_cuda_through(avx2_cpu, no_warnings, device, spelling, canonical):
    assert resolve_amp(spelling, device) == canonical


def test_resolve_amp_float32_and_default_device(avx2_cpu, no_warnings):
    for name in (None, "none"):
        assert resolve_amp(name, "cpu") is None
    with pytest.raises(ValueError, match="amp must be"):
        resolve_amp("fp8", "cpu")
    # no device: CUDA when available (unchanged), else the CPU (checked)
    avx2_cpu.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_amp("bf16") == "bf16"
    avx2_cpu.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(EmulatedPrecisionWarning):
        assert resolve_amp("bf16") is None


@pytest.mark.parametrize("flags,onednn,expected", [
    (set(), False, False),
    ({"avx512_bf16", "avx512f"}, False, False),
    ({"avx512_fp16"}, False, True),
    ({"amx_fp16"}, False, True),
    (set(), True, True),
])
def test_native_fp16(monkeypatch, flags, onednn, expected):
    monkeypatch.setattr(amp, "_cpu_flags", lambda: set(flags))
    monkeypatch.setattr(amp, "_onednn_fp16", lambda: onednn)
    assert amp.native_fp16() is expected


def test_native_fp16_on_this_machine():
    assert isinstance(amp.native_fp16(), bool)


# ---------------------------------------------------------------------------------------------
# every place where a device and an AMP setting meet
# ---------------------------------------------------------------------------------------------


def _train_config(*extra):
    from train.propagation import PropTrainConfig
    from util.config import resolve_config

    cfg, _ = resolve_config(PropTrainConfig, ["--preset", "lite", "--output", "o", *extra])
    return cfg


def test_trainer_config_falls_back_on_a_cpu_without_native_bf16(avx2_cpu):
    with pytest.warns(EmulatedPrecisionWarning, match="training: .*AVX2"):
        assert _train_config("--amp", "bf16", "--device", "cpu").amp == "none"
    with pytest.warns(EmulatedPrecisionWarning, match="training: .*fp16"):
        assert _train_config("--amp", "fp16", "--device", "cpu").amp == "none"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _train_config("--amp", "bf16", "--device", "cuda:0").amp == "bf16"
        assert _train_config("--amp", "fp16", "--device", "cuda").amp == "fp16"
        assert _train_config("--amp", "none", "--device", "cpu").amp == "none"
        assert _train_config("--amp", "auto", "--device", "cpu").amp == "none"
        avx2_cpu.setenv("MIVOS_ALLOW_EMULATED_BF16", "1")
        assert _train_config("--amp", "bf16", "--device", "cpu").amp == "bf16"


def test_trainer_config_keeps_bf16_on_a_native_cpu(native_cpu, no_warnings):
    assert _train_config("--amp", "bf16", "--device", "cpu").amp == "bf16"
    assert _train_config("--amp", "auto", "--device", "cpu").amp == "bf16"


@pytest.fixture(scope="module")
def lite_prop():
    from model.presets import build_propagation

    torch.manual_seed(0)
    return build_propagation("lite").eval()


def _frames(t=4, h=24, w=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(t, h, w, 3), dtype=np.uint8)


def _label_map(h=24, w=40):
    m = np.zeros((h, w), np.int64)
    m[6:16, 8:24] = 1
    return m


def _core(prop, amp_name, **kw):
    from inference.inference_core import InferenceConfig, InferenceCore

    cfg = InferenceConfig(amp=amp_name, fusion="none", top_k=None)
    return InferenceCore(prop, None, _frames(), num_objects=1, config=cfg, device="cpu", **kw)


def test_inference_core_runs_float32_on_a_cpu_without_native_bf16(avx2_cpu, lite_prop):
    with pytest.warns(EmulatedPrecisionWarning, match="InferenceCore: .*AVX2"):
        core = _core(lite_prop, "bfloat16")
    assert core.amp is None and core.engine.amp is None
    assert core.config.amp == "bfloat16"  # the caller's configuration is not changed
    with core.engine.autocast():
        assert not torch.is_autocast_enabled("cpu")
    # the masks are exactly those of a float32 core
    ref = _core(lite_prop, None)
    for c in (core, ref):
        c.interact(_label_map(), 1)
    for t in range(4):
        assert torch.equal(core.get_prob(t), ref.get_prob(t))


def test_inference_core_keeps_bf16_on_a_native_cpu_or_when_allowed(avx2_cpu, lite_prop):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core = _core(lite_prop, "bf16", allow_emulated=True)
        assert core.amp == "bf16" and core.engine.amp == "bf16"
        avx2_cpu.setattr(amp, "native_bf16", lambda: True)
        core = _core(lite_prop, "bfloat16")
    assert core.amp == "bf16" and core.engine.amp == "bf16"
    with core.engine.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_semi_vos_propagator_runs_float32_on_a_cpu_without_native_bf16(avx2_cpu, lite_prop):
    from inference.semi_vos import SemiVOSConfig, SemiVOSPropagator

    with pytest.warns(EmulatedPrecisionWarning, match="SemiVOSPropagator: .*AVX2"):
        prop = SemiVOSPropagator(lite_prop, SemiVOSConfig(amp="bf16"))
    assert prop.amp is None and prop._engine((24, 40)).amp is None
    assert prop.config.amp == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = SemiVOSPropagator(lite_prop, SemiVOSConfig(amp="bf16"), allow_emulated=True)
        assert kept.amp == "bf16" and kept._engine((24, 40)).amp == "bf16"
        avx2_cpu.setattr(amp, "native_bf16", lambda: True)
        native = SemiVOSPropagator(lite_prop, SemiVOSConfig(amp="bfloat16"))
    assert native.amp == "bf16" and native._engine((24, 40)).amp == "bf16"


def _davis_config(*extra):
    import eval_davis_interactive as edi

    args = edi.build_parser().parse_args(["--davis", "d", "--output", "o", *extra])
    return edi, edi.eval_config(args)


def test_eval_davis_interactive_records_the_precision_used(avx2_cpu):
    edi, cfg = _davis_config("--amp", "bf16")
    assert cfg.inference.amp == "bfloat16"
    with pytest.warns(EmulatedPrecisionWarning, match="eval_davis_interactive.py --amp"):
        fallback = edi.resolve_precision(cfg, torch.device("cpu"))
    assert fallback.inference.amp is None and cfg.inference.amp == "bfloat16"
    # the fingerprint of a run that fell back is that of a float32 run
    _, fp32 = _davis_config()
    assert fallback == fp32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert edi.resolve_precision(cfg, "cuda:0") is cfg
        assert edi.resolve_precision(fp32, "cpu") is fp32
        avx2_cpu.setattr(amp, "native_bf16", lambda: True)
        # unchanged on a native CPU: earlier fingerprints stay valid
        assert edi.resolve_precision(cfg, "cpu").inference.amp == "bfloat16"


def test_eval_semi_vos_records_the_precision_used(avx2_cpu, tmp_path):
    import eval_semi_vos as esv

    def args(*extra):
        return esv.build_parser().parse_args(["--dataset", "davis2017", "--root", str(tmp_path),
                                              "--output", str(tmp_path / "o"), *extra])

    given = args("--amp", "bf16")
    with pytest.warns(EmulatedPrecisionWarning, match="eval_semi_vos.py --amp"):
        esv.resolve_precision(given, torch.device("cpu"))
    assert esv.semi_config(given).amp is None
    assert esv.run_fingerprint(given, 480) == esv.run_fingerprint(args(), 480)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        on_cuda = args("--amp", "bf16")
        esv.resolve_precision(on_cuda, "cuda")
        assert esv.semi_config(on_cuda).amp == "bf16"
        avx2_cpu.setattr(amp, "native_bf16", lambda: True)
        native = args("--amp", "bf16")
        esv.resolve_precision(native, "cpu")
        assert esv.semi_config(native).amp == "bf16"  # as recorded before: unchanged
        assert esv.run_fingerprint(native, 480)["config"]["amp"] == "bf16"


def test_interactive_gui_settings_record_the_precision_used(avx2_cpu):
    import interactive_gui

    def settings(*extra):
        parser = interactive_gui._build_parser()
        return interactive_gui._settings(parser.parse_args(["--random-weights", *extra]))

    with pytest.warns(EmulatedPrecisionWarning, match="interactive_gui.py --amp"):
        assert settings("--amp", "bf16", "--device", "cpu").amp is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert settings("--amp", "bf16", "--device", "cuda").amp == "bfloat16"
        assert settings("--device", "cpu").amp is None
        avx2_cpu.setattr(amp, "native_bf16", lambda: True)
        assert settings("--amp", "bf16", "--device", "cpu").amp == "bfloat16"


def test_amp_help_texts_say_what_happens_without_native_bf16():
    import eval_davis_interactive
    import eval_semi_vos
    import interactive_gui
    from train.propagation import PropTrainConfig
    from util.config import build_parser

    parsers = [eval_davis_interactive.build_parser(), eval_semi_vos.build_parser(),
               interactive_gui._build_parser(), build_parser(PropTrainConfig)]
    for parser in parsers:
        text = " ".join(parser.format_help().split())
        assert "MIVOS_ALLOW_EMULATED_BF16=1" in text, parser.prog
        assert "without native bf16" in text, parser.prog


# ------------------------------------------------------------------ channels-last under autocast


@pytest.mark.parametrize("arch", ["mivos", "stcn"])
def test_autocast_inference_runs_the_networks_channels_last(arch, monkeypatch):
    import model.propagation as propagation
    import model.stcn as stcn
    from model.presets import build_propagation

    torch.manual_seed(0)
    net = build_propagation("lite", arch=arch).eval()
    image = torch.randn(1, 3, 64, 96)
    masks = torch.rand(1, 2, 64, 96)

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            if arch == "mivos":
                query = net.encode_query(image)
                key, value = net.encode_memory(image.expand(2, -1, -1, -1),
                                               masks.transpose(0, 1))
                logits = net.segment(query, key.unsqueeze(2), value.unsqueeze(2), top_k=20)
            else:
                query = net.encode_key(image)
                value = net.encode_value(image, query.f16, masks)
                logits = net.segment(query, query.key.unsqueeze(2), value.unsqueeze(3),
                                     top_k=20)
        return query, logits.float()

    query, logits = run()
    assert query.f4.is_contiguous(memory_format=torch.channels_last)
    assert not query.f4.is_contiguous()
    # the same bf16 convolutions in NCHW: equal up to the order of accumulation
    for module in (propagation, stcn):
        monkeypatch.setattr(module, "channels_last_for_autocast", lambda x: x)
    query_nchw, logits_nchw = run()
    assert query_nchw.f4.is_contiguous()
    torch.testing.assert_close(logits, logits_nchw, atol=0.1, rtol=0.05)
    # with autograd (training under autocast) the layout is left alone
    monkeypatch.undo()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (net.encode_key(image) if arch == "stcn" else net.encode_query(image)
                ).f4.is_contiguous()


def test_autocast_inference_runs_s2m_channels_last(monkeypatch):
    import model.s2m as s2m_module
    from model.presets import build_s2m
    from util.tensor_util import channels_last_for_autocast

    torch.manual_seed(0)
    net = build_s2m("lite").eval()
    x = torch.randn(1, 6, 64, 96)
    layouts = []

    def spy(t):
        out = channels_last_for_autocast(t)
        layouts.append(out.is_contiguous(memory_format=torch.channels_last)
                       and not out.is_contiguous())
        return out

    monkeypatch.setattr(s2m_module, "channels_last_for_autocast", spy)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        nhwc = net(x).float()
    net(x)  # fp32 with autograd: left alone
    assert layouts == [True, False]
    monkeypatch.setattr(s2m_module, "channels_last_for_autocast", lambda t: t)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        nchw = net(x).float()
    torch.testing.assert_close(nhwc, nchw, atol=0.1, rtol=0.05)
