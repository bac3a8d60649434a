"""Only findings a checkpoint learned are enabled: the check `serve` makes at start-up and the
threshold commands make before a profile is put to use.

A checkpoint's model card (`ml.model_card`) may list the findings it was trained on. A
prompt-scored finding that the catalogue enables and a card says its checkpoint never learned
is refused, in one line naming the finding and the checkpoint, unless forced (`[model]
allow_untrained_findings = true` for the node, `--force` for a command); a forced start logs
`untrained_findings_forced` with the findings and checkpoints. Derived findings ("No Finding")
are computed from the others and need no training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_node.logs import log_event
from dicom_node.settings import Settings
from ml.catalogue import Catalogue

LOG = logging.getLogger(__name__)
CONFIG_FORCE = "[model] allow_untrained_findings = true"


class UntrainedFindingError(ValueError):
    """An enabled finding is one a checkpoint's model card says it was not trained on."""


@dataclass(frozen=True)
class Untrained:
    checkpoint: Path
    card: str  # the model card's file name
    findings: tuple[str, ...]

    def sentence(self, catalogue: Catalogue) -> str:
        names = ", ".join(repr(f) for f in self.findings)
        noun = "finding" if len(self.findings) == 1 else "findings"
        verb = "is" if len(self.findings) == 1 else "are"
        return (f"{noun} {names} {verb} enabled in {Path(catalogue.source).name} but checkpoint "
                f"{self.checkpoint.name} was not trained on {'it' if verb == 'is' else 'them'} "
                f"(model card {self.card})")


def untrained(checkpoints: Sequence[Path], catalogue: Catalogue) -> list[Untrained]:
    """Per checkpoint, the enabled prompt-scored findings its card says it did not learn (only
    checkpoints with such findings). Raises UntrainedFindingError for an unreadable card."""
    from ml.model_card import untrained_findings

    labels = [f.label for f in catalogue.prompted()]
    found = []
    for path in checkpoints:
        try:
            missing, card = untrained_findings(path, labels)
        except (ValueError, OSError) as exc:
            raise UntrainedFindingError(str(exc)) from None
        if missing and card is not None:
            found.append(Untrained(path, card.path.name, tuple(missing)))
    return found


def check_trained_findings(
    checkpoints: Sequence[Path], catalogue: Catalogue, *, force: bool, how_to_force: str
) -> list[Untrained]:
    """Raise UntrainedFindingError (one line: finding, checkpoint, how to fix or force) when an
    enabled finding was not learned by a checkpoint; with `force`, log
    `untrained_findings_forced` (WARNING) and return what was forced instead."""
    found = untrained(checkpoints, catalogue)
    if not found:
        return []
    if not force:
        raise UntrainedFindingError(
            f"{found[0].sentence(catalogue)}; disable it there or force with {how_to_force}"
        )
    log_event(LOG, "untrained_findings_forced", level=logging.WARNING,
              checkpoints={u.checkpoint.name: list(u.findings) for u in found},
              message="findings enabled that a model card says were not trained: their scores "
                      "mean nothing")
    return found


def check_settings(settings: Settings) -> list[Untrained]:
    """`check_trained_findings` for the node's configured checkpoints and catalogue, forced by
    `[model] allow_untrained_findings`. Raises UntrainedFindingError or
    ml.catalogue.CatalogueError."""
    from ml.catalogue import load_catalogue

    catalogue = load_catalogue(settings.resolve(settings.model.findings_file))
    checkpoints = [settings.resolve(p) for p in settings.model.checkpoints]
    return check_trained_findings(checkpoints, catalogue,
                                  force=settings.model.allow_untrained_findings,
                                  how_to_force=CONFIG_FORCE)
