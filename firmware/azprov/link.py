# The device's network link: joins the Wi-Fi named in the provisioning file, notices when it drops, and keeps the
# clock set with NTP (after every join and once per `ntp_resync_s`), because SAS expiries and certificate checks
# are judged by it and an ESP32's RTC wakes near 2000-01-01. Without a `wifi` entry the port's own network is used
# (the Unix port, a board joined by the user's boot.py). The Wi-Fi password is never logged.
import time

from micropython import const

from azprov import errors, log, watchdog
from azprov.clock import RELEASED, unix_time
from azprov.errors import ProvisioningError

_JOIN_TIMEOUT_MS = const(20000)
_JOIN_POLL_MS = const(200)
_STATUS_NAMES = (
    "STAT_WRONG_PASSWORD",
    "STAT_NO_AP_FOUND",
    "STAT_CONNECT_FAIL",
    "STAT_IDLE",
    "STAT_CONNECTING",
    "STAT_GOT_IP",
    "STAT_BEACON_TIMEOUT",
    "STAT_ASSOC_FAIL",
    "STAT_HANDSHAKE_TIMEOUT",
)


# Join states after which waiting longer does not help (the driver has given up on this attempt).
_FAILED_STATES = ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND", "STAT_CONNECT_FAIL", "STAT_ASSOC_FAIL")


def _given_up(network, status):
    for name in _FAILED_STATES:
        if getattr(network, name, None) == status:
            return True
    return False


def _status_name(network, status):
    for name in _STATUS_NAMES:
        if getattr(network, name, None) == status:
            return name[5:].lower()
    return str(status)


class Link:
    def __init__(self, config):
        wifi = config["wifi"]
        self.ssid = wifi.get("ssid") if wifi else None
        self._password = (wifi.get("password") or "") if wifi else ""
        self.ntp_host = config["ntp_host"]
        self.resync_s = config["ntp_resync_s"]
        self._wlan = None
        self.joins = 0
        self.syncs = 0
        self._sync_due = True  # at boot, and after every (re-)join
        self._synced_at = 0

    def _interface(self):
        if self._wlan is None:
            import network

            self._wlan = network.WLAN(network.STA_IF)
            self._wlan.active(True)
        return self._wlan

    def connected(self):
        """True when the link is up (always, without a `wifi` entry)."""
        return self.ssid is None or self._interface().isconnected()

    def up(self):
        """Joins the Wi-Fi unless already joined; raises a `network` error when it cannot within 20 s."""
        if self.ssid is None:
            return
        import network

        wlan = self._interface()
        if wlan.isconnected():
            if not self.joins:  # joined before main.py ran (a soft reset keeps the connection)
                self.joins = 1
                log.info("wifi_connected", ("ssid", self.ssid), ("ip", wlan.ifconfig()[0]), ("reused", 1))
            return
        try:
            wlan.connect(self.ssid, self._password)
        except OSError as exc:
            raise ProvisioningError(errors.NETWORK, "wifi %s: connect failed (%s)" % (self.ssid, exc))
        start = time.ticks_ms()
        while not wlan.isconnected():
            status = wlan.status()
            if _given_up(network, status) or time.ticks_diff(time.ticks_ms(), start) >= _JOIN_TIMEOUT_MS:
                status = _status_name(network, status)
                try:
                    wlan.disconnect()
                except OSError:
                    pass
                raise ProvisioningError(errors.NETWORK, "wifi %s: not joined (status %s)" % (self.ssid, status))
            watchdog.sleep_ms(_JOIN_POLL_MS)
        self.joins += 1
        self._sync_due = True
        log.info("wifi_connected", ("ssid", self.ssid), ("ip", wlan.ifconfig()[0]), ("joins", self.joins))

    def check(self):
        """Raises a `network` error when the Wi-Fi has dropped since it was joined."""
        if not self.connected():
            log.warning("wifi_lost", ("ssid", self.ssid))
            raise ProvisioningError(errors.NETWORK, "wifi %s: link lost" % self.ssid)

    def clock_due(self):
        if self._sync_due or unix_time() < RELEASED:
            return True
        return bool(self.resync_s) and unix_time() - self._synced_at >= self.resync_s

    def sync_clock(self):
        """Sets the clock with NTP when due. Without ntptime (the Unix port) the port's clock is used as it is.
        A failed sync is an error only while the clock is still unset: a set clock stays good for a day."""
        if not self.clock_due():
            return False
        try:
            import ntptime
        except ImportError:
            self._sync_due = False
            return False
        reason = "boot" if not self.syncs else ("rejoin" if self._sync_due else "daily")
        if self.ntp_host:
            ntptime.host = self.ntp_host
        try:
            ntptime.settime()  # sets the RTC to UTC
        except (OSError, OverflowError, IndexError) as exc:
            if unix_time() < RELEASED:
                raise ProvisioningError(errors.CLOCK, "NTP sync failed and the clock is not set (%s)" % exc)
            log.warning("ntp_failed", ("error", exc), ("reason", reason))
            self._synced_at = unix_time()  # try again after another period, not in a tight loop
            self._sync_due = False
            return False
        now = unix_time()
        if now < RELEASED:
            raise ProvisioningError(errors.CLOCK, "NTP answered a time before the firmware release (%d)" % now)
        self.syncs += 1
        self._synced_at = now
        self._sync_due = False
        log.info("clock_synced", ("unix", now), ("reason", reason))
        return True
