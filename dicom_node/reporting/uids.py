"""Deterministic UIDs for the objects the node writes.

A result is identified by what produced it: the study, the model (name, checkpoint hashes,
findings catalogue, image-to-study aggregation), the threshold profile, the exact set of input
instances and the SR it supersedes. Every UID of the SR, of the summary image and of
the text report is a name-based UUID (ISO/IEC 9834-8 `2.25.` form) of that identity, so building the
report again for the same result gives the same instances, and a re-delivery is a duplicate
the PACS recognises rather than a second report.

Series UIDs and per-finding tracking UIDs depend only on the study and the model name, so a
superseding report lands in the same series and each finding keeps its tracking UID across
versions (a later AI result assessment can reference it).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

# Fixed once for dicom-node: changing it changes every UID the node has ever derived.
_NAMESPACE = uuid.UUID("b083782e-b5a0-474d-baa4-c9864ef999c7")

SR_SERIES_NUMBER = 9901
SUMMARY_SERIES_NUMBER = 9902
TEXT_REPORT_SERIES_NUMBER = 9903
HEATMAP_SERIES_NUMBER = 9904
HEATMAPS_PER_VERSION = 100  # instance numbers: version 1 maps are 1.., version 2 maps 101..


def derived_uid(*parts: str) -> str:
    """A UID that is a pure function of `parts` (at most 44 characters)."""
    if not parts:
        raise ValueError("parts: at least one part is needed")
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


@dataclass(frozen=True)
class ResultKey:
    """What a result depends on; equal keys mean the same report.

    `supersedes` is the SOP Instance UID of the SR this result replaces ("" for a study's first):
    going back to an earlier threshold profile then still makes a new SR that names the one it
    replaces, instead of colliding with the first SR made with that profile.

    `not_analysed` is the reason for a study the node did not analyse ("" for findings); its
    source instances are all the study's instances.
    """

    study_instance_uid: str
    model_name: str
    checkpoint_sha256s: tuple[str, ...]
    catalogue_version: str
    aggregation: str
    profile: str
    source_sop_instance_uids: tuple[str, ...]
    supersedes: str = ""
    not_analysed: str = ""

    @classmethod
    def of(
        cls,
        *,
        study_instance_uid: str,
        model_name: str,
        checkpoint_sha256s: Sequence[str],
        profile: str,
        source_sop_instance_uids: Sequence[str],
        catalogue_version: str = "",
        aggregation: str = "",
        supersedes: str = "",
        not_analysed: str = "",
    ) -> ResultKey:
        if not source_sop_instance_uids:
            raise ValueError("source_sop_instance_uids: a result needs at least one input image")
        return cls(
            study_instance_uid=study_instance_uid,
            model_name=model_name,
            checkpoint_sha256s=tuple(checkpoint_sha256s),
            catalogue_version=catalogue_version,
            aggregation=aggregation,
            profile=profile,
            source_sop_instance_uids=tuple(sorted(set(source_sop_instance_uids))),
            supersedes=supersedes,
            not_analysed=not_analysed,
        )

    def same_inputs(self, other: ResultKey) -> bool:
        """Equal apart from what they supersede: processing again would change nothing."""
        return replace(self, supersedes="") == replace(other, supersedes="")

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form of the key (stored with the result)."""
        parts = [
            self.study_instance_uid,
            self.model_name,
            list(self.checkpoint_sha256s),
            self.catalogue_version,
            self.aggregation,
            self.profile,
            list(self.source_sop_instance_uids),
            self.supersedes,
        ]
        if self.not_analysed:  # only here: findings keys (and their UIDs) stay as they were
            parts.append(["not-analysed", self.not_analysed])
        canonical = json.dumps(parts, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class InstanceUids:
    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int


@dataclass(frozen=True)
class ReportUids:
    sr: InstanceUids
    summary: InstanceUids
    tracking: Mapping[str, str]  # finding label -> tracking UID
    text: InstanceUids


def report_uids(key: ResultKey, *, version: int, labels: Sequence[str]) -> ReportUids:
    """UIDs for the SR, the summary image and the text report of one result; `version` is 1 for a study's first
    result and counts up with each superseding one (it becomes the instance number)."""
    if version < 1:
        raise ValueError(f"version: must be >= 1, got {version}")
    digest = key.digest()
    study, model = key.study_instance_uid, key.model_name
    return ReportUids(
        sr=InstanceUids(
            series_instance_uid=derived_uid("sr-series", study, model),
            sop_instance_uid=derived_uid("sr-instance", digest),
            series_number=SR_SERIES_NUMBER,
            instance_number=version,
        ),
        summary=InstanceUids(
            series_instance_uid=derived_uid("summary-series", study, model),
            sop_instance_uid=derived_uid("summary-instance", digest),
            series_number=SUMMARY_SERIES_NUMBER,
            instance_number=version,
        ),
        tracking={label: derived_uid("tracking", study, model, label) for label in labels},
        text=text_report_uids(key, version=version),
    )


def text_report_uids(key: ResultKey, *, version: int) -> InstanceUids:
    """The text report's UIDs: a pure function of the result key, like the other objects'."""
    return InstanceUids(
        series_instance_uid=derived_uid("text-series", key.study_instance_uid, key.model_name),
        sop_instance_uid=derived_uid("text-instance", key.digest()),
        series_number=TEXT_REPORT_SERIES_NUMBER,
        instance_number=version,
    )


def heatmap_uids(key_digest: str, study_instance_uid: str, model_name: str, *, version: int,
                 labels: Sequence[str]) -> dict[str, InstanceUids]:
    """UIDs of a result's attention-map overlays, one per finding label (in the given order):
    one series per study and model like the SR's, instances named by the result key digest
    (`ResultKey.digest()`) and the label, so a stored result's overlays can be found again."""
    if version < 1:
        raise ValueError(f"version: must be >= 1, got {version}")
    series = derived_uid("heatmap-series", study_instance_uid, model_name)
    return {
        label: InstanceUids(
            series_instance_uid=series,
            sop_instance_uid=derived_uid("heatmap-instance", key_digest, label),
            series_number=HEATMAP_SERIES_NUMBER,
            instance_number=(version - 1) * HEATMAPS_PER_VERSION + i + 1,
        )
        for i, label in enumerate(labels)
    }
