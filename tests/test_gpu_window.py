"""benchmarks/gpu_window.py: the plan, the offline wheel install and the folder it hands back (at most 8
files). The suite and compare_torch themselves are covered by their own tests; the whole window was
rehearsed on a CPU (README: GPU window)."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_window  # noqa: E402


def fake_wheel(folder, name="fakepkg_r3", version="0.1"):
    """A minimal pure-Python wheel: `import {name}` gives a module with VALUE = 42."""
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record_path = f"{name}-{version}.dist-info/RECORD"
    files[record_path] = "\n".join(record + [f"{record_path},,"]) + "\n"
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
    return path


def test_plan_lists_the_steps_within_the_budget(tmp_path, capsys):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheel(str(wheels))
    gpu_window.main(["--out", str(tmp_path / "out"), "--wheels", str(wheels), "--plan"])
    text = capsys.readouterr().out
    assert [line.split()[0] for line in text.splitlines()] == ["wheels", "env", "compare_torch", "suite"]
    assert "fakepkg_r3-0.1-py3-none-any.whl" in text
    assert not (tmp_path / "out").exists()  # a plan runs nothing
    args = gpu_window.parse_args(["--out", "o", "--wheels", str(wheels)])
    assert sum(step["limit_s"] for step in gpu_window.plan(args)) <= 480 - gpu_window.PACK_MARGIN_S + 30
    cuda = gpu_window.compare_torch_command(args, "cuda", "c.json")
    assert cuda[cuda.index("--dtype") + 1] == "bfloat16" and cuda[cuda.index("--device") + 1] == "cuda"
    assert cuda[cuda.index("--torch-python") + 1] == sys.executable  # the image's own torch
    assert "--quick" not in gpu_window.suite_command(args, "s", 300)  # the full preset
    quick = gpu_window.parse_args(["--out", "o", "--quick"])
    assert "--quick" in gpu_window.suite_command(quick, "s", 300)


def test_wheels_install_offline_and_come_first_on_the_path(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheel(str(wheels))
    args = gpu_window.parse_args(["--out", str(tmp_path / "out"), "--wheels", str(wheels)])
    work = tmp_path / "work"
    work.mkdir()
    window = gpu_window.Window(args, str(work))
    site = str(tmp_path / "site")
    gpu_window.install_wheels(window, site)
    assert window.steps[0]["step"] == "wheels" and window.steps[0]["status"] == "ok", window.steps
    assert window.env["PYTHONPATH"].split(os.pathsep)[:2] == [site, ROOT]
    done = subprocess.run([sys.executable, "-c", "import fakepkg_r3, remap_jax; print(fakepkg_r3.VALUE)"],
                          env=window.env, cwd=str(tmp_path), capture_output=True, text=True)
    assert done.stdout.strip() == "42", done.stderr


def test_outputs_fit_what_a_device_machine_returns(tmp_path):
    """Every table in gpu_window.md, the raw files archived: at most 8 files, none in a subfolder."""
    args = gpu_window.parse_args(["--out", str(tmp_path / "out"), "--wheels", str(tmp_path / "none")])
    work = tmp_path / "work"
    (work / "suite" / "blocks").mkdir(parents=True)
    (work / "suite" / "suite.json").write_text(json.dumps({"blocks": {}}))
    (work / "suite" / "suite.md").write_text("| block | row |\n|---|---|\n| extract | 1 |\n")
    for name in ("roi_pool", "exact_search", "ranking", "extract", "train_step"):
        (work / "suite" / "blocks" / f"{name}.jsonl").write_text("{}\n")
        (work / "suite" / "blocks" / f"{name}.log").write_text("log\n")
    (work / "compare_torch.json").write_text("{}")
    (work / "compare_torch.md").write_text(gpu_window.compare_table(
        "resnet50 1024x768 (WxH), bfloat16, cuda\n\n| batch | remap-jax s/img |\n|---:|---:|\n| 1 | 0.002 |"))
    window = gpu_window.Window(args, str(work))
    window.steps = [{"step": "suite", "status": "ok", "seconds": 300.0, "limit_s": 330.0}]
    env = {"backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3", "python": "3.12.3",
           "versions": {"jax": "0.11.2"}}
    report = gpu_window.write_outputs(args, window, env, str(work))
    row = {"batch": 8, "jax_s_per_img": 0.001, "torch_s_per_img": 0.002, "ratio": 2.0, "rel_error": 1e-3}
    stopped = gpu_window.compare_table("", "noise\n" + json.dumps(row) + "\n")  # killed before its table
    assert "| 8 | 0.0010 | 0.0020 | 2.00x | 1.0e-03 |" in stopped
    files = sorted(os.listdir(tmp_path / "out"))
    assert files == ["compare_torch.json", "gpu_window.json", "gpu_window.log", "gpu_window.md",
                     "suite.json", "suite_blocks.tar.gz"]
    text = (tmp_path / "out" / "gpu_window.md").read_text()
    assert "NVIDIA H100" in text and "| extract | 1 |" in text and "| 1 | 0.002 |" in text
    assert json.loads((tmp_path / "out" / "gpu_window.json").read_text())["steps"] == report["steps"]
