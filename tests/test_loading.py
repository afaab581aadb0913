"""What a user with real weights hits first: `--vae`, a model folder's own tokenizer, scheduler configs the
sampler cannot follow, the ControlNet defaults, and the diffusion flags' help and ranges — with tiny models."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
import tiny_models
import torch
from rerender.engines import loading
from rerender.engines.tokenizer import clip_tokenizer, folder_tokenizer, make_tokenize
from rerender.filter.errors import InputError, UsageError
from rerender.filter.renderers import diffusion_options
from safetensors.torch import load_file, save_file

pytestmark = [
    pytest.mark.skipif(tiny_models.TOKENIZER_MISSING is not None, reason=str(tiny_models.TOKENIZER_MISSING)),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("loading")
    c = tiny_models.build_components()
    other = tiny_models.build_components(seed=11)  # a second VAE with other weights
    return {
        "root": root,
        "components": c,
        "other_vae": other.vae,
        "folder": tiny_models.write_diffusers_folder(root / "sd", c),
        "configs": tiny_models.write_config_folder(root / "configs"),
        "no_vae": tiny_models.write_single_file(root / "no-vae.safetensors", c, with_vae=False),
    }


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key)


# --- --vae ------------------------------------------------------------------------------------------------


def test_single_file_without_vae_names_the_vae_flag(files):
    with pytest.raises(InputError) as caught:
        loading.load_bundle(str(files["no_vae"]), config_dir=files["configs"])
    assert "--vae" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("layout", ["ldm", "ldm-prefixed", "diffusers", "folder", "model-folder"])
def test_vae_replaces_the_models_own(files, layout, tmp_path):
    other = files["other_vae"]
    if layout == "folder":
        spec = tmp_path / "vae"
        other.save_pretrained(spec)
    elif layout == "model-folder":  # a whole diffusers model folder: its vae/ is used
        spec = tmp_path / "model"
        other.save_pretrained(spec / "vae")
    else:
        spec = tiny_models.write_vae_file(tmp_path / f"vae-{layout}.bin", other, layout)  # content decides
    bundle = loading.load_bundle(str(files["no_vae"]), config_dir=files["configs"], vae=str(spec))
    _same(bundle.vae, other)
    _same(bundle.unet, files["components"].unet)
    bundle = loading.load_bundle(str(files["folder"]), vae=str(spec))  # a folder model's VAE too
    _same(bundle.vae, other)


def test_vae_of_another_layout_is_a_sentence(files, tmp_path):
    bogus = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(3, 3, 3, 3)}, str(bogus))
    with pytest.raises(InputError, match="--vae .* is not a VAE of the layout"):
        loading.load_bundle(str(files["folder"]), vae=str(bogus))
    with pytest.raises(InputError, match="--vae .* does not exist"):
        loading.load_bundle(str(files["folder"]), vae=str(tmp_path / "none.safetensors"))


# --- tokenizer -----------------------------------------------------------------------------------------------


def _folder_with_tokenizer(files, folder, tokenizer, vocab_size: int):
    """A copy of the tiny model whose tokenizer/ holds only tokenizer.json (none if `tokenizer` is None),
    with a text encoder of `vocab_size` embeddings."""
    from transformers import CLIPTextConfig, CLIPTextModel

    shutil.copytree(files["folder"], folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder / "tokenizer")
        for extra in (folder / "tokenizer").iterdir():
            if extra.name != "tokenizer.json":
                extra.unlink()
    shutil.rmtree(folder / "text_encoder")
    torch.manual_seed(3)
    config = dict(tiny_models.TEXT_ENCODER_CONFIG, vocab_size=vocab_size)
    CLIPTextModel(CLIPTextConfig(**config)).save_pretrained(folder / "text_encoder")
    return folder


def test_a_folders_tokenizer_json_is_used(files, tmp_path):
    tokenizer = clip_tokenizer()
    tokenizer.add_tokens(["<sks-style>"])  # a textual-inversion token: id 49408, past CLIP's 49408 tokens
    folder = _folder_with_tokenizer(files, tmp_path / "sd", tokenizer, vocab_size=49409)
    assert sorted(p.name for p in (folder / "tokenizer").iterdir()) == ["tokenizer.json"]
    bundle = loading.load_bundle(str(folder))
    ids = make_tokenize(bundle.tokenizer)(["a cat, <sks-style>"])
    assert ids[0, :5].tolist() == [49406, 320, 2368, 267, 49408]  # the folder's token, not BPE pieces
    assert bundle.text_encoder(ids)[0].shape == (1, 77, 32)


def test_token_ids_past_the_text_encoders_vocabulary_are_refused(files, tmp_path):
    tokenizer = clip_tokenizer()
    tokenizer.add_tokens(["<sks-style>"])
    folder = _folder_with_tokenizer(files, tmp_path / "sd", tokenizer, vocab_size=49408)
    with pytest.raises(InputError) as caught:
        loading.load_bundle(str(folder))
    message = str(caught.value)
    assert "49409 tokens" in message and "49408 embeddings" in message and "\n" not in message
    # No tokenizer/ folder and a smaller text encoder: the built-in tokenizer does not fit either.
    small = _folder_with_tokenizer(files, tmp_path / "small", None, vocab_size=1000)
    with pytest.raises(InputError, match="built-in SD1.5 CLIP tokenizer has 49408 tokens"):
        loading.load_bundle(str(small))


def test_vocab_and_merges_form_gives_the_standard_ids(tmp_path):
    from rerender.engines import tokenizer as tok

    vocab, merges = tok._vocab_and_merges(str(tok.bpe_table_path()))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    own = folder_tokenizer(tmp_path)
    assert own("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    with pytest.raises(InputError, match="holds no tokenizer"):
        folder_tokenizer(tmp_path / "nothing")


FLOOR_CHECK = """
import transformers
from rerender.engines.tokenizer import clip_tokenizer, make_tokenize
t = clip_tokenizer()
assert t("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
assert make_tokenize(t)(["a cat"]).shape == (1, 77)
print(transformers.__version__)
"""


@pytest.mark.skipif(
    not os.environ.get("RERENDER_TRANSFORMERS_FLOOR_PYTHON"),
    reason="set RERENDER_TRANSFORMERS_FLOOR_PYTHON to a Python with the oldest transformers pyproject allows",
)
def test_offline_tokenizer_on_the_transformers_floor():
    # The tokenizer is built only through CLIPTokenizerFast.from_pretrained on vocab.json + merges.txt,
    # which transformers 4.x and 5.x both read; this runs it on the floor version when one is at hand.
    python = os.environ["RERENDER_TRANSFORMERS_FLOOR_PYTHON"]
    result = subprocess.run([python, "-c", FLOOR_CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("4.")


# --- scheduler -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prediction_type": "v_prediction"}, "prediction_type 'v_prediction'"),
        ({"prediction_type": "sample"}, "prediction_type 'sample'"),
        ({"timestep_spacing": "trailing"}, "timestep_spacing 'trailing'"),
        ({"timestep_spacing": "linspace"}, "timestep_spacing 'linspace'"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule 'squaredcos_cap_v2'"),
        ({"num_train_timesteps": 10}, "num_train_timesteps 10"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start < beta_end"),
        ({"steps_offset": 500}, "steps_offset 500"),
    ],
)
def test_scheduler_configs_we_cannot_follow_are_refused(change, message):
    config = dict(tiny_models.SCHEDULER_CONFIG, **change)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        loading.schedule_from_config(config, "--model m: scheduler_config.json")


def test_v_prediction_folder_is_refused_before_any_render(files, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(files["folder"], folder)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(dict(tiny_models.SCHEDULER_CONFIG, prediction_type="v_prediction")))
    with pytest.raises(InputError, match="v_prediction"):
        loading.load_bundle(str(folder))
    # SD1.5's own settings (and configs without the keys) pass.
    config = loading.schedule_from_config(dict(tiny_models.SCHEDULER_CONFIG), "x")
    assert config.steps_offset == 1 and config.beta_schedule == "scaled_linear"
    assert loading.schedule_from_config({"_class_name": "PNDMScheduler"}, "x") == loading.ScheduleConfig()


# --- options: ControlNet defaults, help, ranges ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerender run")
    diffusion_options.add_arguments(parser)
    return parser


def _options(*argv: str) -> diffusion_options.DiffusionOptions:
    return diffusion_options.from_args(_parser().parse_args(["--model", "m", *argv]))


def test_controlnet_defaults_and_one_control_per_controlnet():
    opts = _options("--controlnet", "cn")
    assert opts.controlnets == (("cn", 0.7),)  # the authors' example configs' conditioning scale
    assert opts.control_specs() == ("canny",) and opts.notes() == ()
    opts = _options("--controlnet", "a", "--controlnet", "b:1.2", "--control", "canny:10,20")
    assert opts.controlnets == (("a", 0.7), ("b", 1.2))
    assert opts.control_specs() == ("canny:10,20", "canny:10,20")  # one spec for all
    opts = _options("--controlnet", "a", "--controlnet", "b", "--control", "canny", "--control", "depth:d")
    assert opts.control_specs() == ("canny", "depth:d")  # one per ControlNet, in order
    with pytest.raises(UsageError, match="--control was given 3 times for 2 --controlnet"):
        _options("--controlnet", "a", "--controlnet", "b", *["--control", "canny"] * 3)
    with pytest.raises(UsageError, match="--control hed:w needs a ControlNet"):
        _options("--control", "hed:w")
    (note,) = _options().notes()
    assert "no --controlnet" in note and "drift" in note


def test_every_diffusion_option_shows_its_default_in_help():
    parser = _parser()
    group = next(g for g in parser._action_groups if g.title.startswith("diffusion renderer"))
    formatter = parser._get_formatter()
    for action in group._group_actions:
        text = formatter._expand_help(action) if action.help else ""
        if action.dest == "model":
            assert "required" in text
            continue
        assert "default" in text, f"{action.option_strings[0]} shows no default: {text!r}"
    help_text = " ".join(parser.format_help().split())
    assert "(default: 20)" in help_text and "(default: 0.75)" in help_text and "(default: 7.5)" in help_text


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "501"], "--steps"),
        (["--strength", "0"], "--strength"),
        (["--strength", "nan"], "--strength"),
        (["--cfg-scale", "inf"], "--cfg-scale"),
        (["--cfg-scale", "31"], "--cfg-scale"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**32)], "--seed"),
        (["--mask-strength", "1.5"], "--mask-strength"),
        (["--inner-strength", "-0.1"], "--inner-strength"),
        (["--fidelity-threshold", "3"], "--fidelity-threshold"),
        (["--shape-fusion", "0.5,0.2"], "--shape-fusion"),
        (["--adain", "0,1e9"], "--adain"),
        (["--freeu", "9,1,1,1"], "--freeu B1"),
        (["--freeu", "1,1,1,nan"], "--freeu S2"),
        (["--controlnet", "cn:3"], "--controlnet cn: SCALE"),
        (["--controlnet", "cn:-0.5"], "--controlnet cn: SCALE"),
        (["--lora", "l.safetensors:1e20"], "--lora l.safetensors: SCALE"),
        (["--device", "gpu0"], "--device"),
        (["--vae", "v", "--engines", "e"], "--vae"),
    ],
)
def test_numeric_options_are_range_checked_with_a_sentence(argv, flag):
    with pytest.raises(UsageError) as caught:
        _options(*argv)
    message = str(caught.value)
    assert message.startswith(flag) and "\n" not in message, message


def test_run_help_lists_the_new_flags():
    rerender = os.path.join(os.path.dirname(sys.executable), "rerender")
    result = subprocess.run([rerender, "run", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--vae PATH", "--direct-image", "--control SPEC", "default scale: 0.7"):
        assert flag in result.stdout


def test_lora_and_controlnet_scales_from_state_dicts_load(files, tmp_path):
    # A LoRA in a plain .pt container is read tensor-only, no --allow-pickle needed.
    lora = tiny_models.write_lora(tmp_path / "lora.safetensors", files["components"])
    pt = tmp_path / "lora.pt"
    torch.save(load_file(str(lora)), str(pt))
    a = loading.load_bundle(str(files["folder"]), loras=((str(lora), 0.8),))
    b = loading.load_bundle(str(files["folder"]), loras=((str(pt), 0.8),))
    _same(a.unet, b.unet)
