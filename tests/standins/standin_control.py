# Shared by the stand-in modules (machine, network, ntptime, time, socket) that the run-loop tests put in a Unix-port
# device's folder in place of the board's own. The test steers them by rewriting `standins.json` in that folder
# while the device runs (e.g. {"wifi_up": false}); one-shot faults are files the device deletes when it meets them.
import json
import os

_cache = [None, None]


def get(name, default=None):
    try:
        stat = os.stat("standins.json")
    except OSError:
        return default
    key = (stat[6], stat[8])  # size, mtime
    if _cache[0] != key:
        try:
            with open("standins.json") as f:
                _cache[1] = json.load(f)
        except (OSError, ValueError):  # being rewritten: keep the last complete version
            return (_cache[1] or {}).get(name, default)
        _cache[0] = key
    return _cache[1].get(name, default)


def take(name):
    """True once for a one-shot fault file `name` (deleted here)."""
    try:
        os.remove(name)
        return True
    except OSError:
        return False
