"""dicom-node: DICOM networking, study assembly, reporting, the CLI and the service."""

__version__ = "0.1.0"
