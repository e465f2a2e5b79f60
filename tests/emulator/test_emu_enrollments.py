"""Enrollment file validation (errors name the field), loading, and re-reading on change."""

import copy
import json
import os

import pytest

from host_tools.emulator.enrollment_file import EnrollmentStore, demo_enrollments, load_enrollments, write_enrollments
from host_tools.emulator.enrollments import EnrollmentError, parse_enrollments
from host_tools.provisioning.pki import ensure_emulator_pki, make_root, write_bundle


@pytest.fixture
def doc():
    return demo_enrollments(devices=("dev-1", "dev-2"))


def parse(document, **kwargs):
    return parse_enrollments(document, check_files=False, **kwargs)


def test_demo_document_is_valid(doc):
    enrollments = parse(doc)
    assert enrollments.id_scope == "0ne00000001"
    assert set(enrollments.individual) == {"dev-1", "dev-2"}
    assert enrollments.groups[0].name == "fleet"
    assert enrollments.individual["dev-1"].trust_bundle == "edge"
    assert "symmetric_key" not in repr(enrollments.individual["dev-1"]) and doc["individual"][0][
        "symmetric_key"
    ] not in repr(enrollments)


def mutate(doc, change):
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


CASES = [
    ("missing key", lambda d: d["individual"][0].pop("symmetric_key"), "individual[0]", "symmetric_key"),
    (
        "bad base64",
        lambda d: d["individual"][0].update(symmetric_key="not*base64"),
        "individual[0].symmetric_key",
        "base64",
    ),
    ("short key", lambda d: d["groups"][0].update(group_key="AAAA"), "groups[0].group_key", "bytes"),
    ("unknown field", lambda d: d["individual"][1].update(symetric_key="x"), "individual[1]", "symetric_key"),
    ("unknown top-level", lambda d: d.update(individuals=[]), "", "individuals"),
    ("wrong type", lambda d: d["individual"][0].update(disabled="yes"), "individual[0].disabled", "true or false"),
    (
        "bad id",
        lambda d: d["individual"][0].update(registration_id="has space"),
        "individual[0].registration_id",
        "not allowed",
    ),
    (
        "duplicate id",
        lambda d: d["individual"][1].update(registration_id="dev-1"),
        "individual[1].registration_id",
        "twice",
    ),
    ("dangling bundle", lambda d: d["individual"][0].update(trust_bundle="nope"), "individual[0].trust_bundle", "nope"),
    (
        "unknown fault",
        lambda d: d["groups"][0].update(faults={"throtle_register": 1}),
        "",
        "groups[0].faults.throtle_register",
    ),
    (
        "bad fault value",
        lambda d: d["individual"][0].update(faults={"drop_after": "later"}),
        "",
        "individual[0].faults.drop_after",
    ),
    (
        "global-only fault",
        lambda d: d["individual"][0].update(faults={"unknown_registration": 404}),
        "individual[0].faults.unknown_registration",
        "globally",
    ),
    (
        "bad pki name",
        lambda d: d["trust_bundles"]["edge"].update(certificates=["pki:nope"]),
        "trust_bundles.edge.certificates[0]",
        "pki:trust-root",
    ),
    (
        "empty bundle",
        lambda d: d["trust_bundles"]["edge"].update(certificates=[]),
        "trust_bundles.edge.certificates",
        "must not be empty",
    ),
    (
        "bad allocation code",
        lambda d: d["individual"][0].update(allocation_fails=500),
        "individual[0].allocation_fails",
        "",
    ),
    ("bad scope", lambda d: d.update(id_scope="0ne/1"), "id_scope", "not allowed"),
]


@pytest.mark.parametrize("name, change, field, text", CASES, ids=[c[0] for c in CASES])
def test_errors_name_the_field(doc, name, change, field, text):
    with pytest.raises(EnrollmentError) as info:
        parse(mutate(doc, change))
    assert info.value.field == field
    assert field in str(info.value) and text in str(info.value)


def test_not_an_object():
    with pytest.raises(EnrollmentError, match="object"):
        parse([])


def test_files_are_checked_and_relative_to_the_file(tmp_path, doc):
    pki = ensure_emulator_pki(tmp_path / "pki")
    write_bundle(tmp_path / "certs" / "extra.pem", [make_root()])
    doc["trust_bundles"]["edge"]["certificates"] = ["certs/extra.pem", "pki:trust-root"]
    path = write_enrollments(tmp_path / "enrollments.json", doc)
    enrollments = load_enrollments(path, pki=pki)
    assert len(enrollments.bundle_certificates("edge", pki)) == 2
    doc["trust_bundles"]["edge"]["certificates"] = ["certs/missing.pem"]
    write_enrollments(path, doc)
    with pytest.raises(EnrollmentError) as info:
        load_enrollments(path, pki=pki)
    assert info.value.field == "trust_bundles.edge.certificates[0]" and "missing.pem" in str(info.value)
    (tmp_path / "certs" / "bad.pem").write_text("not a certificate")
    doc["trust_bundles"]["edge"]["certificates"] = ["certs/bad.pem"]
    write_enrollments(path, doc)
    with pytest.raises(EnrollmentError, match="no PEM certificate"):
        load_enrollments(path, pki=pki)


def test_invalid_json_reports_position(tmp_path):
    path = tmp_path / "e.json"
    path.write_text('{"id_scope": "x",\n  oops}')
    with pytest.raises(EnrollmentError, match="line 2"):
        load_enrollments(path)


def test_store_rereads_changes_and_keeps_last_good_version(tmp_path, doc):
    pki = ensure_emulator_pki(tmp_path / "pki")
    path = write_enrollments(tmp_path / "enrollments.json", doc)
    store = EnrollmentStore(path, pki=pki)
    assert set(store.current().individual) == {"dev-1", "dev-2"}
    doc["individual"].pop()
    write_enrollments(path, doc)
    assert set(store.current().individual) == {"dev-1"}
    # An in-place rewrite (same inode) is noticed too.
    doc["id_scope"] = "0ne0000FFFF"
    with open(path, "w") as handle:
        json.dump(doc, handle)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    assert store.current().id_scope == "0ne0000FFFF"
    path.write_text("{broken")
    assert store.current().id_scope == "0ne0000FFFF"  # last good version stays
    assert store.last_error is not None and "not valid JSON" in str(store.last_error)
