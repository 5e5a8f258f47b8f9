"""`python -m train.main`: shipped configs validate; wrong keys, types and values fail before compute."""

import os
import subprocess
import sys

import pytest

from train import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["demo", "demo_resnet18", "remap_resnet101", "remap_resnext101", "rmac_resnet101", "gem_resnet101"]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
    import importlib

    config = importlib.import_module(f"train.configs.{name}").get_config()
    validate.validate_config(config)
    assert config.is_type_safe
    if not name.startswith("demo"):  # the paper's setting: 40 regions at 768x1024, two taps of the last stage
        assert tuple(config.image_size) == (768, 1024) and config.model.levels == 4
    if name.startswith("remap"):
        assert config.model.head == "remap" and len(config.model.taps) == 2


def _main(*overrides, workdir):
    cmd = [sys.executable, "-m", "train.main", "--config=train/configs/demo.py", f"--workdir={workdir}",
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("override, code, message", [
    ("--config.num_epoch=3", 2, 'no such config field.*Did you mean "num_epochs"'),
    ("--config.num_epochs=three", 1, "num_epochs=three"),
    ("--config.margin=-0.5", 2, r"config.margin = -0.5: expected > 0"),
    ("--config.model.arch=resnet7", 2, r"config.model.arch = 'resnet7'"),
    ("--config.model.taps=('layer9.0',)", 2,
     r"config.model.taps: \['layer9.0'\] are not blocks of efficientnet_lite0"),
])
def test_bad_config_fails_before_compute(tmp_path, override, code, message):
    import re

    proc = _main(override, workdir=tmp_path / "w")
    assert proc.returncode == code, proc.stderr[-2000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()  # nothing was started
