"""What a device is given to provision with: provisioning files, their rules, fleets of them, and PKI.

provision_file.py           `provision-file create|validate|show` (and the options `fleet` shares with it)
validation.py               check a provisioning file as the device would; show it with secrets hidden
writing.py                  write a provisioning file and its DPS CA file, all checked first, each file whole
x509_identity.py            an X.509 device's certificate and key files (given, or issued by a group CA)
device_keys.py              key checks and a group enrollment's per-device key (derived on the host)
dps_roots.py                the public DPS roots (from certifi) for the default DPS CA file
device_rules.py             the firmware's own rules, run on the host (what the device accepts)
provisioning.schema.json    the rules a provisioning file must follow
fleet.py                    `fleet`: provisioning files for many devices of one group enrollment (key or X.509)
pki.py                      `pki`: the lab PKI (DPS and gateway server certificates, trust roots; X.509 group CA
                            and device certificates)
"""
