# ESP32 boot.py: join Wi-Fi and set the clock before main.py runs.
#
# Wi-Fi settings come from the provisioning file's "wifi": {"ssid": ..., "password": ...}. The clock matters
# before anything else: SAS token expiry and certificate validity are judged by it, and after a reset an ESP32's
# RTC starts near 2000-01-01. Output follows the firmware's format: "azprov <LEVEL> <event> key=value".
# The password is never printed.
import gc
import time

_CONNECT_TIMEOUT_MS = 20000
_WIFI_ATTEMPTS = 3
_NTP_ATTEMPTS = 5
_ESP32_EPOCH_OFFSET = 946684800  # the ESP32 counts seconds from 2000, Unix from 1970
_VALID_AFTER = 1704067200  # 2024-01-01: a clock earlier than this has not been set


def _log(level, event, detail=""):
    print("azprov %s %s%s" % (level, event, (" " + detail) if detail else ""))


def _wifi_settings(path="provisioning.json"):
    import json

    try:
        with open(path) as f:
            wifi = json.load(f).get("wifi")
    except (OSError, ValueError) as exc:
        _log("WARNING", "boot_no_provisioning_file", "path=%s error=%s" % (path, type(exc).__name__))
        return None
    if not wifi or not wifi.get("ssid"):
        return None
    return wifi["ssid"], wifi.get("password", "")


def _status_name(network, status):
    for name in (
        "STAT_WRONG_PASSWORD",
        "STAT_NO_AP_FOUND",
        "STAT_CONNECT_FAIL",
        "STAT_IDLE",
        "STAT_CONNECTING",
        "STAT_GOT_IP",
        "STAT_BEACON_TIMEOUT",
        "STAT_ASSOC_FAIL",
        "STAT_HANDSHAKE_TIMEOUT",
    ):
        if getattr(network, name, None) == status:
            return name[5:].lower()
    return str(status)


def _join_wifi(ssid, password):
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wlan.isconnected():  # a soft reset keeps the connection
        _log("INFO", "wifi_connected", "ssid=%s ip=%s reused=1" % (ssid, wlan.ifconfig()[0]))
        return True
    for attempt in range(1, _WIFI_ATTEMPTS + 1):
        try:
            wlan.connect(ssid, password)
        except OSError as exc:
            _log("WARNING", "wifi_connect_error", "ssid=%s attempt=%d error=%s" % (ssid, attempt, exc))
        start = time.ticks_ms()
        while not wlan.isconnected() and time.ticks_diff(time.ticks_ms(), start) < _CONNECT_TIMEOUT_MS:
            time.sleep_ms(200)
        if wlan.isconnected():
            _log("INFO", "wifi_connected", "ssid=%s ip=%s attempt=%d" % (ssid, wlan.ifconfig()[0], attempt))
            return True
        _log(
            "WARNING",
            "wifi_retry",
            "ssid=%s attempt=%d status=%s" % (ssid, attempt, _status_name(network, wlan.status())),
        )
        wlan.disconnect()
        time.sleep_ms(1000 * attempt)
    _log("ERROR", "wifi_failed", "ssid=%s attempts=%d" % (ssid, _WIFI_ATTEMPTS))
    return False


def _sync_clock():
    import ntptime

    for attempt in range(1, _NTP_ATTEMPTS + 1):
        try:
            ntptime.settime()  # sets the RTC to UTC
        except (OSError, OverflowError) as exc:
            _log("WARNING", "ntp_retry", "attempt=%d error=%s" % (attempt, exc))
            time.sleep_ms(1000 * attempt)
            continue
        unix_now = time.time() + (_ESP32_EPOCH_OFFSET if time.gmtime(0)[0] == 2000 else 0)
        if unix_now >= _VALID_AFTER:
            _log("INFO", "clock_synced", "unix=%d attempt=%d" % (unix_now, attempt))
            return True
    _log("ERROR", "clock_not_synced", "attempts=%d" % _NTP_ATTEMPTS)
    return False


def _boot():
    settings = _wifi_settings()
    if settings is None:
        _log("INFO", "wifi_not_configured")
        return
    if _join_wifi(*settings):
        _sync_clock()


try:
    _boot()
except Exception as exc:  # boot.py must never stop main.py from running (it reports the network error itself)
    _log("ERROR", "boot_failed", "error=%s" % type(exc).__name__)
del _boot, _join_wifi, _sync_clock, _wifi_settings, _status_name, _log
gc.collect()
