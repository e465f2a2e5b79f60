# Runs on the MicroPython Unix port in a staged flash folder: the device's verdict on each provisioning file named
# in the case list, taken by the firmware's own code in the order app.main and provision.Session use it
# (config.load, then the CA file read and loaded into a TLS context). One line per case:
#   OK <path>   |   REFUSED <path> <kind> <message>
import sys

from azprov import config, transport
from azprov.errors import ProvisioningError
from azprov.pem import open_ca_file

for line in open(sys.argv[1]):
    path = line.strip()
    if not path:
        continue
    try:
        cfg = config.load(path)
        transport.tls_context((open_ca_file(cfg["dps_ca_file"]),))
        print("OK", path)
    except ProvisioningError as exc:
        print("REFUSED", path, exc.kind, exc.message.replace("\n", " "))
    except MemoryError:
        print("REFUSED", path, "out_of_memory", "-")
