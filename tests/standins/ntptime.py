# Stand-in for `ntptime` (tests only): settime() fails while standins.json says {"ntp_up": false}, and otherwise
# sets the stand-in clock (time.py here), which reads 2000-01-01 until then when {"clock_unset": true}.
import time

import standin_control

host = "pool.ntp.org"
calls = [0]


def settime():
    calls[0] += 1
    if not standin_control.get("ntp_up", True):
        print("STANDIN ntptime.settime failed host=%s" % host)
        raise OSError(110)
    time.set_by_ntp()
    print("STANDIN ntptime.settime host=%s" % host)
