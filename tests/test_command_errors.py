"""Every command ends an operating-system error (an output folder that cannot be made or written, a full disk,
a file gone mid-run) with exit status 2 and one line `PROG: FILE: CAUSE; WHAT WAS KEPT`, no traceback and no
half-written output (`remap_jax.runtime.command_errors`, `remap_jax.runtime.atomic`).

Tests run as root here, where chmod does not stop writes: a read-only folder is then simulated by making
the os-level calls that create files and folders under it fail with EROFS (`read_only`). A full disk is
simulated by a file whose writes fail with ENOSPC once the temporary exists (`full_disk`). Models are the
tiny ones tests/test_extract.py and tests/test_export.py use. One file for all eight commands (longer than
400 lines) so that they share the fault simulators and are checked by the same rule.
"""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest
from PIL import Image

from remap_jax.cli import evaluate as eval_cli
from remap_jax.cli import export as export_cli
from remap_jax.cli import extract as extract_cli
from remap_jax.cli import index as index_cli
from remap_jax.model import init_variables, model_from_config, save_exported
from remap_jax.runtime import atomic
from remap_jax.runtime.command_errors import describe_os_error, keeping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRACT = ["--arch", "resnet18", "--levels", "2", "--image-size", "64,96", "--batch-size", "2", "--quiet",
           "--workers", "1"]
LITE = {"arch": "efficientnet_lite0", "taps": ["blocks.2", "blocks.4"], "head": "remap", "levels": 2,
        "whiten": False, "image_size": [48, 64]}


# ------------------------------------------------------------------------------------------------ faults


def _under(path, folder) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(os.fspath(path)), folder]) == folder
    except (TypeError, ValueError):
        return False


def read_only(monkeypatch, folder) -> None:
    """Makes `folder` read-only: chmod 0o500 where that stops this user, else (root) every os-level call
    that creates, renames or opens for writing a path under it fails with EROFS."""
    folder = os.path.abspath(os.fspath(folder))
    if os.geteuid() != 0:
        os.chmod(folder, 0o500)
        monkeypatch.undo = _chained(monkeypatch.undo, lambda: os.chmod(folder, 0o700))
        return

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_mkdir, real_replace, real_builtin_open = os.open, os.mkdir, os.replace, builtins.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def os_open(path, flags, *a, **k):
        if flags & writing and _under(path, folder):
            refuse(path)
        return real_open(path, flags, *a, **k)

    def mkdir(path, *a, **k):
        if _under(path, folder) and os.path.abspath(os.fspath(path)) != folder:
            refuse(path)
        return real_mkdir(path, *a, **k)

    def replace(src, dst, *a, **k):
        if _under(dst, folder):
            refuse(dst)
        return real_replace(src, dst, *a, **k)

    def builtin_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and _under(file, folder):
            refuse(file)
        return real_builtin_open(file, mode, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(builtins, "open", builtin_open)


def _chained(first, second):
    def both():
        second()
        first()
    return both


def full_disk(monkeypatch, name_starts: str = "") -> None:
    """Writes through `atomic` to a temporary whose name starts with `.NAME_STARTS` fail with ENOSPC."""
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fdopen(fd, *a, **k):
        f = real(fd, *a, **k)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else ""
        return Full(f) if name.startswith("." + name_starts) and name.endswith(".tmp") else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def one_line(err: str, *parts: str) -> str:
    """The single stderr line (progress bars aside), checked to hold `parts` and no traceback."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def no_temporaries(folder) -> None:
    left = [n for n in os.listdir(folder) if n.startswith(".") and (".tmp" in n or ".old-" in n)]
    assert not left, left


def _images(folder, count=3, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
        Image.fromarray(small).resize((96, 64)).save(os.path.join(folder, f"{i:02d}.png"))
    return str(folder)


# -------------------------------------------------------------------------------------------- the helpers


def test_one_line_names_file_cause_and_what_was_kept():
    e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/db.npz")
    assert describe_os_error("p", e) == "p: /x/db.npz: No space left on device; nothing was written"
    with pytest.raises(OSError) as info, keeping(lambda: "kept /x/db.partial.npz"):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/x/db.npz")
    assert describe_os_error("p", info.value).endswith("Read-only file system; kept /x/db.partial.npz")
    assert describe_os_error("p", FileNotFoundError("checkpoint '/c': missing")) == (
        "p: checkpoint '/c': missing; nothing was written")


def test_atomic_writers_name_the_destination_and_leave_nothing(tmp_path, monkeypatch):
    full_disk(monkeypatch)
    with pytest.raises(OSError) as info:
        atomic.save_npz(str(tmp_path / "a.npz"), x=np.zeros(100))
    assert info.value.filename == str(tmp_path / "a.npz") and info.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as info, atomic.writing_dir(str(tmp_path / "d")) as tmp:
        atomic.write_json(os.path.join(tmp, "m.json"), {})
    assert info.value.filename == str(tmp_path / "d" / "m.json")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- remap-extract


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _images(tmp_path_factory.mktemp("images"), count=5)


def test_extract_output_folder_that_cannot_be_made(images, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "sub" / "db.npz"
    assert extract_cli.main([*EXTRACT, "--images", images, "--out", str(out)]) == 2
    one_line(capsys.readouterr().err, "remap-extract: ", str(tmp_path / "file"), "Not a directory",
             "nothing was written")
    assert os.listdir(tmp_path) == ["file"]


def test_extract_read_only_output_folder(images, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    read_only(monkeypatch, out)
    assert extract_cli.main([*EXTRACT, "--images", images, "--out", str(out / "db.npz")]) == 2
    monkeypatch.undo()
    one_line(capsys.readouterr().err, str(out / "db.npz"), "nothing was written")
    assert os.listdir(out) == []


def test_extract_full_disk_keeps_the_partial_file_and_resumes(images, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "db.npz")
    full_disk(monkeypatch, name_starts="db.npz.")  # the output, not the partial file
    assert extract_cli.main([*EXTRACT, "--images", images, "--out", out, "--save-every", "1"]) == 2
    monkeypatch.undo()
    partial = extract_cli.partial_path(out)
    one_line(capsys.readouterr().err, f"remap-extract: {out}: No space left on device; kept {partial}",
             "5 described", "rerun the same command to resume")
    assert sorted(os.listdir(tmp_path)) == ["db.partial.npz"]
    assert extract_cli.main([*EXTRACT, "--images", images, "--out", out]) == 0
    assert sorted(os.listdir(tmp_path)) == ["db.npz"]


def test_extract_image_vanishing_mid_run_is_listed_as_failed(tmp_path, capsys):
    folder = _images(tmp_path / "imgs", count=4)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"imgs/{n}\n" for n in sorted(os.listdir(folder))))
    real = extract_cli.list_images

    def listed_then_deleted(spec):
        found = real(spec)
        os.remove(os.path.join(folder, "02.png"))
        return found

    extract_cli.list_images = listed_then_deleted
    try:
        out = str(tmp_path / "q.npz")
        assert extract_cli.main([*EXTRACT, "--images", str(listing), "--out", out]) == 0
    finally:
        extract_cli.list_images = real
    with np.load(out) as f:
        assert list(f["failed"]) == ["imgs/02.png"] and len(f["ids"]) == 3
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ remap-index


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    db = rng.standard_normal((40, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    np.savez(root / "db.npz", descriptors=db, ids=np.array([f"c{i % 4}/{i:02d}.jpg" for i in range(40)]),
             failed=np.array([], str))
    np.savez(root / "q.npz", descriptors=db[:3], ids=np.array(["q0", "q1", "q2"]), failed=np.array([], str))
    return str(root / "db.npz"), str(root / "q.npz")


def test_index_build_output_folder_cannot_be_made_or_written(features, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    assert index_cli.main(["build", "--features", features[0], "--out", str(tmp_path / "file" / "i")]) == 2
    one_line(capsys.readouterr().err, "remap-index: ", str(tmp_path / "file"), "nothing was written")
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(monkeypatch, ro)
    assert index_cli.main(["build", "--features", features[0], "--out", str(ro / "idx")]) == 2
    monkeypatch.undo()
    one_line(capsys.readouterr().err, str(ro / "idx"), "Read-only file system" if os.geteuid() == 0 else "",
             "nothing was written")
    assert os.listdir(ro) == []


def test_index_full_disk_and_vanished_index_file(features, tmp_path, monkeypatch, capsys):
    idx = str(tmp_path / "idx")
    full_disk(monkeypatch, name_starts="index.json.")
    assert index_cli.main(["build", "--features", features[0], "--out", idx]) == 2
    monkeypatch.undo()
    one_line(capsys.readouterr().err, f"{idx}/index.json: No space left on device; nothing was written")
    assert os.listdir(tmp_path) == []
    assert index_cli.main(["build", "--features", features[0], "--out", idx]) == 0
    full_disk(monkeypatch, name_starts="ranks.npz.")
    ranks = str(tmp_path / "ranks.npz")
    search = ["search", "--index", idx, "--queries", features[1], "--k", "5", "--out", ranks]
    assert index_cli.main(search) == 2
    monkeypatch.undo()
    one_line(capsys.readouterr().err, f"{ranks}: No space left on device; nothing was written")
    no_temporaries(tmp_path)
    assert not os.path.exists(ranks)
    os.remove(os.path.join(idx, "database.npy"))  # gone between build and search
    capsys.readouterr()
    assert index_cli.main(search) == 2
    line = one_line(capsys.readouterr().err, "remap-index search: ")
    assert "database.npy" in line or "index" in line


# ------------------------------------------------------------------------------------------------- remap-eval


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, features):
    root = tmp_path_factory.mktemp("labelled")
    for i in range(40):
        os.makedirs(root / f"c{i % 4}", exist_ok=True)
        (root / f"c{i % 4}" / f"{i:02d}.jpg").write_bytes(b"")
    return f"folder:{root}"


def test_eval_results_folder_cannot_be_made_full_or_read_only(features, labelled, tmp_path, monkeypatch,
                                                               capsys):
    base = ["--features", features[0], "--labels", labelled]
    assert eval_cli.main(base + ["--out", str(tmp_path / "scores")]) == 0  # the setup works
    capsys.readouterr()
    (tmp_path / "file").write_text("")
    assert eval_cli.main(base + ["--out", str(tmp_path / "file" / "scores")]) == 2
    one_line(capsys.readouterr().err, "remap-eval: ", str(tmp_path / "file"), "nothing was written")
    full_disk(monkeypatch, name_starts="results.json.")
    assert eval_cli.main(base + ["--out", str(tmp_path / "full")]) == 2
    monkeypatch.undo()
    one_line(capsys.readouterr().err, str(tmp_path / "full" / "results.json"), "No space left on device")
    assert os.listdir(tmp_path / "full") == []
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(monkeypatch, ro)
    assert eval_cli.main(base + ["--out", str(ro)]) == 2
    monkeypatch.undo()
    one_line(capsys.readouterr().err, str(ro / "results.json"), "nothing was written")
    assert os.listdir(ro) == []


def test_eval_features_file_unreadable(features, labelled, tmp_path, monkeypatch, capsys):
    real = np.load

    def refused(path, *a, **k):
        if os.fspath(path) == features[0]:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), features[0])
        return real(path, *a, **k)

    monkeypatch.setattr(np, "load", refused)
    assert eval_cli.main(["--features", features[0], "--labels", labelled]) == 2
    one_line(capsys.readouterr().err, "remap-eval: ", features[0], "Permission denied")


# ----------------------------------------------------------------------------------------------- remap-export


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "checkpoint")
    model = model_from_config(LITE)
    save_exported(path, LITE, init_variables(model, jax.random.key(0), (1, 48, 64, 3)))
    return path


def test_export_output_folder_cannot_be_made(checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "serving"
    assert export_cli.main(["--checkpoint", checkpoint, "--out", str(out), "--formats", "jax"]) == 2
    one_line(capsys.readouterr().err, "remap-export: ", str(tmp_path / "file"), "nothing was written")


def test_export_full_disk_leaves_the_existing_folder_as_it_was(checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "serving"
    out.mkdir()
    (out / "descriptor.onnx").write_bytes(b"an earlier export")
    full_disk(monkeypatch, name_starts="descriptor.json.")
    assert export_cli.main(["--checkpoint", checkpoint, "--out", str(out), "--formats", "jax"]) == 2
    monkeypatch.undo()
    one_line(capsys.readouterr().err, f"remap-export: {out / 'descriptor.json'}: No space left on device",
             "nothing was written")
    assert os.listdir(out) == ["descriptor.onnx"] and sorted(os.listdir(tmp_path)) == ["serving"]
    assert export_cli.main(["--checkpoint", checkpoint, "--out", str(out), "--formats", "jax"]) == 0
    assert sorted(os.listdir(out)) == ["descriptor.jax", "descriptor.json", "descriptor.onnx"]
    no_temporaries(tmp_path)


def test_export_read_only_folder_and_saved_model_errors(checkpoint, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(monkeypatch, ro)
    assert export_cli.main(["--checkpoint", checkpoint, "--out", str(ro / "s"), "--formats", "jax"]) == 2
    monkeypatch.undo()
    one_line(capsys.readouterr().err, str(ro / "s"), "nothing was written")
    assert os.listdir(ro) == []
    tf = pytest.importorskip("tensorflow")
    from remap_jax.describe import export

    def full(directory, *a, **k):  # what TensorFlow's writer raises on a full disk
        os.makedirs(directory)
        raise tf.errors.ResourceExhaustedError(None, None, f"{directory}/variables: No space left on device")

    monkeypatch.setattr(export, "save_saved_model", full)
    out = tmp_path / "s2"
    assert export_cli.main(["--checkpoint", checkpoint, "--out", str(out), "--formats", "saved_model"]) == 2
    one_line(capsys.readouterr().err, f"{out / 'saved_model'}: No space left on device",
             "nothing was written")
    assert os.listdir(tmp_path) == ["ro"]


# ------------------------------------------------------------------------------------------------ remap-serve


def test_serve_index_unreadable(tmp_path, monkeypatch, capsys):
    pytest.importorskip("starlette")
    from remap_jax.cli import serve as serve_cli
    from remap_jax.search.index import Index

    idx = str(tmp_path / "idx")
    Index.build(np.eye(4, 8, dtype=np.float32), ids=[f"{i}.png" for i in range(4)]).save(idx)
    real = np.load

    def refused(path, *a, **k):
        if _under(path, idx):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real(path, *a, **k)

    monkeypatch.setattr(np, "load", refused)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = serve_cli.main(["--index", idx, "--images", str(tmp_path), "--arch", "efficientnet_lite0",
                               "--taps", "blocks.2", "--levels", "1", "--image-size", "32,32"])
    assert code == 2
    one_line(capsys.readouterr().err, "remap-serve: ", idx, "Permission denied", "nothing was written")


def test_serve_demo_workdir_cannot_be_made_or_fills_up(checkpoint, tmp_path, monkeypatch, capsys):
    """`remap-serve --demo`: a --workdir that cannot be made; a disk that fills while the demo collection is
    written keeps the finished files (each written atomically) for the rerun."""
    pytest.importorskip("starlette")
    from remap_jax.cli import serve as serve_cli
    from remap_jax.cli import serve_demo

    (tmp_path / "file").write_text("")
    argv = ["--demo", "--demo-export", checkpoint]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = serve_cli.main([*argv, "--workdir", str(tmp_path / "file" / "w")])
    assert code == 2
    one_line(capsys.readouterr().err, "remap-serve: ", str(tmp_path / "file"), "Not a directory",
             "nothing was written")

    workdir = tmp_path / "w"

    def fills_up(workdir, dataset, data_dir=None):
        finished = os.path.join(workdir, "images", "db_0000.jpg")
        with atomic.atomic_write(finished) as f:
            f.write(b"\xff\xd8")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(workdir, "images", "db_0001.jpg"))

    monkeypatch.setattr(serve_demo, "write_demo_images", fills_up)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = serve_cli.main([*argv, "--workdir", str(workdir)])
    assert code == 2
    one_line(capsys.readouterr().err, "remap-serve: ", str(workdir / "images" / "db_0001.jpg"),
             "No space left on device", f"kept the finished files in {workdir}")
    assert sorted(os.listdir(workdir / "images")) == ["db_0000.jpg"]


# ------------------------------------------------------------------ python -m train.main / eval / init_head

WRAPPER = textwrap.dedent("""
    import errno, os, runpy, sys
    module, fault = sys.argv[1], sys.argv[2]
    sys.argv = [module] + sys.argv[3:]

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    if fault == "train":  # a checkpoint finished, then the disk filled
        import train.loop
        def train_and_evaluate(config, workdir, **kw):
            os.makedirs(os.path.join(workdir, "checkpoints", "7"))
            full(os.path.join(workdir, "checkpoints"))
        train.loop.train_and_evaluate = train_and_evaluate
    elif fault == "init_head":  # one region chunk cached, then the disk filled
        import train.build
        def initialise_head_from_config(config, workdir, *a, **k):
            os.makedirs(os.path.join(workdir, "region_cache"))
            open(os.path.join(workdir, "region_cache", "chunk_00000.npz"), "wb").close()
            full(os.path.join(workdir, "region_cache", "chunk_00001.npz"))
        train.build.initialise_head_from_config = initialise_head_from_config
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")


def _python(tmp_path, module, fault, *args):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    return subprocess.run([sys.executable, str(script), module, fault, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                                       "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_train_main_workdir_cannot_be_made_and_full_disk_keeps_checkpoints(tmp_path):
    (tmp_path / "file").write_text("")
    config = "--config=train/configs/demo.py"
    proc = _python(tmp_path, "train.main", "none", config, f"--workdir={tmp_path / 'file' / 'w'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    one_line(proc.stderr, "python -m train.main: ", str(tmp_path / "file"), "no checkpoint was written")
    workdir = tmp_path / "w"
    proc = _python(tmp_path, "train.main", "train", config, f"--workdir={workdir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    one_line(proc.stderr, f"{workdir / 'checkpoints'}: No space left on device; kept the checkpoints in",
             "latest step 7", "rerun the same command to resume")


def test_train_init_head_full_disk_keeps_the_region_cache(tmp_path):
    workdir = tmp_path / "w"
    proc = _python(tmp_path, "train.init_head", "init_head", "--config=train/configs/demo.py",
                   f"--workdir={workdir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    one_line(proc.stderr, "python -m train.init_head: ", "chunk_00001.npz: No space left on device",
             f"kept 1 cached region-descriptor chunks in {workdir / 'region_cache'}")


def test_train_eval_keeps_its_partial_description(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorflow_datasets")
    import remap_jax.data
    import remap_jax.evaluation.benchmark as benchmark
    from train import eval as train_eval

    out = tmp_path / "eval"

    def run_eval(extractor, test_set, *, out_dir=None, **kw):
        os.makedirs(out_dir)
        np.savez(os.path.join(out_dir, "index.partial.npz"), ids=np.array(["a"]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(out_dir, "index.partial.npz"))

    monkeypatch.setattr(remap_jax.data, "load_test_set", lambda *a, **k: object())
    monkeypatch.setattr(benchmark, "run_eval", run_eval)
    monkeypatch.setattr(train_eval, "make_extractor", lambda args: None)
    with pytest.raises(SystemExit) as info:
        train_eval.main(["--arch", "resnet18", "--dataset", "roxford5k", "--out", str(out)])
    assert info.value.code == 2
    one_line(capsys.readouterr().err, f"python -m train.eval: {out / 'index.partial.npz'}: No space left",
             f"kept {out / 'index.partial.npz'}: rerun the same command to resume")
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(benchmark, "run_eval", lambda *a, out_dir=None, **k: atomic.write_json(
        os.path.join(out_dir, "results.json"), {}))
    with pytest.raises(SystemExit):
        train_eval.main(["--arch", "resnet18", "--dataset", "roxford5k", "--out",
                         str(tmp_path / "file" / "o")])
    one_line(capsys.readouterr().err, str(tmp_path / "file"), "nothing was written")


def test_checkpoints_on_a_full_or_read_only_disk(tmp_path, monkeypatch):
    pytest.importorskip("orbax.checkpoint")
    from train.checkpoints import Checkpoints

    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(monkeypatch, ro)
    with pytest.raises(OSError) as info:
        Checkpoints(str(ro / "checkpoints"), keep=2)
    monkeypatch.undo()
    assert info.value.filename and str(ro / "checkpoints").startswith(str(info.value.filename)[:len(str(ro))])
    ckpt = Checkpoints(str(tmp_path / "checkpoints"), keep=2)
    os.makedirs(tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1")

    def full(*a, **k):  # Orbax's report of a full disk (tensorstore), as it raises it
        raise ValueError("RESOURCE_EXHAUSTED: Error writing ... Failed to write 515239 bytes to file 11: "
                         "No space left on device [os_error_code='28']")

    monkeypatch.setattr(ckpt.manager, "save", full)
    with pytest.raises(OSError) as info:
        ckpt.save(3, None, np.zeros((1, 2)), {})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "checkpoints")
    assert os.listdir(tmp_path / "checkpoints") == []
