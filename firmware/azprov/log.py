# One line per event: `azprov LEVEL event key=value ...`, easy for people and tests to read. Secrets never reach
# a log line: values of fields whose names suggest a secret are replaced, whatever the caller passed.
import gc

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}
_BY_NAME = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}
_SECRET_WORDS = ("key", "token", "sig", "password", "secret")

level = INFO


def set_level(name):
    global level
    level = _BY_NAME.get(name, INFO)


def _format(name, value):
    for word in _SECRET_WORDS:
        if word in name:
            return "<redacted>"
    text = value if isinstance(value, str) else str(value)
    if not text or " " in text or '"' in text:
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def log(severity, event, pairs=()):
    if severity < level:
        return
    parts = ["azprov", _NAMES[severity], event]
    for name, value in pairs:
        parts.append(name + "=" + _format(name, value))
    if level <= DEBUG:
        # At debug level every step also says how much heap is left: where MemoryErrors would come from.
        parts.append("heap_free=%d" % gc.mem_free())
    print(" ".join(parts))


def debug(event, *pairs):
    log(DEBUG, event, pairs)


def info(event, *pairs):
    log(INFO, event, pairs)


def warning(event, *pairs):
    log(WARNING, event, pairs)


def error(event, *pairs):
    log(ERROR, event, pairs)
