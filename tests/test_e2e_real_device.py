"""A real device's radiograph end to end: the Philips chest PA that the `pydicom-data` package
ships (CR, MONOCHROME1, 15 bits stored, 1955x1841, Pixel Spacing `0.000\\0.000`) in its four
files (uncompressed, JPEG 2000 lossless, JPEG 2000 lossy, and that lossy image uncompressed),
sent by dcmtk storescu to the node, with Orthanc as the PACS.

The four files carry the same UIDs; all but the first are given derived UIDs of their own here
(header only: the encoded pixel data is sent as the device's software wrote it), so that each
encoding is its own study with its own result.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.reporting.uids import SUMMARY_SERIES_NUMBER
from dicom_node.settings import load_settings
from tests.peers import NodeProcess, OrthancPeer, storescu
from tests.report_samples import dciodvfy
from tests.test_e2e_orthanc import SC_CLASS, SR_CLASS, _decisions, _fetch, _groups, _series

data_store = pytest.importorskip("data_store", reason="pydicom-data is a test dependency")

pytestmark = pytest.mark.slow

DATA = Path(data_store.__file__).parent / "data"
ENCODINGS = ("RG1_UNCR", "RG1_UNCI", "RG1_J2KR", "RG1_J2KI")
PROPOSE = {"RG1_UNCR": [], "RG1_UNCI": [], "RG1_J2KR": ["-xv"], "RG1_J2KI": ["-xw"]}  # storescu
LOSSLESS_TOLERANCE = 1e-4  # probability, 0..1


def _recoded(name: str, directory: Path) -> tuple[Path, pydicom.Dataset]:
    """The device's file, re-identified (new study/series/SOP UIDs) except for the first."""
    ds = pydicom.dcmread(DATA / f"{name}.dcm")
    if name != ENCODINGS[0]:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, generate_uid(entropy_srcs=[name, keyword]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = directory / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds


@pytest.fixture
def orthanc(tmp_path):
    peer = OrthancPeer(tmp_path / "orthanc")
    try:
        yield peer.start()
    finally:
        peer.stop()


@pytest.fixture
def node(tmp_path, orthanc):
    shipped = load_settings(environ={})
    checkpoints = [str(shipped.resolve(p)) for p in shipped.model.checkpoints]
    node = NodeProcess.create(
        tmp_path / "node",
        model={"checkpoints": checkpoints, "batch_size": 2},
        worker={"enabled": True, "poll_interval_seconds": 1},
        outbound={"poll_interval_seconds": 1},
    )
    with node.config_path.open("a") as f:
        f.write(
            "\n[[destinations]]\n"
            f'name = "pacs"\nae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\n'
            f"port = {orthanc.dicom_port}\nconnect_timeout_seconds = 5\n"
        )
    try:
        yield node.start()
    finally:
        node.stop()


def test_philips_chest_pa_in_four_encodings_reaches_the_pacs(tmp_path, node, orthanc):
    sent = [_recoded(name, _mkdir(tmp_path / "modality")) for name in ENCODINGS]
    for name, (path, _) in zip(ENCODINGS, sent, strict=True):
        result = storescu(node.port, [path], called_ae=node.ae_title, options=PROPOSE[name])
        assert result.returncode == 0, result.stdout + result.stderr

    certainties = {}
    for name, (_, ds) in zip(ENCODINGS, sent, strict=True):
        study = ds.StudyInstanceUID
        node.wait_for_state(study, "DONE", timeout=240)
        _wait_for_results(node, orthanc, study)
        (sr_path,) = _fetch(orthanc, study, SR_CLASS, tmp_path / name)
        (sc_path,) = _series(_fetch(orthanc, study, SC_CLASS, tmp_path / name),
                             SUMMARY_SERIES_NUMBER)
        report, groups = _groups(sr_path)
        assert report.PatientSex == ds.PatientSex  # copied from the image as it has it
        referenced = {img.referenced_sop_instance_uid for img in groups[0].source_images}
        assert referenced == {ds.SOPInstanceUID}
        certainties[name] = {label: value[0] / 100 for label, value in _decisions(groups).items()}
        for path in (sr_path, sc_path):
            errors, _warnings = dciodvfy(path)
            assert errors == [], (name, path.name, errors)

    # UNCI is the lossy JPEG 2000 image decompressed: the same pixels as J2KI, not as UNCR
    for original, copy in (("RG1_UNCR", "RG1_J2KR"), ("RG1_UNCI", "RG1_J2KI")):
        for label, p in certainties[original].items():
            assert certainties[copy][label] == pytest.approx(p, abs=LOSSLESS_TOLERANCE), (
                copy, label)

    log = node.log()
    patient = sent[0][1]
    assert str(patient.PatientName) not in log and "CompressedSamples" not in log
    assert str(patient.PatientID) not in log


def _wait_for_results(node: NodeProcess, orthanc: OrthancPeer, study: str) -> None:
    def arrived():
        classes = Counter(i.get("SOPClassUID") for i in orthanc.study_instances(study))
        return classes[SR_CLASS] >= 1 and classes[SC_CLASS] >= 1

    try:
        node.wait_for(arrived, f"SR and summary of {study} in Orthanc", timeout=120)
    except AssertionError:
        raise AssertionError(f"node log:\n{node.log()[-4000:]}") from None


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
