# Flash storage: commit, reload, no write when nothing changed, roll forward after an interrupted commit,
# corruption detected, and nothing half-written.
import os

from fixtures import CERT_A, CERT_B, CERT_C

from azprov import bundle, errors, store
from azprov.errors import ProvisioningError

_DIR = "azprov_test_store"


def _clean():
    s = store.Store(_DIR)
    s.clear()
    try:
        os.rmdir(_DIR)
    except OSError:
        pass
    return store.Store(_DIR)


def _assignment(hub="hub.azure-devices.net"):
    return {
        "registration_id": "dev1",
        "assigned_hub": hub,
        "device_id": "dev1",
        "substatus": "initialAssignment",
        "payload": None,
    }


def _parsed(etag, *pems):
    return bundle.parse({"id": "tb", "etag": etag, "certificates": [{"certificate": p} for p in pems]})


def _read(path):
    with open(path) as f:
        return f.read()


def test_fresh_device_has_no_state():
    assert _clean().load() is None


def test_commit_and_reload():
    s = _clean()
    assert s.save(_assignment(), _parsed("e1", CERT_A, CERT_B))
    state = store.Store(_DIR).load()
    assert state["assignment"]["assigned_hub"] == "hub.azure-devices.net"
    assert state["trust_bundle"]["etag"] == "e1"
    assert len(state["trust_bundle"]["certificates"]) == 2
    assert _read(_DIR + "/trust_bundle.pem") == CERT_A + CERT_B
    _clean()


def test_unchanged_state_writes_nothing():
    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A))
    again = store.Store(_DIR)
    assert again.save(_assignment(), _parsed("e1", CERT_A)) is False
    assert again.writes == 0
    _clean()


def test_changed_etag_replaces_set():
    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A, CERT_B))
    assert s.save(_assignment(), _parsed("e2", CERT_C))
    assert _read(_DIR + "/trust_bundle.pem") == CERT_C
    assert [c["sha256"] for c in s.load()["trust_bundle"]["certificates"]] == [
        c["sha256"] for c in _parsed("x", CERT_C)["certificates"]
    ]
    _clean()


def test_null_bundle_removes_stored_bundle():
    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A))
    s.save(_assignment(), None)
    assert s.load()["trust_bundle"] is None
    try:
        os.stat(_DIR + "/trust_bundle.pem")
    except OSError:
        pass
    else:
        raise AssertionError("bundle file left behind")
    _clean()


def test_interrupted_commit_rolls_forward():
    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A))
    new = _parsed("e2", CERT_B)
    # Simulate a power cut after the commit point: state.json is new, the PEM is still only staged.
    with open(_DIR + "/trust_bundle.pem.new", "w") as f:
        f.write(new["pem"])
    meta = {k: new[k] for k in ("id", "etag", "pem_sha256", "certificates")}
    import json

    # Written with plain file calls, not the store's own helpers: the set-up must not depend on the code under test.
    with open(_DIR + "/state.json", "w") as f:
        f.write(json.dumps({"version": 1, "assignment": _assignment(), "trust_bundle": meta}))
    state = store.Store(_DIR).load()
    assert state["trust_bundle"]["etag"] == "e2"
    assert _read(_DIR + "/trust_bundle.pem") == CERT_B
    _clean()


def test_cut_before_commit_keeps_old_state():
    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A))
    with open(_DIR + "/trust_bundle.pem.new", "w") as f:
        f.write(CERT_B[:100])  # partial staged file from a cut mid-write
    state = store.Store(_DIR).load()
    assert state["trust_bundle"]["etag"] == "e1"
    assert _read(_DIR + "/trust_bundle.pem") == CERT_A
    _clean()


def test_corruption_detected():
    for damage in ("pem", "state", "state_type"):
        s = _clean()
        s.save(_assignment(), _parsed("e1", CERT_A))
        if damage == "pem":
            with open(_DIR + "/trust_bundle.pem", "w") as f:
                f.write(CERT_A[:-30])
        elif damage == "state":
            with open(_DIR + "/state.json", "w") as f:
                f.write('{"version": 1, "assignm')
        else:
            with open(_DIR + "/state.json", "w") as f:
                f.write('{"version": 1, "assignment": {"assigned_hub": 3}, "trust_bundle": null}')
        try:
            store.Store(_DIR).load()
        except ProvisioningError as exc:
            assert exc.kind == errors.STORAGE
        else:
            raise AssertionError("corruption not detected: " + damage)
    _clean()


def test_stale_staged_file_is_not_renamed_into_place():
    s = _clean()
    new = _parsed("e2", CERT_B)
    store.makedirs(_DIR)
    with open(_DIR + "/trust_bundle.pem", "w") as f:
        f.write(CERT_B)  # already the new bundle's PEM
    with open(_DIR + "/trust_bundle.pem.new", "w") as f:
        f.write(CERT_C)  # left over from an older interrupted commit
    with open(_DIR + "/state.json", "w") as f:
        f.write("")
    assert s.save(_assignment(), new)
    assert store.Store(_DIR).load()["trust_bundle"]["etag"] == "e2"
    assert _read(_DIR + "/trust_bundle.pem") == CERT_B
    _clean()


def test_state_json_is_replaced_only_by_rename():
    # On FAT (and any file system without copy-on-write files) opening state.json for writing truncates it at once:
    # a power cut before the new text is written would leave no state at all. It must only ever be replaced by
    # renaming a complete temporary file onto it.
    opened = []

    def recording_open(path, mode="r", *args):
        if "w" in mode or "a" in mode or "+" in mode:
            opened.append(path)
        return open(path, mode, *args)

    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A))
    store.open = recording_open
    try:
        assert s.save(_assignment(), _parsed("e2", CERT_B))
        assert s.save(_assignment("other-hub.azure-devices.net"), None)
    finally:
        del store.open
    assert opened, "save() wrote no file"
    assert _DIR + "/state.json" not in opened, opened
    assert _DIR + "/state.json.tmp" in opened, opened
    assert store.Store(_DIR).load()["assignment"]["assigned_hub"] == "other-hub.azure-devices.net"
    _clean()


def test_rename_cut_between_remove_and_rename_is_finished():
    # FAT renames onto an existing file by removing it first: a cut in between leaves only state.json.tmp.
    import json

    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A))
    new = {"version": 1, "assignment": _assignment("other-hub.azure-devices.net"), "trust_bundle": None}
    with open(_DIR + "/state.json.tmp", "w") as f:
        f.write(json.dumps(new))
    os.remove(_DIR + "/state.json")
    state = store.Store(_DIR).load()
    assert state is not None and state["assignment"]["assigned_hub"] == "other-hub.azure-devices.net"
    assert _read(_DIR + "/state.json") == json.dumps(new)
    try:
        os.stat(_DIR + "/state.json.tmp")
        raise AssertionError("the temporary file is still there")
    except OSError:
        pass
    # A temporary file cut short is not a commit: the device starts fresh.
    with open(_DIR + "/state.json.tmp", "w") as f:
        f.write(json.dumps(new)[:40])
    os.remove(_DIR + "/state.json")
    assert store.Store(_DIR).load() is None
    _clean()


def test_rename_left_unfinished_when_its_bundle_is_damaged():
    # A complete state.json.tmp whose trust bundle no longer matches is refused, and refusing changes nothing:
    # the temporary file stays where it was (a later registration replaces it).
    import json

    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A))
    committed = _read(_DIR + "/state.json")
    os.rename(_DIR + "/state.json", _DIR + "/state.json.tmp")
    with open(_DIR + "/trust_bundle.pem", "w") as f:
        f.write("damaged")
    try:
        store.Store(_DIR).load()
        raise AssertionError("a damaged bundle was accepted")
    except ProvisioningError as exc:
        assert exc.kind == errors.STORAGE
    assert _read(_DIR + "/state.json.tmp") == committed
    try:
        os.stat(_DIR + "/state.json")
        raise AssertionError("state.json was renamed into place although the load was refused")
    except OSError:
        pass
    assert json.loads(committed)["trust_bundle"] is not None
    _clean()


class _Cut(Exception):
    pass


class _CuttingFile:
    """A file whose write at the cut point writes half its data, then the power goes."""

    def __init__(self, f, cutter):
        self._f = f
        self._cutter = cutter

    def write(self, data):
        if self._cutter.due():
            self._f.write(data[: len(data) // 2])
            self._f.close()
            raise _Cut()
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class _Cutter:
    """Counts the store's writes, renames and removes, and cuts the power at operation `at`."""

    def __init__(self, at):
        self.at = at
        self.count = 0
        self.cut = False

    def due(self):
        self.count += 1
        if self.count == self.at:
            self.cut = True
            return True
        return False

    def install(self):
        real_open, real_os = open, store.os
        cutter = self

        def cut_open(path, mode="r", *args):
            f = real_open(path, mode, *args)
            return _CuttingFile(f, cutter) if "w" in mode else f

        class CutOs:
            def __getattr__(self, name):
                return getattr(real_os, name)

            def rename(self, a, b):
                if cutter.due():
                    raise _Cut()
                real_os.rename(a, b)

            def remove(self, path):
                if cutter.due():
                    raise _Cut()
                real_os.remove(path)

        store.open = cut_open
        store.os = CutOs()
        return real_os

    def uninstall(self, real_os):
        del store.open
        store.os = real_os


def _identity(name):
    return {"key": name + "-key", "chain": [name + "-leaf", name + "-ca"], "not_before": 1, "not_after": 2}


def test_a_power_cut_anywhere_in_a_new_identity_keeps_the_old_one_or_the_new_one_whole():
    # The identity DPS issued lives inside state.json: a cut at any write, rename or remove of the save leaves
    # the old assignment with the old identity or the new ones together, never a mix (and never a torn key).
    old = (_assignment("old-hub.azure-devices.net"), _identity("old"))
    new = (_assignment("new-hub.azure-devices.net"), _identity("new"))
    seen = set()
    at = 1
    while True:
        s = _clean()
        s.save(old[0], _parsed("e1", CERT_A), old[1])
        cutter = _Cutter(at)
        real_os = cutter.install()
        try:
            store.Store(_DIR).save(new[0], _parsed("e2", CERT_B), new[1])
        except _Cut:
            pass
        finally:
            cutter.uninstall(real_os)
        state = store.Store(_DIR).load()
        pair = (state["assignment"], state["identity"])
        assert pair in (old, new), (at, pair)
        seen.add("old" if pair == old else "new")
        if not cutter.cut:
            break
        at += 1
    assert seen == {"old", "new"} and at > 2, (seen, at)
    _clean()


# --- a streamed bundle: written only from its first byte that differs from the stored one (store.Incoming) --------


def _stream(s, pem, piece):
    """Writes `pem` into a new Incoming sink of `s`, `piece` bytes at a time; returns (sha256 hex, file it is in)."""
    sink = s.incoming()
    sink.start()
    data = pem.encode()
    for start in range(0, len(data), piece):
        sink.write(memoryview(data)[start : start + piece])
    return sink.finish(), sink.path


def _sha256(text):
    import binascii
    import hashlib

    return binascii.hexlify(hashlib.sha256(text.encode()).digest()).decode()


def test_a_streamed_bundle_is_written_only_from_its_first_difference():
    incoming = _DIR + "/trust_bundle.pem.in"
    stored = CERT_A + CERT_B
    for piece in (1, 65, 200):
        # No stored bundle: all of it is written. The same bundle again: nothing is.
        s = _clean()
        assert _stream(s, stored, piece) == (_sha256(stored), incoming) and _read(incoming) == stored
        assert s.writes == 1
        s.save(_assignment(), _parsed("e1", CERT_A, CERT_B))
        s = store.Store(_DIR)
        assert _stream(s, stored, piece) == (_sha256(stored), _DIR + "/trust_bundle.pem"), piece
        assert s.writes == 0 and not _exists(incoming), piece
        # A change in the second certificate, one that drops it (a shorter bundle starting like the stored one),
        # one that adds a certificate: the whole new bundle is in the .in file, the stored one untouched.
        for new in (CERT_A + CERT_C, CERT_A, CERT_A + CERT_B + CERT_C, CERT_B):
            s = store.Store(_DIR)
            assert _stream(s, new, piece) == (_sha256(new), incoming), (piece, new)
            assert _read(incoming) == new and s.writes == 1, (piece, new)
            assert _read(_DIR + "/trust_bundle.pem") == stored
            s.discard_incoming()
    _clean()


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def test_a_lax_utf8_form_is_refused_wherever_the_file_read_cuts_it():
    # load() checks state.json a 512-byte piece at a time before parsing it: an encoded surrogate (ED A0 80, which
    # MicroPython's own decoder lets through) must be refused inside a piece and across two (511: its lead byte
    # ends the first piece).
    import json

    assignment = _assignment()
    assignment["payload"] = {"pad": "x" * 1200}
    good = json.dumps({"version": 1, "assignment": assignment, "trust_bundle": None}).encode()
    at = good.index(b"x")
    for cut in (at + 5, 510, 511, 512, 1023):
        bad = good[:cut] + b"\xed\xa0\x80" + good[cut + 3 :]
        assert len(bad) == len(good) and good[cut : cut + 3] == b"xxx", cut
        for data, refused in ((good, False), (bad, True)):
            s = _clean()
            os.mkdir(_DIR)
            with open(_DIR + "/state.json", "wb") as f:
                f.write(data)
            try:
                state = s.load()
            except ProvisioningError as exc:
                assert refused and exc.kind == errors.STORAGE and "not valid JSON" in str(exc), (cut, exc)
            else:
                assert not refused and state["assignment"]["payload"]["pad"] == "x" * 1200, (cut, state)
    _clean()


def test_a_leftover_identical_to_the_pem_is_removed_only_after_the_pem_is_copied():
    # On FAT a torn directory write can leave trust_bundle.pem.in (or .new) on the PEM's own clusters: removing it
    # first would free them (tests/test_power_cut.py, FAT). Here the file systems keep them apart, so what shows is
    # the order: the PEM copied to trust_bundle.pem.cp (a write), the leftovers removed, the copy renamed over it.
    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A, CERT_B))
    pem = _read(_DIR + "/trust_bundle.pem")
    for leftover in (".in", ".new"):
        with open(_DIR + "/trust_bundle.pem" + leftover, "w") as f:
            f.write(pem)
        fresh = store.Store(_DIR)
        assert fresh.load()["trust_bundle"]["etag"] == "e1"
        assert fresh.writes == 1, leftover
        assert sorted(os.listdir(_DIR)) == ["state.json", "trust_bundle.pem"], os.listdir(_DIR)
        assert _read(_DIR + "/trust_bundle.pem") == pem
    # A copy a power cut left complete finishes the job at the next boot, without copying again.
    with open(_DIR + "/trust_bundle.pem.cp", "w") as f:
        f.write(pem)
    os.remove(_DIR + "/trust_bundle.pem")
    fresh = store.Store(_DIR)
    assert fresh.load() is not None and fresh.writes == 0
    assert sorted(os.listdir(_DIR)) == ["state.json", "trust_bundle.pem"] and _read(_DIR + "/trust_bundle.pem") == pem
    _clean()


class _WritesFail:
    """A file whose writes run out of heap: a MemoryError half-way through a commit."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        raise MemoryError()


def test_a_commit_that_runs_out_of_heap_while_writing_leaves_the_stored_files_as_they_were():
    # state.json is written a piece at a time: a MemoryError can come after the PEM was staged and state.json.tmp
    # opened. Neither may be left: the stored state, byte for byte, is all there is.
    s = _clean()
    s.save(_assignment(), _parsed("e1", CERT_A))
    before = {name: _read(_DIR + "/" + name) for name in os.listdir(_DIR)}

    def failing_open(path, mode="r", *args):
        f = open(path, mode, *args)
        return _WritesFail(f) if path.endswith(".tmp") else f

    store.open = failing_open
    try:
        s.save(_assignment("other-hub.azure-devices.net"), _parsed("e2", CERT_B))
        raise AssertionError("save() went through a failing write")
    except MemoryError:
        pass
    finally:
        del store.open
    assert {name: _read(_DIR + "/" + name) for name in os.listdir(_DIR)} == before
    assert store.Store(_DIR).load()["trust_bundle"]["etag"] == "e1"
    _clean()
