"""The Python that `make install` / `make test` use (stdlib only: it runs before anything is installed).

    python3 scripts/pick_python.py VENV            # print its path
    python3 scripts/pick_python.py VENV --create   # create VENV first when it is the one (make install)

In order: the Python running this script when it is a virtual environment's (an active one:
`python3` on the PATH is then its own); else VENV when it exists (`make install` made it, so
`make test` uses it too); else VENV, to be created, when this Python is externally managed (PEP 668:
Debian's and Ubuntu's system Python, where `pip install` is refused); else this Python itself (pyenv,
conda, a self-built Python: CI's case). ``--stdlib DIR`` looks for the EXTERNALLY-MANAGED marker
in DIR instead of this Python's standard library (for tests).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Optional

MARKER = "EXTERNALLY-MANAGED"  # PEP 668: in the directory of sysconfig's "stdlib" path


def in_virtualenv() -> bool:
    return sys.prefix != sys.base_prefix


def externally_managed(stdlib: Optional[str] = None) -> bool:
    """Whether pip refuses to install into this Python (PEP 668 marker; never inside a venv)."""
    if in_virtualenv():
        return False
    folder = Path(stdlib) if stdlib else Path(sysconfig.get_path("stdlib"))
    return (folder / MARKER).is_file()


def venv_python(venv: str) -> Path:
    return Path(os.path.abspath(venv)) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pick(venv: str, stdlib: Optional[str] = None) -> Path:
    """The interpreter to install into and test with (see the module docstring)."""
    if in_virtualenv():
        return Path(sys.executable)
    py = venv_python(venv)
    if py.exists() or externally_managed(stdlib):
        return py
    return Path(sys.executable)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("venv")
    p.add_argument("--create", action="store_true", help="create the venv when it is picked and missing")
    p.add_argument("--stdlib", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    py = pick(args.venv, args.stdlib)
    if args.create and py == venv_python(args.venv) and not py.exists():
        print(f"{sys.executable} is externally managed (PEP 668): creating the virtual environment "
              f"{args.venv} and installing there", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "venv", args.venv])
        if proc.returncode != 0 or not py.exists():
            shutil.rmtree(args.venv, ignore_errors=True)  # half made (no ensurepip): not picked next time
            print(f"cannot create {args.venv}: install the venv module (Debian/Ubuntu: "
                  f"sudo apt install python3-venv), or activate a virtual environment and run make install again",
                  file=sys.stderr)
            return 1
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
