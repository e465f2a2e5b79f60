# azprov: provision a MicroPython device into Azure IoT through DPS over MQTT, store the trust bundle,
# and talk to the IoT Edge gateway it vouches for. Submodules import lazily: import only what you use.
__version__ = "0.1.0"


def release(*names):
    """Drops submodules a finished phase no longer needs, so their bytecode goes back to the heap. A device without
    frozen modules holds every imported module's code in RAM: the DPS leg's code is dead weight at the gateway.
    The package's attribute of the same name would keep a module alive as surely as sys.modules does."""
    import gc
    import sys

    package = sys.modules["azprov"]
    for name in names:
        sys.modules.pop("azprov." + name, None)
        if name in package.__dict__:
            delattr(package, name)
    gc.collect()


def connect(path="provisioning.json"):
    """Provisions (or uses the cached assignment), connects to the gateway and returns an azprov.client.Client:
    send(), twin(), report(), on_desired(), on_method(), on_c2d(), poll(), run(), run_async(). The supervisor behind
    it rides out transient faults; an error that needs a person is raised (azprov.errors.ProvisioningError)."""
    from azprov.client import Client
    from azprov.supervisor import APPLICATION, Supervisor

    supervisor = Supervisor(path, APPLICATION)
    client = Client(supervisor)
    supervisor.ready()
    return client
