"""The core install: describing, exact search, the ROI op, export and a train step run with TensorFlow, TFDS
and ScaNN unimportable; a feature whose extra is missing fails with one line naming the extra.

Each check runs in a fresh interpreter whose first act is an import hook (a `sys.meta_path` finder) that
makes `tensorflow`, `tensorflow_datasets` and `scann` (and their submodules) raise ModuleNotFoundError, as
in a virtualenv made by `pip install remap-jax` without the [data] and [index] extras.
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from remap_jax.runtime.extras import MissingExtraError, require, require_for_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOOK = """
import importlib.abc
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "scann")


class Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Unimportable())
"""


def run_without_extras(body: str, tmp_path) -> subprocess.CompletedProcess:
    """Runs `body` after HOOK in a fresh interpreter (cwd: the repository, so `train` imports); returns the
    completed process (stdout, stderr as text)."""
    script = tmp_path / "script.py"
    script.write_text(HOOK + textwrap.dedent(body))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "TMP_DIR": str(tmp_path)}
    return subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


CORE_PATHS = """
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from remap_jax import Extractor, Index, rmac_regions, roi_max_pool
from remap_jax.model import save_exported
from train import step as train_step

tmp = os.environ["TMP_DIR"]
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(3)]

# describing with pretrained weights: EfficientNet-Lite0 from its pip package, read with numpy
lite = Extractor.from_pretrained("efficientnet_lite0", weights="installed", image_size=(64, 64), batch_size=2)
x = lite(images)
assert x.shape[0] == 3 and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5), x.shape

# a trained model's export (msgpack params + config.json) read back: same descriptors
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "no weights given, using a random backbone"
    net = Extractor.from_pretrained("resnet18", taps=("layer4",), levels=2, image_size=(32, 32), batch_size=2)
config = {"arch": "resnet18", "taps": ["layer4"], "head": "remap", "levels": 2, "whiten": False,
          "image_size": [32, 32], "scales": [1.0]}
save_exported(os.path.join(tmp, "export"), config, net.variables)
exported = Extractor.from_checkpoint(os.path.join(tmp, "export"), batch_size=2)
np.testing.assert_allclose(exported(images), net(images), atol=1e-5)

# a remap-export artifact (jax.export, cpu + cuda + tpu) written and run through the Extractor's pipeline
from remap_jax.describe import export

export.save_artifact(os.path.join(tmp, "artifact"), net)
served = Extractor.from_exported(os.path.join(tmp, "artifact"), batch_size=2)
np.testing.assert_allclose(served(images), net(images), atol=1e-5)

# exact search, saved and loaded
index = Index.build(x, ids=["a", "b", "c"], method="exact")
index.save(os.path.join(tmp, "index"))
ids, scores = Index.load(os.path.join(tmp, "index")).search(x, k=2)
assert [row[0] for row in ids] == ["a", "b", "c"], ids

# the ROI op against the loop it replaces
maps = jnp.asarray(rng.standard_normal((2, 6, 8, 4)), jnp.float32)
regions = rmac_regions(6, 8, levels=2)
pooled = np.asarray(roi_max_pool(maps, regions))
loop = np.stack([np.asarray(maps)[:, y:y + h, x:x + w].max((1, 2)) for y, x, h, w in regions], axis=1)
np.testing.assert_array_equal(pooled, loop)

# one train step of the ResNet-18 model (triplet loss on a 2-tuple batch of query, positive, negative)
tx = optax.adam(1e-3)
mesh = train_step.make_mesh(jax.devices()[:1])
state = train_step.create_train_state(jax.tree.map(np.asarray, net.variables), tx)
step = train_step.make_train_step(net.model, tx, loss="triplet", margin=0.5, mesh=mesh)
batch = rng.integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)
state, metrics = step(state, batch, np.ones(2, np.float32))
assert int(state.step) == 1 and np.isfinite(float(metrics["loss"])), metrics

loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("core paths ran without", ", ".join(BLOCKED))
"""


def test_core_paths_run_without_tensorflow_tfds_and_scann(tmp_path):
    done = run_without_extras(CORE_PATHS, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "core paths ran without tensorflow, tensorflow_datasets, scann" in done.stdout


MISSING_EXTRAS = """
import numpy as np

from remap_jax import Index

from remap_jax.cli import index as index_cli
from remap_jax.runtime.extras import MissingExtraError

try:
    Index.build(np.eye(4, dtype=np.float32), method="scann")
except MissingExtraError as e:
    print("build:", e)
np.savez(os.environ["TMP_DIR"] + "/db.npz", descriptors=np.eye(4, dtype=np.float32),
         ids=np.array(list("abcd")))
print("cli status:", index_cli.main(["build", "--features", os.environ["TMP_DIR"] + "/db.npz", "--out",
                                     os.environ["TMP_DIR"] + "/ix", "--method", "scann"]))
from remap_jax.data import load_test_set

try:
    load_test_set("synthetic_landmarks/tiny")
except MissingExtraError as e:
    print("data:", e)
try:
    import train.main  # noqa: F401
except SystemExit as e:
    print("command:", e)
"""

SCANN_LINE = ("ScaNN search (method='scann') needs the [index] extra (no module 'scann'): "
              "pip install 'remap-jax[index]'")


def test_missing_extras_fail_with_one_line_naming_the_extra(tmp_path):
    done = run_without_extras("import os\n" + MISSING_EXTRAS, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert f"build: {SCANN_LINE}" in out
    assert "cli status: 2" in out
    assert done.stderr.strip().splitlines()[-1] == f"remap-index build: error: {SCANN_LINE}"
    data_extra = "needs the [data] extra (no module 'tensorflow_datasets'): pip install 'remap-jax[data]'"
    assert f"data: the TFDS datasets (remap_jax.data) {data_extra}" in out
    # the first extra of the command that is missing: [data] here, [train] in a core-only virtualenv
    command = [line for line in out if line.startswith("command: ")]
    pattern = (r"command: error: python -m train\.main needs the \[(train|data)\] extra \(no module '\w+'\): "
               r"pip install 'remap-jax\[\1\]'")
    assert len(command) == 1 and re.fullmatch(pattern, command[0]), command


def test_require_names_the_extra_only_for_the_missing_module_itself():
    assert require("json", "train", "x").dumps([1]) == "[1]"
    with pytest.raises(MissingExtraError, match=r"^feature X needs the \[index\] extra \(no module "
                       r"'no_such_pkg_r3'\): pip install 'remap-jax\[index\]'$"):
        require("no_such_pkg_r3.sub", "index", "feature X")
    with pytest.raises(SystemExit, match=r"^error: cmd needs the \[train\] extra \(no module 'no_such"):
        require_for_command("cmd", {"train": ("json", "no_such_pkg_r3")})
    require_for_command("cmd", {"train": ("json",)})  # installed: nothing happens


def test_require_keeps_a_broken_install_error(tmp_path, monkeypatch):
    """A package that is there but fails to import (a missing dependency of its own) is not a missing
    extra: its own error comes through."""
    (tmp_path / "broken_pkg_r3.py").write_text("import no_such_dependency_r3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_r3") as info:
        require("broken_pkg_r3", "data", "feature")
    assert not isinstance(info.value, MissingExtraError)
