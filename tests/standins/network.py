# Stand-in for a board's `network` module (tests only): one station interface whose access point is up unless
# standins.json says {"wifi_up": false}; a drop stays a drop until the firmware joins again.
import standin_control

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
_joined = [False]


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False

    def active(self, on=None):
        if on is not None:
            self._active = bool(on)
        return self._active

    def connect(self, ssid, password):
        _joined[0] = standin_control.get("wifi_up", True) and ssid == standin_control.get("ssid", ssid)
        print("STANDIN network.connect ssid=%s joined=%s" % (ssid, _joined[0]))

    def isconnected(self):
        if _joined[0] and not standin_control.get("wifi_up", True):
            _joined[0] = False
        return _joined[0]

    def disconnect(self):
        _joined[0] = False

    def status(self):
        return STAT_GOT_IP if self.isconnected() else STAT_NO_AP_FOUND

    def ifconfig(self):
        return ("10.0.0.7", "255.255.255.0", "10.0.0.1", "10.0.0.1")
