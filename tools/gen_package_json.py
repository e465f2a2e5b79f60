"""Write package.json, the mip package description of the firmware, from the files in firmware/.

    python tools/gen_package_json.py          # rewrite package.json
    python tools/gen_package_json.py --check  # exit 1 if package.json is out of date (tests run this check)

Installing with mip (URLs are relative to package.json, which mip supports):
    mpremote mip install --target / github:OWNER/azprov      # /main.py and /azprov/*.py
    mpremote mip install github:OWNER/azprov                 # into /lib (main.py then lives in /lib: not run at boot)
umqtt.simple comes along as a dependency from the MicroPython package index.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = REPO_ROOT / "firmware"
PACKAGE_JSON = REPO_ROOT / "package.json"
DEPS = [["umqtt.simple", "latest"]]


def firmware_version() -> str:
    text = (FIRMWARE / "azprov" / "__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise SystemExit('firmware/azprov/__init__.py: no __version__ = "..." line')
    return match.group(1)


def package_description() -> dict:
    sources = sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
    urls = [[p.relative_to(FIRMWARE).as_posix(), p.relative_to(REPO_ROOT).as_posix()] for p in sources]
    return {"urls": urls, "deps": DEPS, "version": firmware_version()}


def render() -> str:
    return json.dumps(package_description(), indent=2) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that package.json is up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PACKAGE_JSON.read_text() if PACKAGE_JSON.exists() else ""
        if current != text:
            print(f"{PACKAGE_JSON} is out of date: run python tools/gen_package_json.py", file=sys.stderr)
            return 1
        print(f"{PACKAGE_JSON} is up to date")
        return 0
    PACKAGE_JSON.write_text(text)
    print(f"wrote {PACKAGE_JSON} ({len(package_description()['urls'])} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
