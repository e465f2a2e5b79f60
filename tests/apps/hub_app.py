# An application written against the public API (the README's example, plus log lines the tests read), run from an
# asyncio task on the MicroPython Unix port by tests/test_hub_features.py.
import asyncio
import json

import azprov
from azprov import log

client = azprov.connect("provisioning.json")
seen = {}


def on_desired(patch, version):
    log.info("app_desired", ("patch", json.dumps(patch)), ("version", version))
    seen["desired"] = True


def echo(payload):
    client.report({"lastEcho": payload})  # a handler may use the client itself
    return 200, payload


def boom(payload):
    raise ValueError("this handler always fails")


def on_c2d(body, properties):
    if body == b"boom":
        raise RuntimeError("bad message")
    log.info("app_c2d", ("body", body.decode()), ("properties", json.dumps(properties)))


client.on_desired(on_desired)
client.on_method("echo", echo)
client.on_method("boom", boom)
client.on_c2d(on_c2d)


async def telemetry():
    n = 0
    while True:
        if seen.pop("desired", False):
            log.info("app_twin", ("desired", json.dumps(client.twin()["desired"])))
        client.send({"n": n}, properties={"source": "app"})  # rides out drops; raises what needs a person
        log.info("app_sent", ("n", n))
        n += 1
        await asyncio.sleep(1)


async def main():
    asyncio.create_task(client.run_async())
    log.info("app_started")
    await telemetry()


asyncio.run(main())
