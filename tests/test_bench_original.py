"""scripts/bench_original.py without the original code (which CI does not have): a folder that
is not a MiVOS checkout is refused by name, and the torchvision stand-in builds a ResNet with the
library's max-pool (what torchvision runs) and refuses downloads."""

from __future__ import annotations

import pytest
import torch

from tests._scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_original")


def test_not_a_checkout_is_refused_by_name(bench, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit) as err:
        bench.main(["--original", str(tmp_path), "--quick"])
    text = str(err.value) + capsys.readouterr().out
    assert str(tmp_path) in text and "not a MiVOS checkout" in text
    assert "inference_core" in text


def test_standin_resnet_uses_the_library_max_pool(bench):
    modules = bench._standin_modules()
    net = modules["torchvision.models"].resnet50(pretrained=False)
    assert type(net.maxpool) is torch.nn.MaxPool2d
    assert any(k.startswith("layer4.") for k in net.state_dict())
    with pytest.raises(RuntimeError, match="no download"):
        modules["torchvision.models.utils"].load_state_dict_from_url("https://example.invalid/w")
