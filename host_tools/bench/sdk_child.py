"""Child process of the CPU comparison (host_tools/bench/device.py): the official azure-iot-device SDK registers
once, the way an application would use it: import the SDK, create a ProvisioningDeviceClient from a symmetric key,
register.

It is started as `python -I host_tools/bench/sdk_child.py` (isolated mode, so nothing from host_tools lands on
sys.path and only the SDK's own imports are paid for) and reads its parameters as JSON on stdin, so the device key
never appears on a command line. It prints one JSON line: the registration status and device id, never the key.

The SDK always dials port 8883; `proxy_port` is the bench's HTTP CONNECT proxy that tunnels that to the emulator
(docs/emulator.md), with TLS and the host-name check still end to end between the SDK and the emulator.
"""

import json
import sys


def main() -> int:
    params = json.load(sys.stdin)
    from azure.iot.device import ProvisioningDeviceClient, ProxyOptions

    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=params["provisioning_host"],
        registration_id=params["registration_id"],
        id_scope=params["id_scope"],
        symmetric_key=params["symmetric_key"],
        server_verification_cert=params["server_verification_cert"],
        proxy_options=ProxyOptions("HTTP", "127.0.0.1", params["proxy_port"]),
    )
    result = client.register()  # connects, registers, polls until assigned, disconnects
    state = result.registration_state
    print(json.dumps({"status": result.status, "device_id": state.device_id if state else None}))
    return 0 if result.status == "assigned" else 1


if __name__ == "__main__":
    sys.exit(main())
