"""Model loading (folder, single file, LoRA, ControlNet, content-based pickle refusal), the offline CLIP tokenizer, the
ControlNet preprocessors and the RAFT estimator's import rule — with tiny random-weight models, offline."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest
import tiny_models
import torch
from rerender.engines import control, loading
from rerender.engines.tokenizer import clip_tokenizer, make_tokenize
from rerender.filter.errors import InputError, UsageError
from safetensors.torch import load_file, save_file

pytestmark = [
    pytest.mark.skipif(tiny_models.TOKENIZER_MISSING is not None, reason=str(tiny_models.TOKENIZER_MISSING)),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture(scope="module")
def components():
    return tiny_models.build_components()


@pytest.fixture(scope="module")
def files(tmp_path_factory, components):
    root = tmp_path_factory.mktemp("models")
    return {
        "folder": tiny_models.write_diffusers_folder(root / "sd", components),
        "single": tiny_models.write_single_file(root / "sd.safetensors", components),
        "configs": tiny_models.write_config_folder(root / "configs"),
        "lora": tiny_models.write_lora(root / "lora.safetensors", components),
        "controlnet": tiny_models.write_controlnet_folder(root / "cn", components),
    }


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key)


# --- tokenizer ---------------------------------------------------------------------------------------------


def test_tokenizer_matches_standard_clip_ids():
    tokenizer = clip_tokenizer()
    # Reference ids of openai/clip-vit-large-patch14's tokenizer.
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("an astronaut riding a horse").input_ids == [49406, 550, 18376, 6765, 320, 4558, 49407]
    assert tokenizer("A Photo of a CAT!").input_ids == [49406, 320, 1125, 539, 320, 2368, 256, 49407]
    ids = make_tokenize(tokenizer)(["a cat", "x " * 100])
    assert ids.shape == (2, 77) and ids.dtype == torch.int64
    assert ids[0, :4].tolist() == [49406, 320, 2368, 49407] and set(ids[0, 4:].tolist()) == {49407}
    assert ids[1, 0] == 49406 and ids[1, -1] == 49407  # truncated to 77 with the end token kept


def test_tokenizer_does_not_import_open_clip():
    import sys

    clip_tokenizer()
    assert "open_clip" not in sys.modules  # importing open_clip would need torchvision


# --- loading -----------------------------------------------------------------------------------------------


def test_diffusers_folder_loads_offline(files, components):
    bundle = loading.load_bundle(str(files["folder"]), controlnets=((str(files["controlnet"]), 0.5),))
    _same_weights(bundle.unet, components.unet)
    _same_weights(bundle.vae, components.vae)
    _same_weights(bundle.text_encoder, components.text_encoder)
    _same_weights(bundle.controlnets[0][0], components.controlnet)
    assert bundle.controlnets[0][1] == 0.5
    assert bundle.schedule.steps_offset == 1 and not bundle.schedule.set_alpha_to_one


def test_single_file_checkpoint_loads_offline(files, components):
    bundle = loading.load_bundle(str(files["single"]), config_dir=files["configs"])
    _same_weights(bundle.unet, components.unet)
    _same_weights(bundle.vae, components.vae)
    _same_weights(bundle.text_encoder, components.text_encoder)


def test_shipped_sd15_configs_describe_sd15():
    import json

    unet = json.loads((loading.SD15_CONFIGS / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    from rerender.engines.runtime import up_self_attention_layers

    layers = up_self_attention_layers(unet)
    assert [(layer.channels, layer.stride) for layer in layers] == [(1280, 4)] * 3 + [(640, 2)] * 3 + [
        (320, 1)
    ] * 3
    vae = json.loads((loading.SD15_CONFIGS / "vae" / "config.json").read_text())
    assert vae["scaling_factor"] == 0.18215


def test_single_file_of_another_layout_is_refused_with_a_sentence(files):
    # The tiny checkpoint against the shipped SD1.5 configs: shapes do not fit.
    with pytest.raises(InputError, match="--model-config"):
        loading.load_bundle(str(files["single"]))


def test_lora_merges_with_its_scale(files, components):
    lora = load_file(str(files["lora"]))
    key = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    down, up, alpha = (
        lora[f"{key}.lora_down.weight"],
        lora[f"{key}.lora_up.weight"],
        float(lora[f"{key}.alpha"]),
    )
    bundle = loading.load_bundle(str(files["folder"]), loras=((str(files["lora"]), 0.8),))
    merged = bundle.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight
    base = components.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight
    expected = base + 0.8 * alpha / down.shape[0] * (up @ down)
    torch.testing.assert_close(merged, expected)
    te_merged = dict(bundle.text_encoder.named_parameters())
    te_base = dict(components.text_encoder.named_parameters())
    q = next(k for k in te_merged if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not torch.equal(te_merged[q], te_base[q])  # the text-encoder half of the LoRA applied too
    # A diffusers/peft-layout LoRA of the same change gives the same weights.
    peft = {
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": down,
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": up
        * alpha
        / down.shape[0],
    }
    peft_path = files["lora"].parent / "peft.safetensors"
    save_file(peft, str(peft_path))
    bundle = loading.load_bundle(str(files["folder"]), loras=((str(peft_path), 0.8),))
    torch.testing.assert_close(
        bundle.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight, expected
    )


def test_lora_for_another_model_is_refused(files, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(
        {
            "lora_unet_nowhere_to_q.lora_down.weight": torch.zeros(2, 4),
            "lora_unet_nowhere_to_q.lora_up.weight": torch.zeros(4, 2),
        },
        str(path),
    )
    with pytest.raises(InputError, match="not in this model"):
        loading.load_bundle(str(files["folder"]), loras=((str(path), 1.0),))


class _Trusted:
    """An object torch's tensor-only loader refuses (a class of ours): loading it needs code."""


def test_checkpoints_are_judged_by_content_not_by_suffix(files, tmp_path, components):
    # A plain state dict in a pickle container loads tensor-only, whatever its name says.
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(files["single"]))}, str(ckpt))
    bundle = loading.load_bundle(str(ckpt), config_dir=files["configs"])
    _same_weights(bundle.unet, components.unet)
    # One that names a class needs code: refused unless allowed.
    needs_code = tmp_path / "model.safetensors"  # the name does not make it safetensors
    torch.save({"state_dict": load_file(str(files["single"])), "callback": _Trusted()}, str(needs_code))
    with pytest.raises(InputError, match="--allow-pickle"):
        loading.load_bundle(str(needs_code), config_dir=files["configs"])
    bundle = loading.load_bundle(str(needs_code), config_dir=files["configs"], allow_pickle=True)
    _same_weights(bundle.unet, components.unet)
    with pytest.raises(InputError, match="does not exist"):
        loading.load_bundle(str(files["folder"]), loras=((str(tmp_path / "lora.pt"), 1.0),))


def test_missing_and_foreign_models_are_sentences(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        loading.load_bundle(str(tmp_path / "nothing.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no unet/"):
        loading.load_bundle(str(tmp_path / "empty"))
    bogus = tmp_path / "bogus.safetensors"
    save_file({"x": torch.zeros(1)}, str(bogus))
    with pytest.raises(InputError, match="not a single-file SD1.5 checkpoint"):
        loading.load_bundle(str(bogus))


def test_the_runtime_raises_its_own_errors_and_they_keep_exit_status_2(tmp_path):
    """engines/ raises the classes of engines/errors.py (it imports nothing from the filter); they are the
    filter's InputError and UsageError, so the command line still prints one line and exits with 2."""
    from rerender.engines.errors import EngineUsageError, ModelFileError
    from rerender.engines.flow import make_flow_estimator

    with pytest.raises(ModelFileError, match="does not exist") as caught:
        loading.load_bundle(str(tmp_path / "nothing.safetensors"))
    assert isinstance(caught.value, InputError) and caught.value.exit_status == 2
    with pytest.raises(EngineUsageError, match="--control expects") as caught:
        control.make_control("sketch")
    assert isinstance(caught.value, UsageError) and caught.value.exit_status == 2
    with pytest.raises(EngineUsageError, match="--flow expects"):
        make_flow_estimator("nonsense")


# --- control hints -----------------------------------------------------------------------------------------


def _frame() -> np.ndarray:
    image = np.zeros((64, 96, 3), np.uint8)
    cv2.rectangle(image, (20, 16), (70, 48), (200, 180, 40), -1)
    return image


def test_canny_defaults_to_50_100():
    hint = control.make_control("canny")(_frame(), 0)
    assert hint.shape == (64, 96, 3) and hint.dtype == np.uint8
    expected = cv2.Canny(_frame(), 50, 100)
    assert np.array_equal(hint[..., 0], expected) and hint[14:19, 40, 0].max() == 255
    assert control.make_control("canny:10,20").name == "canny:10,20"
    with pytest.raises(UsageError, match="canny:LOW,HIGH"):
        control.make_control("canny:ten")
    with pytest.raises(UsageError, match="--control expects"):
        control.make_control("sketch")


def test_hed_runs_user_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "hed.safetensors"
    save_file(control.HEDNetwork().state_dict(), str(path))
    hint = control.make_control(f"hed:{path}")(_frame(), 0)
    assert hint.shape == (64, 96, 3) and hint.dtype == np.uint8 and hint.std() > 0
    # ControlNet's annotator files are plain state dicts in a .pth: read tensor-only, no --allow-pickle.
    pth = tmp_path / "ControlNetHED.pth"
    torch.save(control.HEDNetwork().state_dict(), str(pth))
    assert control.make_control(f"hed:{pth}")(_frame(), 0).shape == (64, 96, 3)


def test_depth_runs_a_user_model_folder(tmp_path):
    import json

    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(0)
    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, image_size=32,
        patch_size=8, neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8, backbone_out_indices=[0, 1, 2, 3],
        head_hidden_size=8,
    )  # fmt: skip
    model = DPTForDepthEstimation(config).eval()
    with torch.no_grad():  # random weights end in a ReLU at zero; lift the last layer so depth varies
        last = model.head.head[-2]
        last.weight.normal_(0.0, 1.0)
        last.bias.fill_(2.0)
    model.save_pretrained(tmp_path / "dpt")
    (tmp_path / "dpt" / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    hint = control.make_control(f"depth:{tmp_path / 'dpt'}")(_frame(), 0)
    assert hint.shape == (64, 96, 3) and hint.dtype == np.uint8
    assert hint.min() == 0 and hint.max() == 255  # min-max normalised
    with pytest.raises(InputError, match="no config.json"):
        control.make_control(f"depth:{tmp_path}")


def test_control_video_gives_frame_i_for_keyframe_i(tmp_path):
    import av

    path = tmp_path / "control.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv444p"
        for i in range(5):
            image = np.full((32, 32, 3), 40 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv444p")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    video = control.make_control(f"video:{path}")
    assert abs(int(video(_frame(), 0)[0, 0, 0]) - 0) <= 3
    assert video(_frame(), 3).shape == (64, 96, 3) and abs(int(video(_frame(), 3)[0, 0, 0]) - 120) <= 3
    with pytest.raises(InputError, match="only 5 frames"):
        video(_frame(), 9)


# --- RAFT --------------------------------------------------------------------------------------------------


def test_raft_needs_a_weights_path():
    from rerender.engines import flow_raft

    with pytest.raises(UsageError, match="raft:/path"):
        flow_raft.make_estimator(None)


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here"
)
def test_raft_without_torchvision_is_a_sentence(tmp_path):
    from rerender.engines import flow_raft

    with pytest.raises(UsageError, match="torchvision"):
        flow_raft.make_estimator(str(tmp_path / "raft.pth"))


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
def test_raft_flow_follows_a_shift(tmp_path):
    from rerender.engines import flow_raft
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path / "raft_small.pth"
    torch.save(raft_small().state_dict(), str(path))
    estimator = flow_raft.make_estimator(str(path))
    image = _frame()
    flow = estimator.estimate(image, np.roll(image, 2, axis=1))
    assert flow.shape == (64, 96, 2) and flow.dtype == np.float32
