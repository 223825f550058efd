"""Tiny backbones: built offline, saved and reloaded with identical logits, real checkpoint layouts."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from prm.model.backbones import FAMILIES, build_backbone
from prm.model.chat import format_chain
from prm.model.tokenizer import single_token_id

PROCESSOR_KWARGS = {"internvl": {"crop_to_patches": False}}


def _inputs(backbone):
    steps = ["The top left tile is red.", "So 1 tile is red.", "Final answer: 1"]
    images = [Image.new("RGB", (56, 56), "red")] if backbone.is_multimodal else []
    text = format_chain(backbone.family, "How many tiles are red?", steps, backbone.step_marker, len(images))
    if backbone.is_multimodal:
        return dict(
            backbone.processor(text=[text], images=images, return_tensors="pt", **backbone.processor_kwargs)
        )
    return dict(backbone.tokenizer([text], return_tensors="pt"))


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request):
    return build_backbone(request.param, processor_kwargs=PROCESSOR_KWARGS.get(request.param))


def test_tiny_backbone_is_small_and_has_label_tokens(backbone):
    assert 50_000 < backbone.num_parameters() < 1_000_000
    tokenizer = backbone.tokenizer
    plus, minus = backbone.label_token_ids
    assert plus != minus
    assert tokenizer.decode([plus]) == "+" and tokenizer.decode([minus]) == "-"
    assert backbone.step_marker_id == tokenizer.convert_tokens_to_ids("<step>")
    inputs = _inputs(backbone)
    assert int((inputs["input_ids"] == backbone.step_marker_id).sum()) == 3


def test_saved_and_reloaded_backbone_gives_identical_logits(backbone, tmp_path):
    backbone.model.eval()
    inputs = _inputs(backbone)
    with torch.no_grad():
        before = backbone.model(**inputs).logits
    backbone.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = build_backbone(backbone.family, path=str(tmp_path), processor_kwargs=backbone.processor_kwargs)
    reloaded.model.eval()
    assert reloaded.label_token_ids == backbone.label_token_ids
    assert reloaded.step_marker_id == backbone.step_marker_id
    reloaded_inputs = _inputs(reloaded)
    assert torch.equal(reloaded_inputs["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        after = reloaded.model(**reloaded_inputs).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "internvl"])
def test_auto_classes_reload_a_saved_tiny_model(family, tmp_path):
    backbone = build_backbone(family, processor_kwargs=PROCESSOR_KWARGS.get(family))
    backbone.save_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert type(model) is type(backbone.model)
    assert "video_processor" not in processor.get_attributes()
    assert single_token_id(AutoTokenizer.from_pretrained(tmp_path), "+") == backbone.label_token_ids[0]


def _write_real_layout(backbone, directory):
    """Rewrite a saved tiny model into the file layout of the published checkpoints."""
    backbone.save_pretrained(directory)
    processor_config = json.loads((directory / "processor_config.json").read_text())
    (directory / "processor_config.json").unlink()
    image_config = processor_config["image_processor"]
    if backbone.family == "internvl":
        # InternVL3-1B-hf: fast image processor class name, processor_config.json, a video config.
        image_config.update(
            image_processor_type="GotOcr2ImageProcessorFast", processor_class="InternVLProcessor"
        )
        (directory / "processor_config.json").write_text(
            json.dumps(
                {
                    "image_seq_length": processor_config["image_seq_length"],
                    "processor_class": "InternVLProcessor",
                }
            )
        )
        (directory / "video_preprocessor_config.json").write_text(
            json.dumps(
                {"video_processor_type": "InternVLVideoProcessor", "processor_class": "InternVLProcessor"}
            )
        )
    else:
        # Qwen2-VL-2B-Instruct: legacy preprocessor_config.json with min_pixels / max_pixels.
        image_config = {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2VLProcessor",
            "min_pixels": 3136,
            "max_pixels": 12544,
            "patch_size": 14,
            "merge_size": 2,
            "temporal_patch_size": 2,
            "image_mean": image_config["image_mean"],
            "image_std": image_config["image_std"],
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_resize": True,
        }
    (directory / "preprocessor_config.json").write_text(json.dumps(image_config))
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "Qwen2Tokenizer"
    tokenizer_config["processor_class"] = image_config["processor_class"]
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "internvl"])
def test_loads_real_checkpoint_layout_without_torchvision(family, tmp_path):
    backbone = build_backbone(family, processor_kwargs=PROCESSOR_KWARGS.get(family))
    backbone.model.eval()
    with torch.no_grad():
        expected = backbone.model(**_inputs(backbone)).logits
    _write_real_layout(backbone, tmp_path)
    loaded = build_backbone(family, path=str(tmp_path), processor_kwargs=PROCESSOR_KWARGS.get(family))
    loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(**_inputs(loaded)).logits, expected)


def test_missing_step_marker_is_added_and_embeddings_resized(tmp_path):
    backbone = build_backbone("qwen2")
    backbone.save_pretrained(tmp_path)
    reloaded = build_backbone("qwen2", path=str(tmp_path), step_marker="<verify>")
    assert reloaded.step_marker_id == len(reloaded.tokenizer) - 1
    assert reloaded.model.get_input_embeddings().weight.shape[0] >= len(reloaded.tokenizer)


def test_wrong_family_and_multi_token_label_words_are_refused(tmp_path):
    build_backbone("qwen2").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'qwen2' model but backbone.family is 'qwen2_vl'"):
        build_backbone("qwen2_vl", path=str(tmp_path))
    with pytest.raises(ValueError, match="not a single token"):
        build_backbone("qwen2", label_words=["correct step", "-"])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_backbone("qwen2", path=str(tmp_path / "nowhere"))
