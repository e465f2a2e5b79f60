# Device-side test runner (MicroPython; also runs on CPython). There is no unittest on the device.
#
#   import runner; runner.run("test_smoke")            every test_* function of module test_smoke
#   runner.run("test_smoke", "test_json")              only the tests whose name contains "test_json"
#
# One line per test on stdout, parsed by `python -m host_tools test-device`:
#   PASS <name>
#   FAIL <name>: <ExceptionType>: <message>       followed by the traceback, each line starting with "  | "
#   SKIP <name>: <reason>                          raise runner.SkipTest("reason") inside a test
#   ERROR <module>: <ExceptionType>: <message>     the module did not import, or setup_module/teardown_module failed
# and a last line: DONE <module> passed=<n> failed=<n> skipped=<n>
# Optional module-level setup_module()/teardown_module() run around the tests, setup()/teardown() around each one.
import gc
import sys

try:
    import io
except ImportError:  # pragma: no cover - every port we use has io
    io = None


class SkipTest(Exception):
    pass


def _one_line(text):
    return " ".join(str(text).split())


def _describe(exc):
    message = _one_line(exc)
    name = type(exc).__name__
    return name + ": " + message if message else name


def _print_traceback(exc):
    if io is None:
        return
    buf = io.StringIO()
    if hasattr(sys, "print_exception"):  # MicroPython
        sys.print_exception(exc, buf)
    else:  # CPython
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=buf)
    for line in buf.getvalue().splitlines():
        print("  | " + line)


def _call_if_present(module, name):
    fn = getattr(module, name, None)
    if fn is not None:
        fn()


def run(module_name, only=None):
    """Run the tests of one module; return (passed, failed, skipped)."""
    passed = failed = skipped = 0
    try:
        module = __import__(module_name)
    except Exception as exc:
        print("ERROR %s: import failed: %s" % (module_name, _describe(exc)))
        _print_traceback(exc)
        print("DONE %s passed=0 failed=1 skipped=0" % module_name)
        return 0, 1, 0
    names = sorted(n for n in dir(module) if n.startswith("test_") and callable(getattr(module, n)))
    if only:
        names = [n for n in names if only in n]
    try:
        _call_if_present(module, "setup_module")
    except Exception as exc:
        print("ERROR %s: setup_module failed: %s" % (module_name, _describe(exc)))
        _print_traceback(exc)
        print("DONE %s passed=0 failed=1 skipped=0" % module_name)
        return 0, 1, 0
    for name in names:
        gc.collect()  # each test starts with the heap as clean as it can be
        try:
            _call_if_present(module, "setup")
            try:
                getattr(module, name)()
            finally:
                _call_if_present(module, "teardown")
        except SkipTest as exc:
            skipped += 1
            print("SKIP %s: %s" % (name, _one_line(exc)))
        except Exception as exc:
            failed += 1
            print("FAIL %s: %s" % (name, _describe(exc)))
            _print_traceback(exc)
        else:
            passed += 1
            print("PASS %s" % name)
    try:
        _call_if_present(module, "teardown_module")
    except Exception as exc:
        failed += 1
        print("ERROR %s: teardown_module failed: %s" % (module_name, _describe(exc)))
        _print_traceback(exc)
    print("DONE %s passed=%d failed=%d skipped=%d" % (module_name, passed, failed, skipped))
    return passed, failed, skipped
