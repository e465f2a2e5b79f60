"""What a device is given to provision with: provisioning files, their rules, fleets of them, and PKI.

provision_file.py           `provision-file create|validate|show`: write, check and show one provisioning file
provisioning.schema.json    the rules a provisioning file must follow
fleet.py                    `fleet`: provisioning files for many devices of one group enrollment (key or X.509)
pki.py                      `pki`: the lab PKI (DPS and gateway server certificates, trust roots; X.509 group CA
                            and device certificates)
"""
