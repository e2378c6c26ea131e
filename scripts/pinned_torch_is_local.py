#!/usr/bin/env python3
"""Exit 0 when the torch wheel pinned in a requirements file (torch==VERSION) lies in a
find-links directory of pip's configuration or $PIP_FIND_LINKS, else 1.

setup_env.sh and wheelhouse.sh then leave the file's --extra-index-url out, so that the index is
never contacted when the wheel is already at hand (pip would otherwise ask it for every package).

usage: python scripts/pinned_torch_is_local.py REQUIREMENTS
"""
import glob
import os
import re
import subprocess
import sys


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        pins = re.findall(r"^torch==(\S+)", f.read(), flags=re.M)
    if not pins:
        return 1
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            dirs += value.strip("'\"").split()
    return 0 if any(glob.glob(os.path.join(d, f"torch-{pins[0]}-*.whl")) for d in dirs if os.path.isdir(d)) else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    sys.exit(main(sys.argv[1]))
