"""OpenAI's other image tower, the modified ResNet (RN50 and its kin; the demo model's): its
architecture is read from the tensor shapes, the model we build computes what open_clip's own
port of OpenAI's loader builds from the same file, and the engine scores with it."""

from __future__ import annotations

import engine_reference as ref
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_samples import all_prompted_catalogue, textured_image
from open_clip.model import build_model_from_openai_state_dict

from ml.architecture import CheckpointFormatError, infer_architecture, model_from_state_dict
from ml.checkpoint import load_checkpoint
from ml.engine import ZeroShotEngine
from ml.testing import TINY_RESNET, random_model, released_state_dict, write_random_checkpoint
from ml.training.config import DEMO_ARCHITECTURE, architecture_from_text


def _warm_batchnorm(seed: int = 3):
    """A random ResNet whose BatchNorm statistics are not the identity (as after training)."""
    model = random_model(TINY_RESNET, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.visual.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.3, generator=generator)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0, generator=generator)
    return model


def test_resnet_architecture_is_read_from_the_shapes():
    tensors = released_state_dict(random_model(TINY_RESNET))
    assert "visual.attnpool.positional_embedding" in tensors and "visual.proj" not in tensors
    assert infer_architecture(tensors) == TINY_RESNET
    assert infer_architecture(released_state_dict(random_model(DEMO_ARCHITECTURE))) == DEMO_ARCHITECTURE


def test_our_model_computes_what_open_clips_openai_loader_builds(tmp_path):
    tensors = released_state_dict(_warm_batchnorm())
    theirs = build_model_from_openai_state_dict({k: v.clone() for k, v in tensors.items()})
    theirs = theirs.float().eval()
    ours = model_from_state_dict(tensors)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = ref.tokenize(["pleural effusion", "no pleural effusion"])
    with torch.no_grad():
        assert torch.allclose(ours.encode_image(x), theirs.encode_image(x), atol=1e-5)
        assert torch.allclose(ours.encode_text(tokens), theirs.encode_text(tokens), atol=1e-5)


def test_engine_scores_a_resnet_checkpoint_as_the_reference_pipeline_does(tmp_path):
    path = tmp_path / "rn.pt"
    torch.save(released_state_dict(_warm_batchnorm()), path)
    loaded = load_checkpoint(path)
    assert loaded.architecture == TINY_RESNET
    assert "ResNet-1-1-1-1@224" in loaded.architecture.describe()
    catalogue = all_prompted_catalogue()
    pairs = [(f.positive_prompt, f.negative_prompt) for f in catalogue.enabled()]
    images = [textured_image(400, 330, seed=1), textured_image(250, 250, seed=2)]
    reference_model = build_model_from_openai_state_dict(torch.load(path, weights_only=True))
    reference_model = reference_model.float().eval()
    batch = torch.stack([ref.step_b(ref.step_a(im), 224) for im in images])
    with torch.no_grad():
        img = F.normalize(reference_model.encode_image(batch), dim=-1)
        pos = F.normalize(reference_model.encode_text(ref.tokenize([p for p, _ in pairs])), dim=-1)
        neg = F.normalize(reference_model.encode_text(ref.tokenize([n for _, n in pairs])), dim=-1)
    expected = torch.softmax(torch.stack([img @ pos.T, img @ neg.T]), dim=0)[0].numpy()
    ours = ZeroShotEngine([path], catalogue, device="cpu").score_uint8(images)
    assert np.abs(ours - expected).max() <= 1e-4


def test_a_file_without_batchnorm_counters_still_loads(tmp_path):
    tensors = {k: v for k, v in released_state_dict(random_model(TINY_RESNET)).items()
               if not k.endswith("num_batches_tracked")}
    assert load_checkpoint(write_random_checkpoint(tmp_path / "a.pt", TINY_RESNET)).architecture \
        == infer_architecture(tensors)
    torch.save(tensors, tmp_path / "b.pt")
    assert load_checkpoint(tmp_path / "b.pt").architecture == TINY_RESNET


def test_a_resnet_missing_its_attention_pool_is_a_format_error(tmp_path):
    tensors = {k: v for k, v in released_state_dict(random_model(TINY_RESNET)).items()
               if not k.startswith("visual.attnpool.c_proj")}
    torch.save(tensors, tmp_path / "broken.pt")
    with pytest.raises(CheckpointFormatError, match="visual.attnpool.c_proj"):
        load_checkpoint(tmp_path / "broken.pt")


def test_arch_text_names_presets_and_resnet_stages():
    assert architecture_from_text("demo") == DEMO_ARCHITECTURE
    assert architecture_from_text("demo-vit").resnet_layers == ()
    custom = architecture_from_text("vision_width=32,resnet_layers=2-2-2-2")
    assert custom.resnet_layers == (2, 2, 2, 2) and custom.vision_width == 32
    assert architecture_from_text("resnet_layers=0,vision_width=256").is_resnet is False
    with pytest.raises(ValueError, match="resnet_layers needs four block counts"):
        architecture_from_text("resnet_layers=1-1")
