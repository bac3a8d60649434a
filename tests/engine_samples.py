"""Inputs for the engine tests: seeded checkpoints, 8-bit images and small DX/CR datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from dicom_node.shipped import findings_file
from ml.architecture import ClipArchitecture
from ml.testing import TINY, random_model, save_released_layout

FINDINGS_FILE = findings_file()


def all_prompted_catalogue():
    """The shipped catalogue with every prompt-scored finding enabled (13 CheXpert prompt pairs)
    and the derived one left out: for tests of the engine's arithmetic, not of what the demo
    model may be asked."""
    from dataclasses import replace

    from ml.catalogue import Catalogue, load_catalogue

    shipped = load_catalogue(FINDINGS_FILE)
    return Catalogue(tuple(replace(f, enabled=True) for f in shipped.findings if not f.derived),
                     source=shipped.source)

# CheXzero's other geometry: ViT-B/16 at 320 (no step-B resize), kept narrow and shallow.
TINY_320 = ClipArchitecture(
    embed_dim=64, image_size=320, patch_size=16, vision_width=64, vision_layers=1,
    text_width=64, text_layers=1, context_length=77, vocab_size=49408,
)


def sensitive_checkpoint(path: Path, seed: int = 0, arch: ClipArchitecture = TINY) -> Path:
    """A random checkpoint in the released layout whose image features follow the pixels.

    A freshly initialised ViT's class-token output is dominated by its class and position
    embeddings, so small preprocessing errors barely move it. Damping those embeddings makes
    the model about ten times more sensitive: the comparison with the reference then has teeth.
    """
    model = random_model(arch, seed)
    with torch.no_grad():
        model.visual.class_embedding.mul_(0.01)
        model.visual.positional_embedding.mul_(0.01)
    return save_released_layout(model, path)


def textured_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An 8-bit image with fine periodic detail and noise: aliasing and rounding show on it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    values = 128 + 60 * np.sin(x / 3.1) * np.cos(y / 2.3) + rng.normal(0, 40, (height, width))
    return np.clip(values, 0, 255).astype(np.uint8)


def radiograph_pixels(rows: int = 240, columns: int = 200, seed: int = 0) -> np.ndarray:
    """12-bit stored values with two bright 'lungs' on a darker body, plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    lungs = sum(
        np.exp(-((x - columns * cx) / (columns * 0.15)) ** 2 - ((y - rows / 2) / (rows * 0.3)) ** 2)
        for cx in (0.3, 0.7)
    )
    values = 1200 + 1800 * lungs + rng.normal(0, 60, (rows, columns))
    return np.clip(values, 0, 4095).astype(np.uint16)


def dx_dataset(pixels: np.ndarray | None = None, **attributes: object) -> Dataset:
    """A frontal chest DX (MONOCHROME2, 12 bits stored) with file meta; keywords override."""
    pixels = radiograph_pixels() if pixels is None else pixels
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 12 if pixels.dtype.itemsize == 2 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write_dx(path: Path, pixels: np.ndarray | None = None, **attributes: object) -> Path:
    ds = dx_dataset(pixels, **attributes)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
