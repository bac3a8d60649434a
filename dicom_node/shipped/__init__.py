"""What the package ships besides code, found with importlib.resources so that a wheel installed
anywhere carries it: `config/node.toml` (the defaults, every key commented), `config/findings.toml`
(the findings catalogue) and `models/` (the demo model, its model card and README).

The files are read in place: the package must be installed as files (a wheel, an editable
install or a checkout on PYTHONPATH), not imported from a zip archive.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_dir() -> Path:
    """The folder holding config/ and models/. Raises RuntimeError if the package is not on
    the file system (imported from a zip archive), where checkpoints could not be opened."""
    root = Path(str(files(__name__)))
    if not root.is_dir():
        raise RuntimeError(f"dicom-node's shipped files are not on the file system ({root}): "
                           "install the package as files (pip install), not as a zip")
    return root


def defaults_file() -> Path:
    """config/node.toml: the shipped defaults."""
    return shipped_dir() / "config" / "node.toml"


def findings_file() -> Path:
    """config/findings.toml: the shipped findings catalogue."""
    return shipped_dir() / "config" / "findings.toml"


def demo_checkpoint() -> Path:
    """models/demo-synthetic-v2.pt: the demo model (NOT FOR CLINICAL USE)."""
    return shipped_dir() / "models" / "demo-synthetic-v2.pt"
