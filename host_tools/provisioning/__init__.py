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
pki.py                      `pki`: writes the lab PKI and X.509 group CA/device certificates; re-exports the PKI's
                            public names (host_tools.provisioning.pki) for tests and tools
certificates.py             PKI building blocks: keys, roots, intermediates, TLS server certificates, who signed what
pki_files.py                PKI files: load (key must match), write whole (keys 0600), reuse while still valid
emulator_pki.py             the emulator's PKI (DPS root/server, trust root, edge CA, gateway) and its profiles
                            (lab: P-256; azure: RSA as Azure's endpoints)
x509_group_ca.py            X.509 enrollment-group CA (root + intermediate) and device certificates issued from it
issuance_ca.py              a certificate-issuance policy CA for the emulator (`pki --issuance-ca`, EC P-384)
stored_identity.py          the operational certificate a device stored (state.json identity), listed by `show`
"""
