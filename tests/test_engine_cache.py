"""The engine cache: the key holds everything that changes an engine; bad files are rebuilt, never loaded."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from rerender.engines.errors import BackendUnavailable
from rerender.engines.export_format import (
    ENGINE_DIR,
    ENGINE_INDEX,
    EngineKey,
    EngineTarget,
    atomic_write,
    profile_tuple,
    read_engine_index,
    record_engines,
    recorded_engines,
)
from rerender.engines.specs import SizeRange, unet_spec
from rerender.export.cache import EngineCache
from tiny_models import UNET_CONFIG


def _key(**changes) -> EngineKey:
    from rerender.engines.runtime import up_self_attention_layers

    spec = unet_spec(UNET_CONFIG, up_self_attention_layers(UNET_CONFIG), 32)
    key = EngineKey(
        network="unet",
        profile=profile_tuple(spec.profile(SizeRange((64, 64), (64, 64), (128, 128)))),
        precision="fp16",
        trt_version="10.13.0",
        gpu_name="NVIDIA GeForce RTX 4090",
        compute_capability=(8, 9),
        onnx_structure_sha256="a" * 64,
        onnx_weights_sha256="b" * 64,
        loras=(("style.safetensors", 0.8),),
        refittable=True,
    )
    return dataclasses.replace(key, **changes)


def _other_profile() -> tuple:
    from rerender.engines.runtime import up_self_attention_layers

    spec = unet_spec(UNET_CONFIG, up_self_attention_layers(UNET_CONFIG), 32)
    return profile_tuple(spec.profile(SizeRange((64, 64), (64, 64), (192, 128))))


CHANGES = {
    "profile": _other_profile,
    "precision": lambda: "fp32",
    "trt_version": lambda: "11.0.0",
    "gpu_name": lambda: "NVIDIA A100-SXM4-80GB",
    "compute_capability": lambda: (8, 0),
    "onnx_structure_sha256": lambda: "c" * 64,
    "onnx_weights_sha256": lambda: "d" * 64,
    "loras": lambda: (("style.safetensors", 0.6),),
    "refittable": lambda: False,
    "network": lambda: "controlnet_0",
}


def test_every_key_field_is_tested():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(EngineKey)}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_changing_any_component_changes_the_key_and_the_path(field, tmp_path):
    base, changed = _key(), _key(**{field: CHANGES[field]()})
    assert base.digest != changed.digest
    cache = EngineCache(tmp_path)
    assert cache.path_for(base) != cache.path_for(changed)


def test_structure_digest_ignores_weights_and_lora_only():
    base = _key()
    assert base.structure_digest == _key(onnx_weights_sha256="e" * 64, loras=()).structure_digest
    for field in (
        "profile",
        "precision",
        "trt_version",
        "gpu_name",
        "compute_capability",
        "onnx_structure_sha256",
    ):
        assert base.structure_digest != _key(**{field: CHANGES[field]()}).structure_digest, field


def test_key_is_stable_across_processes():
    # The digest is a sha256 of sorted JSON, not Python's salted hash(): same key, same file, next run.
    assert _key().digest == _key().digest
    assert len(_key().digest) == 64


class Builder:
    """A build function that produces distinct bytes per call and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return f"engine build {self.calls} ".encode() * 200


def test_second_lookup_loads_without_building(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    first = cache.get_or_build(_key(), build)
    second = cache.get_or_build(_key(), build)
    assert first.built and not second.built
    assert build.calls == 1
    assert second.path.read_bytes() == first.path.read_bytes()
    meta = json.loads(first.path.with_suffix(".json").read_text())
    assert meta["key"]["gpu_name"] == "NVIDIA GeForce RTX 4090"


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar", "empty"])
def test_damaged_engine_is_rebuilt_not_loaded(tmp_path, damage):
    cache, build = EngineCache(tmp_path), Builder()
    path = cache.get_or_build(_key(), build).path
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "no_sidecar":
        path.with_suffix(".json").unlink()
    else:
        path.write_bytes(b"")
    again = cache.get_or_build(_key(), build)
    assert again.built and build.calls == 2
    assert again.path.read_bytes() == b"engine build 2 " * 200


def test_failed_build_leaves_no_engine(tmp_path):
    cache = EngineCache(tmp_path)

    def failing() -> bytes:
        raise RuntimeError("builder ran out of memory")

    with pytest.raises(RuntimeError):
        cache.get_or_build(_key(), failing)
    assert list(tmp_path.iterdir()) == []
    assert cache.lookup(_key()) is None


def test_atomic_write_never_exposes_a_partial_file(tmp_path):
    target = tmp_path / "engine.plan"
    atomic_write(target, b"old")

    # A write that fails half-way (here: not bytes-like) leaves the old file and no temporary behind.
    with pytest.raises(TypeError):
        atomic_write(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["engine.plan"]


def test_lora_change_refits_a_structurally_equal_engine(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    base = cache.get_or_build(_key(), build)
    refits = []

    def refit(donor):
        refits.append(donor)
        return donor.read_bytes() + b" refitted"

    other_lora = _key(onnx_weights_sha256="f" * 64, loras=(("other.safetensors", 1.0),))
    result = cache.get_or_build(other_lora, build, refit=refit)
    assert build.calls == 1 and refits == [base.path]
    assert result.refitted_from == base.path and result.path != base.path
    assert result.path.read_bytes().endswith(b" refitted")
    # A non-refittable engine is never a donor: a different LoRA set means a rebuild.
    fixed = _key(refittable=False)
    cache.get_or_build(fixed, build)
    calls = build.calls
    cache.get_or_build(dataclasses.replace(fixed, loras=()), build, refit=refit)
    assert build.calls == calls + 1 and len(refits) == 1


# --- engines.json: written by the exporter, read by the runtime and `rerender info`, one format ---------------


def _manifest(graphs=("unet", "vae_decoder")):
    from rerender.engines.export_format import ExportManifest

    return ExportManifest(
        model="m",
        loras=(),
        controlnets=(),
        precision="fp16",
        min_size=(64, 64),
        opt_size=(64, 64),
        max_size=(128, 128),
        unet_config=dict(UNET_CONFIG),
        hidden_size=32,
        scaling_factor=0.18215,
        schedule={},
        graphs={name: f"{name}.onnx" for name in graphs},
    )


def _engines(folder, target, networks=("unet", "vae_decoder")) -> dict:
    cache = EngineCache(folder / ENGINE_DIR)
    paths = {}
    for net in networks:
        key = _key(network=net, trt_version=target.trt_version, gpu_name=target.gpu_name)
        paths[net] = cache.store(
            dataclasses.replace(key, compute_capability=target.compute_capability), net.encode()
        )
    record_engines(folder, target, paths)
    return paths


def test_the_engine_index_is_written_and_read_through_one_format(tmp_path):
    ada = EngineTarget("10.13.0", "NVIDIA GeForce RTX 4090", (8, 9))
    ampere = EngineTarget("10.13.0", "NVIDIA A100-SXM4-80GB", (8, 0))
    assert EngineTarget.parse(ada.key) == ada and ada.key == "10.13.0|NVIDIA GeForce RTX 4090|8.9"
    first = _engines(tmp_path, ada)
    second = _engines(tmp_path, ampere)
    index = read_engine_index(tmp_path)
    assert set(index) == {ada, ampere}  # a second GPU's set is added, the first one kept
    assert recorded_engines(tmp_path, _manifest(), ada) == first
    assert recorded_engines(tmp_path, _manifest(), ampere) == second
    with pytest.raises(
        BackendUnavailable, match=r"no engines in .* for NVIDIA H100 \(sm 90\) with TensorRT 10.13.0"
    ):
        recorded_engines(tmp_path, _manifest(), EngineTarget("10.13.0", "NVIDIA H100", (9, 0)))
    first["unet"].write_bytes(b"trunc")  # damaged after the build: never handed to TensorRT
    with pytest.raises(BackendUnavailable, match=r"engines for \['unet'\] .* missing or damaged"):
        recorded_engines(tmp_path, _manifest(), ada)
    with pytest.raises(BackendUnavailable, match="has ONNX graphs but no engines"):
        recorded_engines(tmp_path / "empty", _manifest(), ada)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_an_index_entry_that_leads_out_of_the_engines_folder_is_never_served(tmp_path, where):
    from rerender.export.listing import describe_engines

    target = EngineTarget("10.13.0", "NVIDIA GeForce RTX 4090", (8, 9))
    folder = tmp_path / "export"
    paths = _engines(folder, target)
    # An intact engine with its sidecar, outside the folder's engines/.
    outside = EngineCache(tmp_path / "elsewhere").store(_key(network="unet"), b"someone else's engine")
    entry = {"vae_decoder": str(paths["vae_decoder"].relative_to(folder))}
    if where == "parent":
        entry["unet"] = "engines/../../elsewhere/" + outside.name
    elif where == "absolute":
        entry["unet"] = str(outside)
    else:
        link = folder / ENGINE_DIR / "link.plan"
        link.symlink_to(outside)
        link.with_suffix(".json").symlink_to(outside.with_suffix(".json"))
        entry["unet"] = "engines/link.plan"
    (folder / ENGINE_INDEX).write_text(json.dumps({target.key: entry}))
    _manifest().save(folder)
    with pytest.raises(BackendUnavailable, match=r"engines for \['unet'\] .* missing or damaged"):
        recorded_engines(folder, _manifest(), target)
    (row,) = [r for r in describe_engines(folder) if r[0].startswith("tensorrt ")]
    assert row[1] == "unavailable" and "engines ['unet'] are missing or damaged" in row[2]


@pytest.mark.parametrize(
    "index",
    ["[]", "{", '{"10.13.0|gpu": {}}', '{"10.13.0|gpu|8.x": {}}', '{"10.13.0|gpu|8.9": {"unet": 3}}'],
)
def test_an_engine_index_this_format_never_writes_is_one_sentence(tmp_path, index):
    from rerender.export.listing import describe_engines

    (tmp_path / ENGINE_INDEX).write_text(index)
    with pytest.raises(
        BackendUnavailable, match=r"engines.json cannot be read \(.*\); re-run `rerender export"
    ):
        read_engine_index(tmp_path)
    # `rerender info --engines` shows it as a row and never raises.
    _manifest().save(tmp_path)
    rows = describe_engines(tmp_path)
    assert ("tensorrt engines", "error") == rows[-1][:2] and "cannot be read" in rows[-1][2]
