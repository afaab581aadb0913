"""The engine cache: the key holds everything that changes an engine; bad files are rebuilt, never loaded."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from rerender.engines.specs import SizeRange, unet_spec
from rerender.export.cache import EngineCache, EngineKey, atomic_write, profile_tuple
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
