"""ONNX export of every network of a tiny SD1.5-shaped bundle: checked graphs, spec names, dynamic axes."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_models
import torch
from rerender.engines.export_format import ExportManifest
from rerender.engines.loading import load_bundle
from rerender.engines.specs import SizeRange, vae_decoder_spec
from rerender.export.bundle import ExportPlan, export_bundle
from rerender.export.graphs import VaeDecoderGraph
from rerender.export.onnx_export import export_network, onnx_checksums

SIZES = SizeRange((64, 64), (64, 64), (128, 128))
NETWORKS = ["text_encoder", "vae_encoder", "vae_decoder", "unet", "controlnet_0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    components = tiny_models.build_components()
    return {
        "model": str(tiny_models.write_diffusers_folder(root / "model", components)),
        "controlnet": str(tiny_models.write_controlnet_folder(root / "controlnet", components)),
        "lora": str(tiny_models.write_lora(root / "style.safetensors", components)),
    }


def _export(sources, out, loras=(), precision="fp32"):
    bundle = load_bundle(sources["model"], loras=loras, controlnets=((sources["controlnet"], 0.7),))
    messages: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest, graphs = export_bundle(
            bundle,
            out,
            ExportPlan(SIZES, precision),
            model=sources["model"],
            loras=loras,
            controlnets=(sources["controlnet"],),
            progress=messages.append,
        )
    return manifest, graphs, messages


@pytest.fixture(scope="module")
def exported(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    manifest, graphs, messages = _export(sources, out)
    return out, manifest, graphs, messages


def test_every_network_is_exported_and_passes_the_checker(exported):
    out, manifest, graphs, messages = exported
    assert [g.name for g in graphs] == NETWORKS
    for g in graphs:
        onnx.checker.check_model(str(g.path), full_check=True)
        assert g.bytes == g.path.stat().st_size > 0
    # Progress names every network with its time and size.
    assert sum("s," in m and "MB" in m for m in messages) == len(NETWORKS)


def test_graph_io_follows_the_spec_with_dynamic_height_and_width(exported):
    out, manifest, graphs, _ = exported
    specs = manifest.specs()
    for g in graphs:
        model = onnx.load(str(g.path), load_external_data=False)
        spec = specs[g.name]
        assert [i.name for i in model.graph.input] == spec.input_names
        assert [o.name for o in model.graph.output] == spec.output_names
        for value, tensor in zip(model.graph.input, spec.inputs, strict=True):
            dims = value.type.tensor_type.shape.dim
            for dim, want in zip(dims, tensor.shape, strict=True):
                if isinstance(want, int):
                    assert dim.dim_value == want, (g.name, tensor.name)
                else:
                    assert dim.dim_param == want.name, (g.name, tensor.name)
    unet = onnx.load(str(out / "unet.onnx"), load_external_data=False)
    names = [i.name for i in unet.graph.input]
    assert "reference_mask" in names and sum(n.startswith("reference_state_") for n in names) == 9
    assert sum(n.startswith("down_residual_") for n in names) == 12
    assert sum(o.name.startswith("own_state_") for o in unet.graph.output) == 9


def test_manifest_records_sources_sizes_and_serves_without_the_model(exported, sources):
    out, manifest, _, _ = exported
    data = json.loads((out / "manifest.json").read_text())
    assert data["min_size"] == [64, 64] and data["max_size"] == [128, 128]
    assert data["precision"] == "fp32"
    assert (out / "tokenizer").is_dir()
    loaded = ExportManifest.load(out)
    assert loaded == manifest
    loaded.check_matches(manifest.model, (), manifest.controlnets)
    with pytest.raises(RuntimeError, match="LoRA set"):
        loaded.check_matches(manifest.model, ((sources["lora"], 1.0),), manifest.controlnets)


def test_lora_changes_weights_but_not_graph_structure(exported, sources, tmp_path):
    from rerender.export.bundle import TRACE_SIZE, network_modules

    out, _, _, _ = exported
    bundle = load_bundle(sources["model"], loras=((sources["lora"], 0.8),))
    modules = network_modules(bundle)
    for name in ("unet", "text_encoder"):  # the networks a LoRA touches (export/bundle.py LORA_NETWORKS)
        module, spec = modules[name]
        export_network(module, spec, tmp_path / f"{name}.onnx", TRACE_SIZE)
        base = onnx_checksums(out / f"{name}.onnx")
        merged = onnx_checksums(tmp_path / f"{name}.onnx")
        assert base[0] == merged[0], f"{name}: a LoRA must not change the graph (refit, not rebuild)"
        assert base[1] != merged[1], f"{name}: the merged LoRA must change the weights"


def _decoder():
    return VaeDecoderGraph(tiny_models.build_components().vae).eval()


def test_large_graph_weights_go_to_one_external_data_file(tmp_path):
    module = _decoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = export_network(
            module, vae_decoder_spec(), tmp_path / "dec.onnx", (64, 64), external_threshold=1000
        )
    data = tmp_path / "dec.onnx.data"
    assert data.is_file() and data.stat().st_size > 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dec.onnx", "dec.onnx.data"]
    assert graph.bytes == data.stat().st_size + (tmp_path / "dec.onnx").stat().st_size
    latent = torch.randn(1, 4, 16, 8)
    got = ort.InferenceSession(str(graph.path)).run(None, {"latent_sample": latent.numpy()})[0]
    with torch.no_grad():
        want = module(latent).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_fp16_graph_has_fp16_io_and_weights(tmp_path):
    module = _decoder().to(torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = export_network(module, vae_decoder_spec(), tmp_path / "dec16.onnx", (64, 64), "fp16")
    model = onnx.load(str(graph.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    conv_weights = [i for i in model.graph.initializer if len(i.dims) == 4]
    assert conv_weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_weights)
    latent = torch.randn(1, 4, 8, 16)
    got = ort.InferenceSession(str(graph.path)).run(None, {"latent_sample": latent.half().numpy()})[0]
    with torch.no_grad():
        want = _decoder()(latent).numpy()
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-2)


def test_sizes_must_be_multiples_of_64():
    with pytest.raises(ValueError, match="multiples of 64"):
        SizeRange((64, 64), (96, 64), (128, 128))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        SizeRange((128, 64), (64, 64), (128, 128))


def test_spec_shapes_follow_the_image_size(exported):
    _, manifest, _, _ = exported
    unet = manifest.specs()["unet"]
    shapes = unet.input_shapes(2, 128, 64)
    assert shapes["sample"] == (2, 4, 16, 8)
    assert shapes["reference_state_0"] == (2, 2 * 4 * 2, 32)  # stride-4 layer: (16/4)*(8/4) tokens, doubled
    assert unet.infer_dims(shapes) == (2, 128, 64)
    assert unet.output_shapes(2, 128, 64)["own_state_8"] == (2, 16 * 8, 16)
    profile = unet.profile(SIZES)
    assert profile["sample"] == ((1, 4, 8, 8), (2, 4, 8, 8), (2, 4, 16, 16))


def test_fp16_export_serves_the_contract_close_to_fp32_torch(sources, tmp_path):
    """--precision fp16: every graph loads in onnxruntime and stays close to the fp32 torch networks.

    The text encoder stays fp32 (engines/specs.py FP32_ONLY): traced in fp16, transformers' CLIP gives
    mixed-type LayerNormalization nodes that onnxruntime refuses to load.
    """
    from rerender.engines.onnx_backend import load_onnx_networks
    from rerender.engines.runtime import ReferenceStates, cross_frame_mask
    from rerender.engines.torch_backend import torch_networks

    manifest, _, _ = _export(sources, tmp_path, precision="fp16")
    specs = manifest.specs()
    assert specs["unet"].inputs[0].dtype == "float16" and specs["text_encoder"].outputs[0].dtype == "float32"
    unet = onnx.load(str(tmp_path / "unet.onnx"), load_external_data=False)
    assert unet.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    onnx_networks = load_onnx_networks(tmp_path, (0.7,), "cpu", threads=1)
    reference = torch_networks(
        load_bundle(sources["model"], controlnets=((sources["controlnet"], 0.7),)), "cpu"
    )
    g = torch.Generator().manual_seed(4)
    ids = reference.tokenize(["a cat", ""])
    sample, timestep = torch.randn(2, 4, 8, 16, generator=g), torch.tensor([500, 500])
    hint = torch.rand(2, 3, 64, 128, generator=g)
    layers = reference.unet.layers
    states = tuple(torch.randn(2, 2 * layer.tokens(8, 16), layer.channels, generator=g) for layer in layers)
    refs = ReferenceStates(states, cross_frame_mask(layers, "loose"))

    def run(networks):
        embeddings = networks.text_encoder(ids)
        control = networks.controlnets[0][0](sample, timestep, embeddings, hint, torch.tensor([0.7]))
        noise, _ = networks.unet(sample, timestep, embeddings, control, refs)
        return embeddings, noise, networks.vae_decoder(sample[:1])

    with torch.no_grad():
        for got, want in zip(run(onnx_networks), run(reference), strict=True):
            assert got.dtype == torch.float32
            scale = want.abs().max().item()
            assert (got - want).abs().max().item() < 2e-2 * max(scale, 1.0)
