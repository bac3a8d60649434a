"""`python -m dicom_node ...`: the same command line as `dicom-node ...` (for hosts where the
venv's bin/ is not on PATH)."""

from dicom_node.cli import main

if __name__ == "__main__":
    main()
