"""Makes sure the browser test can run: Debian's `chromium` and `chromium-driver` (matching versions).

Run by `.ci/run` (and the README's test command) before pytest. When both are on PATH it does nothing.
Otherwise, as root with apt-get, it installs them (`apt-get update` first if the install fails). When it
cannot, it exits 1 under CI=true (the browser test would fail there anyway) and only warns elsewhere (the
browser test then skips, saying why).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PACKAGES = ("chromium", "chromium-driver")


def present() -> bool:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    return bool(browser and shutil.which("chromedriver"))


def install() -> bool:
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL)
    return present()


def main() -> int:
    if present() or install():
        return 0
    message = (f"ensure_browser: {' and '.join(PACKAGES)} are not installed and could not be installed "
               "(needs root and apt-get); the browser test needs them")
    print(message, file=sys.stderr)
    return 1 if os.environ.get("CI", "").lower() == "true" else 0


if __name__ == "__main__":
    sys.exit(main())
