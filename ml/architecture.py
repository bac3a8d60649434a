"""CLIP architecture in OpenAI layout: read it from a state dict's tensor shapes, build it with
open-clip-torch.

A checkpoint carries no configuration, only tensors, so every size is inferred from shapes, as
OpenAI's own `build_model` does. Both of OpenAI's image towers are read: the vision transformer
(ViT-B/32, CheXzero's) and the modified ResNet (RN50 and its kin: `visual.layer1..4` and an
attention pool). Head counts are not visible in shapes: like OpenAI's loader we take width // 64
for transformers (at least 1) and stem width * 32 // 64 for the ResNet's attention pool. A model
trained with other head counts must not be saved in this layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

HEAD_WIDTH = 64


class CheckpointFormatError(ValueError):
    """The file is not a CLIP state dict in OpenAI layout; the message says what was expected."""


@dataclass(frozen=True)
class ClipArchitecture:
    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    text_width: int = 512
    text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    # Blocks per stage of a modified-ResNet image tower; empty for a vision transformer. For a
    # ResNet, vision_width is the stem width, patch_size its total stride (32) and
    # vision_layers the number of blocks.
    resnet_layers: tuple[int, ...] = ()

    @property
    def is_resnet(self) -> bool:
        return bool(self.resnet_layers)

    @property
    def vision_heads(self) -> int:
        if self.is_resnet:
            return max(1, self.vision_width * 32 // HEAD_WIDTH)
        return max(1, self.vision_width // HEAD_WIDTH)

    @property
    def text_heads(self) -> int:
        return max(1, self.text_width // HEAD_WIDTH)

    def describe(self) -> str:
        if self.is_resnet:
            stages = "-".join(str(n) for n in self.resnet_layers)
            image = f"ResNet-{stages}@{self.image_size} w{self.vision_width}"
        else:
            image = f"ViT-{self.vision_layers}L/{self.patch_size}@{self.image_size} w{self.vision_width}"
        return f"{image}, text {self.text_layers}L w{self.text_width}, embed {self.embed_dim}"

    def as_dict(self) -> dict[str, int | list[int]]:
        values = asdict(self)
        values["resnet_layers"] = list(self.resnet_layers)  # as JSON has it
        return values


TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "text_projection", "logit_scale")
VIT_KEYS = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
            "visual.proj")
RESNET_KEYS = ("visual.conv1.weight", "visual.layer1.0.conv1.weight",
               "visual.attnpool.positional_embedding")


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> ClipArchitecture:
    """Read the architecture of an OpenAI-layout CLIP state dict from its tensor shapes."""
    resnet = "visual.attnpool.positional_embedding" in state_dict
    missing = [k for k in (RESNET_KEYS if resnet else VIT_KEYS) + TEXT_KEYS if k not in state_dict]
    if missing:
        raise CheckpointFormatError(
            "expected a CLIP state dict in OpenAI layout (keys such as visual.conv1.weight, "
            f"token_embedding.weight, text_projection); missing: {', '.join(missing[:4])}"
        )
    text = {
        "embed_dim": state_dict["text_projection"].shape[1],
        "text_width": state_dict["ln_final.weight"].shape[0],
        "text_layers": _count_blocks(state_dict, "transformer.resblocks."),
        "context_length": state_dict["positional_embedding"].shape[0],
        "vocab_size": state_dict["token_embedding.weight"].shape[0],
    }
    return ClipArchitecture(**text, **(_resnet_tower(state_dict) if resnet else _vit_tower(state_dict)))


def _vit_tower(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    conv = state_dict["visual.conv1.weight"]
    vision_width, patch_size = conv.shape[0], conv.shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return {
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "vision_width": vision_width,
        "vision_layers": _count_blocks(state_dict, "visual.transformer.resblocks."),
    }


def _resnet_tower(state_dict: Mapping[str, torch.Tensor]) -> dict:
    stages = tuple(_count_blocks(state_dict, f"visual.layer{n}.") for n in (1, 2, 3, 4))
    grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    return {
        "image_size": grid * 32,
        "patch_size": 32,
        "vision_width": state_dict["visual.layer1.0.conv1.weight"].shape[0],
        "vision_layers": sum(stages),
        "resnet_layers": stages,
    }


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    return len(indices)


def build_model(arch: ClipArchitecture) -> CLIP:
    """A float32 CLIP with QuickGELU (as OpenAI and CheXzero trained it), randomly initialised."""
    vision = CLIPVisionCfg(
        layers=arch.resnet_layers or arch.vision_layers,
        width=arch.vision_width,
        head_width=HEAD_WIDTH if arch.is_resnet else min(HEAD_WIDTH, arch.vision_width),
        patch_size=arch.patch_size,
        image_size=arch.image_size,
    )
    text = CLIPTextCfg(
        context_length=arch.context_length,
        vocab_size=arch.vocab_size,
        width=arch.text_width,
        heads=arch.text_heads,
        layers=arch.text_layers,
    )
    return CLIP(embed_dim=arch.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)


def model_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> CLIP:
    """Build the architecture the tensors describe and load them, upcasting float16 to float32."""
    arch = infer_architecture(state_dict)
    model = build_model(arch)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    tensors.pop("input_resolution", None)
    tensors.pop("context_length", None)
    tensors.pop("vocab_size", None)
    result = model.load_state_dict(tensors, strict=False)
    # A BatchNorm's update counter does not change what the model computes.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    problems = missing + list(result.unexpected_keys)
    if problems:
        raise CheckpointFormatError(
            f"state dict does not fit the CLIP architecture its shapes imply ({arch.describe()}): "
            f"missing {missing[:4]}, unexpected {list(result.unexpected_keys)[:4]}"
        )
    return model.float().eval()


def input_size(model: CLIP) -> int:
    """The image side the model's image tower takes (an int or a pair, by tower, in open_clip)."""
    size = model.visual.image_size
    return int(size if isinstance(size, int) else size[0])


def openai_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """The model's tensors under OpenAI CLIP key names (open_clip's CLIP already uses them)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
