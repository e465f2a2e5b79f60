# What the device keeps in flash: the trust bundle as one PEM file and state.json, the single commit record
# (assignment + bundle metadata). A crash at any point leaves either the complete old state or the complete new
# one: the PEM is written beside the old one, state.json is replaced atomically (temp file + rename, atomic on
# littlefs), and only then is the new PEM moved into place. At load time a state.json whose pem_sha256 matches the
# staged PEM finishes that last step, and a complete state.json.tmp without a state.json (FAT renames onto an
# existing file by removing it first) finishes the rename.
import binascii
import hashlib
import json
import os

from micropython import const

from azprov import errors
from azprov.encoding import check_utf8
from azprov.errors import ProvisioningError

STATE = "state.json"
PEM = "trust_bundle.pem"
_STAGED = ".new"
_INCOMING = ".in"  # certificates streamed from a DPS response, before save() stages them
_TMP = ".tmp"
_SPARE = ".cp"  # a copy of trust_bundle.pem on clusters of its own (Store._rehome, FAT)
_CHUNK = const(512)
_PIECE = const(128)  # bytes of the stored PEM compared or copied at a time: a PEM line is 65
_MAX_STATE_BYTES = const(16384)
FORMAT_VERSION = const(1)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def makedirs(path):
    built = ""
    for part in path.split("/"):
        built = built + "/" + part if built or path.startswith("/") else part
        if part and not _exists(built):
            os.mkdir(built)


def read_bounded(path, limit):
    """The whole file as bytes, or None when it is larger than `limit` (checked before reading, so a huge file
    never costs its size in heap, and a small one costs only its own size, not the limit)."""
    if os.stat(path)[6] > limit:
        return None
    with open(path, "rb") as f:
        return f.read()


def write_atomic(path, pieces):
    """Writes the byte strings `pieces`, one after the other, to `path` through a temporary file renamed into
    place. They reach the file _CHUNK bytes (a FAT sector) at a time, gathered in one small buffer: the text is
    never in heap whole."""
    tmp = path + _TMP
    try:
        buf = bytearray(_CHUNK)
        held = 0
        with open(tmp, "wb") as f:
            for piece in pieces:
                done = 0
                while done < len(piece):
                    size = min(_CHUNK - held, len(piece) - done)
                    buf[held : held + size] = piece[done : done + size]
                    held += size
                    done += size
                    if held == _CHUNK:
                        f.write(buf)
                        held = 0
            f.write(memoryview(buf)[:held])
    except BaseException:  # a full heap or a full flash half-way: no partial file is left behind
        _remove(tmp)
        raise
    os.rename(tmp, path)


def _read_json(path):
    """The JSON value in `path`, parsed as the file is read (a 10-root or issued-identity state.json is 3.5-4.5 KB,
    never in heap as one block). Checked a piece at a time first for forms only a lax UTF-8 decoder accepts. Raises
    the STORAGE error for a file over _MAX_STATE_BYTES, else OSError, ValueError or UnicodeError."""
    if os.stat(path)[6] > _MAX_STATE_BYTES:
        raise _corrupt("state.json is too large")
    # window[0] is the last byte of the previous piece (0 before the first: no lead byte), checked with the byte after
    window = bytearray(_CHUNK + 1)
    with open(path, "rb") as f:
        view = memoryview(window)[1:]
        while True:
            size = f.readinto(view)
            check_utf8(window, size + 1, size == _CHUNK)
            if size < _CHUNK:
                break
            window[0] = window[_CHUNK]
        f.seek(0)
        return json.load(f)


def file_sha256(path):
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                digest.update(view[:n])
    except OSError:
        return None
    return binascii.hexlify(digest.digest()).decode()


def _corrupt(message):
    return ProvisioningError(errors.STORAGE, "stored state: " + message)


def _check_state(state):
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION:
        raise _corrupt("state.json has an unknown format")
    assignment = state.get("assignment")
    if not isinstance(assignment, dict):
        raise _corrupt("state.json has no assignment")
    for name in ("assigned_hub", "device_id"):
        if not isinstance(assignment.get(name), str) or not assignment[name]:
            raise _corrupt("assignment." + name + " is missing")
    if "trust_bundle" not in state:
        raise _corrupt("state.json has no trust_bundle entry")
    bundle = state["trust_bundle"]
    if bundle is not None:
        if (
            not isinstance(bundle, dict)
            or not isinstance(bundle.get("pem_sha256"), str)
            or not isinstance(bundle.get("etag"), str)
            or not isinstance(bundle.get("certificates"), list)
        ):
            raise _corrupt("trust_bundle metadata is incomplete")
    identity = state.get("identity")
    if identity is not None:
        if (
            not isinstance(identity, dict)
            or not isinstance(identity.get("key"), str)
            or not isinstance(identity.get("chain"), list)
            or not identity["chain"]
            or not isinstance(identity.get("not_before"), int)
            or not isinstance(identity.get("not_after"), int)
        ):
            raise _corrupt("the issued identity is incomplete")


def _dump(value, pieces, depth):
    # The containers of state.json's first levels piece by piece; below them each value is one json.dumps, read
    # back the way load() will (not compared: float text need not round-trip bit for bit).
    if depth and isinstance(value, (dict, list)):
        is_dict = isinstance(value, dict)
        pieces.append(b"{" if is_dict else b"[")
        first = True
        for item in value:
            if not first:
                pieces.append(b", ")
            first = False
            if is_dict:
                pieces.append(json.dumps(item).encode() + b": ")
                item = value[item]
            _dump(item, pieces, depth - 1)
        pieces.append(b"}" if is_dict else b"]")
    else:
        piece = json.dumps(value).encode()
        json.loads(piece)
        pieces.append(piece)


def _serialise(state):
    """state.json's bytes as a list of pieces (a chain certificate, a bundle certificate's metadata ...), checked
    before anything is written: a state the next boot could not read back (too large, too deeply nested, numbers
    JSON cannot hold) is refused here, while the old state is still intact. In pieces, not one text: with an issued
    identity or 10 roots the text is 3.5-4.5 KB, and json.dumps grows it through larger and larger blocks."""
    pieces = []
    try:
        _dump(state, pieces, 3)
        size = 0
        for piece in pieces:
            # A "\ud800" escape in the service's JSON becomes a lone surrogate that load() would refuse.
            check_utf8(piece)
            size += len(piece)
        # In bytes, as load() bounds it: "é" is one character but two bytes.
        ok = size <= _MAX_STATE_BYTES
    except (ValueError, TypeError, RuntimeError):  # RuntimeError: nesting deeper than the stack allows
        ok = False
    if not ok:
        raise ProvisioningError(
            errors.MALFORMED_RESPONSE, "the registration result cannot be stored (payload too large or not plain JSON)"
        )
    return pieces


class Incoming:
    """The sink azprov.bundle.Extractor streams the bundle's PEM text into, a piece at a time (write()):
    trust_bundle.pem.in, written only from the first byte that differs from the stored trust_bundle.pem (each piece
    is compared with the stored file at the same offset, read a piece at a time: a bundle DPS sends again unchanged
    costs no flash write). Nothing reads the .in file but save(); a leftover one is removed by the next save() or
    clear()."""

    def __init__(self, store):
        self._store = store
        self._file = None
        self._stored = None
        self.path = None
        self._scratch = memoryview(bytearray(_PIECE))  # made with the sink, before the DPS answer fragments the heap
        self.start()

    def start(self):
        self.close()
        self._hash = hashlib.sha256()
        self._same = 0  # leading bytes identical to the stored file's, not yet copied
        try:
            self._stored = open(self._store.pem_path, "rb")
        except OSError:
            self._stored = None

    def write(self, piece):
        self._hash.update(piece)
        if self._file is None:
            if self._stored_continues_with(piece):
                self._same += len(piece)
                return
            self._open_with_copy()
        self._file.write(piece)

    def _stored_continues_with(self, piece):
        stored = self._stored
        if stored is None:
            return False
        piece = memoryview(piece)
        scratch = self._scratch
        done = 0
        while done < len(piece):
            size = min(len(piece) - done, len(scratch))
            if stored.readinto(scratch[:size]) != size or scratch[:size] != piece[done : done + size]:
                return False
            done += size
        return True

    def _open_with_copy(self):
        # The first difference: the stored file's matching start is copied into the new file, which goes on from there.
        makedirs(self._store.directory)
        self._file = open(self._store.pem_path + _INCOMING, "wb")
        stored = self._stored
        self._stored = None
        if stored is None:
            return
        with stored:
            stored.seek(0)
            scratch = self._scratch
            while self._same:
                size = stored.readinto(scratch[: min(self._same, len(scratch))])
                if not size:
                    break
                self._file.write(scratch[:size])
                self._same -= size

    def finish(self):
        """The sha256 (hex) of everything written, which is now all in the file at `path`: the .in file, or the stored
        trust_bundle.pem when all of it matched."""
        if self._file is None and self._stored is not None and self._stored.readinto(self._scratch[:1]):
            self._open_with_copy()  # a shorter bundle that starts like the stored one
        self.path = self._store.pem_path if self._file is None else self._store.pem_path + _INCOMING
        self.close()
        return binascii.hexlify(self._hash.digest()).decode()

    def close(self):
        if self._stored is not None:
            self._stored.close()
            self._stored = None
        if self._file is not None:
            self._file.close()
            self._file = None
            self._store.writes += 1


class Store:
    def __init__(self, directory):
        self.directory = directory.rstrip("/") or "/"
        self.state_path = self.directory + "/" + STATE
        self.pem_path = self.directory + "/" + PEM
        self.writes = 0  # files written by this instance: how tests and the benchmark see "no flash write"
        self._streaming = False  # an Incoming sink of this instance is in use: its .in file is not a leftover

    def load(self, certificates=True):
        """The committed state (a dict) or None on a fresh device. Finishes an interrupted commit; raises a STORAGE
        error when the files are corrupt or disagree (the caller registers again). `certificates=False` leaves out
        the check of each certificate against the list (the file's sha256 is still checked)."""
        renamed = False  # state.json to be renamed into place once every check passed (a rejected load changes nothing)
        try:
            state = _read_json(self.state_path)
        except OSError:
            state = self._complete_tmp_state()
            if state is None:
                # On FAT a power cut can leave state.json's entry on clusters already freed (unreadable). Removed now,
                # before this boot allocates a cluster, it frees nothing; removed by the next commit, it would free
                # the clusters a new file took meanwhile.
                _remove(self.state_path)
                return None
            renamed = True
        except (ValueError, UnicodeError):
            raise _corrupt("state.json is not valid JSON")
        else:
            _check_state(state)
        pem = self.pem_path
        staged = pem + _STAGED
        spare = pem + _SPARE
        # .in: a power cut while a DPS answer streamed in (unless this instance streams one now)
        leftovers = [staged] if self._streaming else [staged, pem + _INCOMING]
        bundle = state["trust_bundle"]
        if bundle is None:
            for path in leftovers + [pem, spare]:
                _remove(path)
        else:
            digest = bundle["pem_sha256"]
            found = file_sha256(pem)
            if file_sha256(spare) == digest or found == digest and digest in [file_sha256(p) for p in leftovers]:
                self._rehome(digest, leftovers)
            elif found == digest:
                for path in leftovers + [spare]:
                    _remove(path)
            elif file_sha256(staged) == digest:
                leftovers.remove(staged)
                for path in leftovers + [spare]:
                    _remove(path)
                os.rename(staged, pem)
            else:
                raise _corrupt("trust_bundle.pem does not match state.json")
            if certificates:
                self._check_certificates(bundle["certificates"])
        if renamed:
            os.rename(self.state_path + _TMP, self.state_path)
        return state

    def _rehome(self, digest, leftovers):
        # On FAT a leftover byte-identical to trust_bundle.pem may be on the PEM's own clusters: a power cut inside a
        # directory sector write can leave a new entry (the .in file's, a rename's) with its name written but the first
        # cluster and size of the deleted entry it reuses, which a rename left pointing at the PEM; a cut inside a
        # rename leaves both names on one chain. Removing such a file frees the PEM's clusters. So the PEM is first
        # copied to clusters of its own (.cp, complete before anything is removed), then the leftovers are removed and
        # the copy renamed over the PEM, whose removal frees nothing more (no cluster was allocated in between).
        pem = self.pem_path
        spare = pem + _SPARE
        if file_sha256(spare) != digest:  # none yet, or a copy a power cut interrupted
            buf = bytearray(_CHUNK)
            with open(pem, "rb") as fin, open(spare, "wb") as fout:
                while True:
                    n = fin.readinto(buf)
                    if not n:
                        break
                    fout.write(memoryview(buf)[:n])
            self.writes += 1
        for path in leftovers:
            _remove(path)
        os.rename(spare, pem)

    def _complete_tmp_state(self):
        # On FAT, renaming onto an existing file is "remove it, then rename" (MicroPython's VfsFat): a power cut in
        # between leaves no state.json, only the temporary file, which was complete and closed before the old
        # state.json was removed. A temporary file that is not a complete state is a cut before the commit point.
        # The caller renames it into place once the bundle it names checks out.
        tmp = self.state_path + _TMP
        try:
            state = _read_json(tmp)
            _check_state(state)
        except (OSError, ValueError, UnicodeError, ProvisioningError):
            return None
        return state

    def _check_certificates(self, listed):
        # The file matches its recorded hash; now each certificate must be the one state.json lists, so a file
        # and a record that were damaged together are still caught before TLS sees them.
        from azprov.pem import PemError, PemFile, split

        try:
            # Line by line: one certificate in heap at a time, not the whole file.
            found = [
                binascii.hexlify(hashlib.sha256(der).digest()).decode().upper()
                for _, der in split(PemFile(self.pem_path), blocks=False)
            ]
        except (PemError, OSError, UnicodeError) as exc:
            raise _corrupt("trust_bundle.pem: %s" % exc)
        if found != [entry.get("sha256") if isinstance(entry, dict) else None for entry in listed]:
            raise _corrupt("trust_bundle.pem holds other certificates than state.json lists")

    def incoming(self):
        """A sink for azprov.bundle.Extractor (see Incoming)."""
        _remove(self.pem_path + _INCOMING)
        self._streaming = True
        return Incoming(self)

    def discard_incoming(self):
        self._streaming = False
        _remove(self.pem_path + _INCOMING)

    def save(self, assignment, bundle, identity=None):
        """Commits an assignment, a parsed bundle (azprov.bundle.parse; None removes the stored bundle) and an
        operational identity DPS issued (None: none). The identity (key and chain) lives inside state.json, so one
        atomic replace commits it with the assignment: after a power cut the device has the old identity or the new
        one, never a mix. Returns False, writing nothing, when the stored state already says the same. A bundle
        whose `pem` is None was streamed by extract() into an Incoming sink: its file is what gets staged."""
        try:
            return self._save(assignment, bundle, identity)
        finally:
            self.discard_incoming()

    def _save(self, assignment, bundle, identity):
        meta = None
        if bundle is not None:
            meta = {key: bundle[key] for key in ("id", "etag", "pem_sha256", "certificates")}
        state = {"version": FORMAT_VERSION, "assignment": assignment, "trust_bundle": meta}
        if identity is not None:
            state["identity"] = identity
        pieces = _serialise(state)
        try:
            # The PEM file's sha256 matching the recorded one stands for its certificates here: they are not decoded
            # again (on the 32-bit build that is the largest block a 10-root bundle's provisioning asks for).
            current = self.load(certificates=False)
        except ProvisioningError:
            current = None
        if current == state:
            return False
        try:
            makedirs(self.directory)
            staged = False
            if meta is not None and file_sha256(self.pem_path) != meta["pem_sha256"]:
                if bundle["pem"] is None:
                    incoming = self.pem_path + _INCOMING
                    if file_sha256(incoming) != meta["pem_sha256"]:
                        raise ProvisioningError(errors.STORAGE, "streamed trust bundle was not written completely")
                    os.rename(incoming, self.pem_path + _STAGED)
                else:
                    with open(self.pem_path + _STAGED, "w") as f:
                        f.write(bundle["pem"])
                    self.writes += 1
                staged = True
            try:
                write_atomic(self.state_path, pieces)
            except BaseException:
                # The commit never began (write_atomic removed its temporary file): nothing points at the PEM staged
                # above. A temporary file still there is a rename that failed half-way, which the next boot finishes
                # and whose state names the staged PEM.
                if staged and not _exists(self.state_path + _TMP):
                    _remove(self.pem_path + _STAGED)
                raise
            self.writes += 1
            if meta is None:
                _remove(self.pem_path)
            elif staged:
                # Only the file this save wrote: a leftover from an older interrupted commit is not this bundle.
                os.rename(self.pem_path + _STAGED, self.pem_path)
            else:
                _remove(self.pem_path + _STAGED)
        except OSError as exc:
            raise ProvisioningError(errors.STORAGE, "cannot write %s: %s" % (self.directory, exc))
        return True

    def clear(self):
        for name in (STATE + _TMP, STATE, PEM, PEM + _STAGED, PEM + _INCOMING, PEM + _SPARE):
            _remove(self.directory + "/" + name)
