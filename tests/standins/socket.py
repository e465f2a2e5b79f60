# Stand-in for the `socket` module (tests only): the port's own, except that the next name lookup hangs for ever,
# ignoring every timeout, once the test creates the file `standin_hang_socket` (a stuck DNS query or driver).
import standin_control
import usocket
import utime
from usocket import *  # noqa: F403


def getaddrinfo(*args):
    if standin_control.take("standin_hang_socket"):
        print("STANDIN socket.getaddrinfo hangs")
        while True:
            utime.sleep_ms(100)
    return usocket.getaddrinfo(*args)
