"""Several JAX processes on this machine (gloo CPU collectives on 127.0.0.1): training on 2 processes x 2
devices equals 1 process x 4 devices, a killed 2-process run resumes to the same parameters, and 2-process
extraction gives the same descriptors and ids as 1 process. Each process reads only its own rows and
images."""

import json
import os

import numpy as np
import pytest
from multiprocess import describe, run_processes
from PIL import Image

WORKER = os.path.join(os.path.dirname(__file__), "train_worker.py")


def _final_params(workdir):
    """(step, params, tuples) of the latest checkpoint, as numpy (whatever device topology wrote it)."""
    import jax
    import orbax.checkpoint as ocp

    steps = [int(name) for name in os.listdir(os.path.join(str(workdir), "checkpoints")) if name.isdigit()]
    path = os.path.join(str(workdir), "checkpoints", str(max(steps)), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, "item_metadata", metadata)
    as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                      getattr(metadata, "tree", metadata))
    tree = checkpointer.restore(path, restore_args=as_numpy)
    return max(steps), tree["state"]["params"], tree["tuples"]


def _train(workdir, processes, *extra):
    results = run_processes([WORKER, "--workdir", str(workdir), *extra], num_processes=processes,
                            devices_per_process=4 // processes)
    return results


@pytest.fixture(scope="module")
def one_and_two_process_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    one = _train(root / "one", 1, "--with-test-set")
    two = _train(root / "two", 2, "--with-test-set")
    return root, one, two


def test_two_processes_train_like_one_process_with_the_same_devices(one_and_two_process_runs):
    root, one, two = one_and_two_process_runs
    assert all(r.returncode == 0 for r in one + two), describe(one + two)
    reports = [json.loads(r.stdout.strip().splitlines()[-1]) for r in one + two]
    assert [(r["processes"], r["devices"]) for r in reports] == [(1, 4), (2, 4), (2, 4)]
    assert {r["step"] for r in reports} == {8}
    step_a, params_a, tuples_a = _final_params(root / "one")
    step_b, params_b, tuples_b = _final_params(root / "two")
    assert step_a == step_b == 8
    np.testing.assert_array_equal(tuples_a, tuples_b)  # the same mined tuples on every process
    import jax

    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_a,
                           params_b)
    # the test evaluation (each process describes half the images) gives the same table; process 0 wrote it
    after_one = json.loads((root / "one" / "eval_after.json").read_text())
    after_two = json.loads((root / "two" / "eval_after.json").read_text())
    assert after_two["medium"]["mAP"] == pytest.approx(after_one["medium"]["mAP"], abs=1e-6)
    assert reports[1]["medium"] == pytest.approx(reports[2]["medium"])  # both processes scored it


def test_a_killed_two_process_run_resumes_to_the_same_parameters(one_and_two_process_runs, tmp_path):
    root, _, two = one_and_two_process_runs
    assert all(r.returncode == 0 for r in two), describe(two)
    killed = _train(tmp_path, 2, "--crash-at", "5")
    assert [r.returncode for r in killed] == [17, 17], describe(killed)
    resumed = _train(tmp_path, 2)
    assert all(r.returncode == 0 for r in resumed), describe(resumed)
    assert "resumed from" in resumed[0].stdout
    step_a, params_a, tuples_a = _final_params(root / "two")
    step_b, params_b, tuples_b = _final_params(tmp_path)
    assert step_a == step_b == 8
    np.testing.assert_array_equal(tuples_a, tuples_b)
    import jax

    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), params_a,
                           params_b)


def test_two_process_extraction_equals_one_process(tmp_path):
    from test_extract import _rng_images

    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(_rng_images([(64, 96)] * 4 + [(96, 64)] * 3, seed=5)):
        Image.fromarray(img).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    command = ["-m", "remap_jax.cli.extract", "--arch", "resnet18", "--levels", "1", "--image-size", "64,96",
               "--batch-size", "2", "--images", str(folder), "--quiet"]
    one = run_processes([*command, "--out", str(tmp_path / "one.npz")], 1, devices_per_process=2)
    two = run_processes([*command, "--out", str(tmp_path / "two.npz")], 2, devices_per_process=1)
    assert all(r.returncode == 0 for r in one + two), describe(one + two)
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
        assert list(a["ids"]) == list(b["ids"]) == [f"{i}.png" for i in range(7)]
        assert list(a["failed"]) == list(b["failed"]) == ["broken.png"]
        np.testing.assert_allclose(a["descriptors"], b["descriptors"], rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["images", "one.npz", "two.npz"]  # no partial files left
