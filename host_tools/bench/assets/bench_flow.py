# Bench wrapper, copied into a device folder by host_tools/bench/device.py (MicroPython only, not firmware).
# Runs the device's whole flow exactly as main.py does (azprov.supervisor.main) and reports the GC heap it used:
#
#   micropython bench_flow.py provisioning.json peak      high-water mark of the GC heap at this heap size
#   micropython bench_flow.py provisioning.json steps     live heap (right after a collection) at each debug step
#   micropython bench_flow.py provisioning.json imports azprov.errors azprov.log ...
#                                                         heap each module keeps once imported (nothing else runs)
#   micropython bench_flow.py provisioning.json tls HOST PORT HOSTNAME CA_FILE
#                                                         heap a TLS context trusting CA_FILE keeps, and what one
#                                                         verified connection (handshake done) adds to it
#   micropython bench_flow.py provisioning.json csr RUNS   time of RUNS key generations + CSRs (azprov.csr: new_key,
#                                                         csr_der, private_key_der), one line per run
#
# Why the peak is exact without sampling: the collector frees memory only when it runs, so between collections
# gc.mem_alloc() can only grow; its maximum is reached just before a collection or at the end. A stand-in `gc`
# module in sys.modules (the firmware does `import gc`) reads mem_alloc() before every collection the firmware
# asks for. A collection the heap forces by running out is invisible to it, but it leaves mem_alloc() lower than
# the previous reading with no explicit collection between: that is counted (auto_collections) so a peak taken
# on a heap small enough to force collections is not trusted.
#
# micropython.mem_peak() is printed too, but it is not a heap peak: it counts bytes allocated minus bytes freed
# explicitly and never subtracts what the collector reclaims, so it grows with everything the flow ever allocated.
import gc as _gc
import sys

import micropython

_PREFIX = "azprov-bench"


class _HeapWatch:
    """Stands in for the gc module; forwards everything, and reads the heap at each call."""

    def __init__(self, live_steps):
        self._live_steps = live_steps  # steps mode: collect before answering mem_free(), so it reports live heap
        self.peak_alloc = 0
        self.last_alloc = 0
        self.collections = 0
        self.auto_collections = 0
        self.live_peak = 0

    def _read(self):
        used = _gc.mem_alloc()
        if used < self.last_alloc:
            self.auto_collections += 1
        self.last_alloc = used
        if used > self.peak_alloc:
            self.peak_alloc = used
        return used

    def collect(self):
        self._read()
        self.collections += 1
        result = _gc.collect()
        self.last_alloc = _gc.mem_alloc()
        if self.last_alloc > self.live_peak:
            self.live_peak = self.last_alloc
        return result

    def mem_free(self):
        if self._live_steps:
            self.collect()
        else:
            self._read()
        return _gc.mem_free()

    def mem_alloc(self):
        return self._read()

    def __getattr__(self, name):
        return getattr(_gc, name)


def _report(name, pairs):
    print(_PREFIX, name, " ".join("%s=%s" % pair for pair in pairs))


def _flow(path, mode):
    watch = _HeapWatch(live_steps=(mode == "steps"))
    _gc.collect()
    heap_total = _gc.mem_alloc() + _gc.mem_free()
    baseline = _gc.mem_alloc()
    watch.last_alloc = baseline
    sys.modules["gc"] = watch
    from azprov.supervisor import main

    status = main(path)
    watch._read()
    _report(
        "heap",
        (
            ("status", status),
            ("heap_total", heap_total),
            ("baseline_alloc", baseline),
            ("peak_alloc", watch.peak_alloc),
            ("live_peak", watch.live_peak),
            ("collections", watch.collections),
            ("auto_collections", watch.auto_collections),
            ("mem_peak_counter", micropython.mem_peak()),
        ),
    )
    if mode == "steps":
        micropython.qstr_info()
    return status


def _imports(names):
    # Each module's resident cost: heap still in use after importing it (and anything it imports first).
    for name in names:
        _gc.collect()
        before = _gc.mem_alloc()
        __import__(name)
        _gc.collect()
        _report("import", (("module", name), ("bytes", _gc.mem_alloc() - before)))
    return 0


def _tls(host, port, hostname, ca_file):
    # What TLS itself costs in the GC heap of this runtime (on the Unix port mbedTLS allocates there; on an ESP32
    # it allocates from the system heap instead).
    import socket
    import ssl

    from azprov.pem import PemFile, der_certificates

    _gc.collect()
    before = _gc.mem_alloc()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    count = 0
    for der in der_certificates(PemFile(ca_file)):
        ctx.load_verify_locations(cadata=der)
        count += 1
    _gc.collect()
    context = _gc.mem_alloc() - before
    sock = socket.socket()
    sock.connect(socket.getaddrinfo(host, int(port))[0][-1])
    tls = ctx.wrap_socket(sock, server_hostname=hostname)
    _gc.collect()
    connection = _gc.mem_alloc() - before - context
    tls.close()
    _report("tls", (("certificates", count), ("context", context), ("connection", connection)))
    return 0


def _csr(runs):
    # What certificate issuance costs the device before it connects: a P-384 key, its CSR and its DER form.
    import time

    from azprov import csr

    for index in range(int(runs)):
        _gc.collect()
        started = time.ticks_us()
        key = csr.new_key()
        request = csr.csr_der(key, "bench-device")
        csr.private_key_der(key)
        elapsed = time.ticks_diff(time.ticks_us(), started)
        _report("csr", (("run", index), ("us", elapsed), ("csr_bytes", len(request))))
        key = request = None
    return 0


def _run():
    argv = sys.argv
    mode = argv[2] if len(argv) > 2 else "peak"
    if mode == "imports":
        return _imports(argv[3:])
    if mode == "tls":
        return _tls(*argv[3:7])
    if mode == "csr":
        return _csr(argv[3])
    return _flow(argv[1] if len(argv) > 1 else "provisioning.json", mode)


sys.exit(_run())
