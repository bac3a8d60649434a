"""Zero-shot chest X-ray classification (CheXzero method): models, preprocessing, scoring,
calibration, evaluation, training and synthetic data. Works on arrays and paths; it never
imports pynetdicom, the database or dicom_node."""
