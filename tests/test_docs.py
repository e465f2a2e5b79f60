"""The README agrees with the firmware (issue 21, item 7): its list of error kinds is every kind the firmware can
report, and its provisioning-field table is every field the firmware reads. Both are read from the firmware's source
with `ast` (nothing of firmware/ is imported), so a renamed or added kind or field fails here until the README
says so."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware" / "azprov"
README = (REPO / "README.md").read_text()


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "text" assignments."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def firmware_error_kinds() -> set[str]:
    """The public string constants of errors.py (the kinds), plus any kind another firmware module raises with
    ProvisioningError(KIND, ...) from a constant of its own or a literal (e.g. client.py's handler_failed)."""
    errors = _string_constants(ast.parse((FIRMWARE / "errors.py").read_text()))
    kinds = {value for name, value in errors.items() if name.isupper() and not name.startswith("_")}
    for path in sorted(FIRMWARE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        own = _string_constants(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if callee != "ProvisioningError":
                continue
            kind = node.args[0]
            if isinstance(kind, ast.Constant) and isinstance(kind.value, str):
                kinds.add(kind.value)
            elif isinstance(kind, ast.Name) and kind.id in own:
                kinds.add(own[kind.id])
            elif isinstance(kind, ast.Name | ast.Attribute):
                name = kind.id if isinstance(kind, ast.Name) else kind.attr
                assert name in errors or name in own or not name.isupper(), f"{path.name}: kind {name} not found"
    return kinds


def firmware_fields() -> list[str]:
    tree = ast.parse((FIRMWARE / "config.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_FIELDS" for t in node.targets):
            return [key.value for key in node.value.keys]
    raise AssertionError("config.py: no _FIELDS")


def readme_error_kinds() -> set[str]:
    match = re.search(r"Every failure is a classified error with a kind \((.*?)\)", README, re.S)
    assert match, "README: the sentence listing the error kinds is gone"
    return set(re.findall(r"`([a-z_]+)`", match.group(1)))


def readme_fields() -> list[str]:
    section = README.split("\n## The provisioning file", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])]


def test_the_readme_lists_every_error_kind_the_firmware_has():
    kinds = firmware_error_kinds()
    assert {"configuration", "out_of_memory"} <= kinds  # the parser still finds errors.py's constants
    assert readme_error_kinds() == kinds


def test_the_readme_field_table_is_every_field_the_firmware_reads():
    fields = firmware_fields()
    assert "dps_host" in fields and len(fields) > 20  # the parser still finds config.py's _FIELDS
    documented = readme_fields()
    assert len(documented) == len(set(documented)), "a field is in the table twice"
    assert sorted(documented) == sorted(fields)


def test_the_readme_names_the_dps_roots_the_tools_write():
    """The real-Azure section names the roots `provision-file create` writes (host_tools/provisioning/dps_roots.py),
    and says of the optional one (Baltimore, expired) that it is added only when certifi still has it."""
    from host_tools.provisioning.dps_roots import DPS_PUBLIC_ROOTS

    step = README.split("2. `dps_ca_file`: the public roots Azure uses", 1)[1].split("\n3. ", 1)[0]
    step = " ".join(step.split())
    # The README's two phrases, each naming two roots.
    phrases = {
        "DigiCert Global Root G2 and G3": ("DigiCert Global Root G2", "DigiCert Global Root G3"),
        "Microsoft RSA and ECC Root Certificate Authority 2017": (
            "Microsoft RSA Root Certificate Authority 2017",
            "Microsoft ECC Root Certificate Authority 2017",
        ),
    }
    named = {root for phrase, roots in phrases.items() if phrase in step for root in roots}
    assert named == {name for name, required in DPS_PUBLIC_ROOTS if required}
    for name, required in DPS_PUBLIC_ROOTS:
        if not required:
            assert name in step and "only from an older `certifi`" in step, name


def test_the_walk_through_folders_are_ignored_by_git():
    """Folders and files the README's walk-throughs write in the repository (keys and provisioning files among them)
    are in .gitignore, so `git add .` after following them commits no key."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", README, re.S))
    written = set(re.findall(r"--(?:out|out-dir|state-dir|flash) (\S+)", blocks))
    written |= set(re.findall(r"^cat > (\S+)", blocks, re.M))
    written |= {"fleet/sensor-001.json"}  # `fleet` without --out-dir writes to fleet/
    assert {"lab-pki", "factory-ca", "dev1/provisioning.json", "emu", "enrollments.json"} <= written
    for path in sorted(written):
        top = path.split("/")[0]
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", top + "/x" if "/" in path or "." not in top
                               else top], cwd=REPO)  # fmt: skip
        assert proc.returncode == 0, f"{path} (from the README's walk-throughs) is not in .gitignore"
