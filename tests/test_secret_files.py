"""Issue 21, item 1: every file the host tools write that holds a secret is mode 0600, in a folder others cannot
write to. host_tools/secret_files.py is the one writer; the tools that use it are tested where they live
(tests/board/test_run_unix.py, tests/emulator/test_emu_cli.py, tests/test_demo.py)."""

from __future__ import annotations

import os
import stat

import pytest

from host_tools.secret_files import SecretFileError, copy_secret, open_secret_log, secure_folder, write_secret


@pytest.fixture(autouse=True)
def permissive_umask():
    """The secret's mode must not depend on the user's umask: run with the most permissive one."""
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_secret_is_0600_whatever_the_umask_and_replaces_a_readable_file(tmp_path):
    path = tmp_path / "dev" / "provisioning.json"
    path.parent.mkdir(mode=0o755)
    path.write_text("old")
    os.chmod(path, 0o644)
    write_secret(path, '{"symmetric_key": "x"}')
    assert mode(path) == 0o600 and path.read_text() == '{"symmetric_key": "x"}'
    assert sorted(p.name for p in path.parent.iterdir()) == ["provisioning.json"], "no temporary file left"


def test_folders_made_for_a_secret_are_the_owners_only(tmp_path):
    path = write_secret(tmp_path / "a" / "b" / "key.pem", b"k")
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700 and mode(path) == 0o600


def test_a_copy_is_0600_whatever_the_sources_mode(tmp_path):
    source = tmp_path / "key.pem"
    source.write_bytes(b"key")
    os.chmod(source, 0o644)
    assert mode(copy_secret(source, tmp_path / "flash" / "key.pem")) == 0o600


def test_a_world_writable_folder_is_refused_and_left_as_it_is(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    with pytest.raises(SecretFileError) as caught:
        write_secret(shared / "provisioning.json", "secret")
    assert caught.value.filename == str(shared) and "writable by every user" in caught.value.strerror
    assert not (shared / "provisioning.json").exists() and mode(shared) == 0o777
    with pytest.raises(SecretFileError):
        secure_folder(shared)


def test_a_secret_log_is_0600_even_if_an_earlier_run_left_it_readable(tmp_path):
    path = tmp_path / "credentials-received.jsonl"
    path.write_text('{"password": "SharedAccessSignature sig=old"}\n')
    os.chmod(path, 0o644)
    with open_secret_log(path) as handle:
        handle.write('{"password": "SharedAccessSignature sig=new"}\n')
    assert mode(path) == 0o600 and path.read_text().count("sig=") == 2
