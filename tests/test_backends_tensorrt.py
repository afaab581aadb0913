"""TensorRT: engine build from the exported graphs, cache reuse/rebuild/refit, and parity with onnxruntime.

Every test here needs an NVIDIA GPU and the tensorrt package (`gpu` marker: skipped with the reason
elsewhere). On CPU-only machines `test_tensorrt_reason_without_gpu` checks the reason sentence instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tiny_models
import torch
from rerender.engines.loading import load_bundle
from rerender.engines.onnx_backend import ExportManifest, load_onnx_networks
from rerender.engines.runtime import ReferenceStates, cross_frame_mask
from rerender.engines.specs import Dim, NetworkSpec, SizeRange, TensorSpec
from rerender.engines.tensorrt_backend import TensorRTEngine, tensorrt_unavailable_reason
from rerender.export.bundle import ExportPlan, export_bundle
from rerender.export.cache import EngineCache

SIZES = SizeRange((64, 64), (64, 64), (128, 128))


def test_tensorrt_reason_without_gpu():
    reason = tensorrt_unavailable_reason()
    if torch.cuda.is_available() and reason is None:
        pytest.skip("TensorRT can serve here")
    assert reason.startswith("TensorRT: ")
    assert "not installed" in reason or "no CUDA device" in reason


def _export(root, out, loras=(), precision="fp32"):
    components = tiny_models.build_components()
    model = tiny_models.write_diffusers_folder(root / "model", components)
    controlnet = tiny_models.write_controlnet_folder(root / "controlnet", components)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest, _ = export_bundle(
            load_bundle(str(model), loras=loras, controlnets=((str(controlnet), 0.7),)),
            out,
            ExportPlan(SIZES, precision),
            model=str(model),
            loras=loras,
            controlnets=(str(controlnet),),
            progress=lambda _: None,
        )
    return manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    from rerender.export.bundle import build_engines

    root = tmp_path_factory.mktemp("trt")
    out = root / "export"
    manifest = _export(root, out)
    messages: list[str] = []
    paths = build_engines(out, manifest, device=torch.device("cuda"), progress=messages.append)
    return root, out, manifest, paths, messages


@pytest.mark.gpu
def test_build_then_reuse_from_cache(built):
    from rerender.export.bundle import build_engines

    _, out, manifest, paths, messages = built
    assert sum(": built in " in m for m in messages) == len(manifest.graphs)
    again: list[str] = []
    assert build_engines(out, manifest, device=torch.device("cuda"), progress=again.append) == paths
    assert sum(": cached in " in m for m in again) == len(manifest.graphs)
    assert (out / "engines.json").is_file()
    assert list((out / "engines").glob("timing-*.cache"))


@pytest.mark.gpu
def test_truncated_engine_is_rebuilt(built):
    from rerender.export.bundle import build_engines

    _, out, manifest, paths, _ = built
    data = paths["vae_decoder"].read_bytes()
    paths["vae_decoder"].write_bytes(data[: len(data) // 3])
    messages: list[str] = []
    build_engines(out, manifest, device=torch.device("cuda"), progress=messages.append)
    assert any("vae_decoder: built" in m for m in messages)
    assert EngineCache(out / "engines").valid(paths["vae_decoder"])


@pytest.mark.gpu
@pytest.mark.parametrize("size", [(64, 64), (128, 64)])
def test_tensorrt_matches_onnxruntime(built, size):
    from rerender.engines.tensorrt_backend import load_tensorrt_networks

    _, out, _, _, _ = built
    trt_networks, session = load_tensorrt_networks(out, (0.7,), "cuda")
    ort_networks = load_onnx_networks(out, (0.7,), "cpu")
    try:
        g = torch.Generator().manual_seed(0)
        h, w = size[0] // 8, size[1] // 8
        sample = torch.randn(2, 4, h, w, generator=g)
        timestep = torch.tensor([501.0, 501.0])
        embeddings = torch.randn(2, 77, 32, generator=g)
        hint = torch.rand(2, 3, *size, generator=g)
        layers = ort_networks.unet.layers
        states = tuple(
            torch.randn(2, 2 * layer.tokens(h, w), layer.channels, generator=g) for layer in layers
        )
        refs = ReferenceStates(states, cross_frame_mask(layers, "loose"))

        def run(networks, device):
            def on(t):
                return t.to(device)

            control = networks.controlnets[0][0](
                on(sample), on(timestep), on(embeddings), on(hint), on(torch.tensor([0.7]))
            )
            refs_on = ReferenceStates(tuple(on(s) for s in refs.states), on(refs.mask))
            noise, own = networks.unet(on(sample), on(timestep), on(embeddings), control, refs_on)
            image = networks.vae_decoder(on(sample))
            return [noise, *own, image]

        want = run(ort_networks, "cpu")
        got = run(trt_networks, "cuda")
        torch.cuda.synchronize()
        for a, b in zip(got, want, strict=True):
            assert (a.float().cpu() - b).abs().max().item() < 1e-2  # TF32 kernels are allowed in fp32 engines
        # Outside the profile: a sentence, not a crash.
        with pytest.raises(ValueError, match="outside the engine's profile"):
            trt_networks.vae_decoder(torch.randn(1, 4, 32, 8, device="cuda"))
    finally:
        session.unload()


@pytest.mark.gpu
def test_lora_change_refits_instead_of_rebuilding(built):
    from rerender.export.bundle import build_engines

    root, out, _, _, _ = built
    lora = tiny_models.write_lora(root / "style.safetensors")
    manifest = _export(root, out, loras=((str(lora), 0.8),))
    messages: list[str] = []
    build_engines(out, manifest, device=torch.device("cuda"), progress=messages.append)
    assert any("unet: refitted" in m for m in messages)
    assert any("text_encoder: refitted" in m for m in messages)
    assert any("vae_decoder: cached" in m for m in messages)
    assert ExportManifest.load(out).loras[0][1] == 0.8


@pytest.mark.gpu
def test_fp16_engines_build_from_fp16_graphs(tmp_path):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    from rerender.engines.tensorrt_backend import load_tensorrt_networks
    from rerender.export.bundle import build_engines

    manifest = _export(tmp_path, tmp_path / "export", precision="fp16")
    build_engines(tmp_path / "export", manifest, device=torch.device("cuda"), progress=lambda _: None)
    networks, session = load_tensorrt_networks(tmp_path / "export", (0.7,), "cuda")
    try:
        assert networks.dtype == torch.float16
        image = networks.vae_decoder(torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float16))
        assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    finally:
        session.unload()


# --- the TensorRT runtime without a GPU ---------------------------------------------------------------------
# TensorRTEngine.run is exercised on CPU tensors with two stand-ins for what only a GPU provides: a recording
# stand-in of CudaStreams (torch CUDA streams and events) that logs the order of stream operations, and a
# stand-in of TensorRT's execution context that computes y = 2x + 1 and own_state_0 = 3x by reading and
# writing the memory at the addresses it was given. The ordering is checked by structure (the logged order),
# not by timing; on a GPU, bench/gpu_check.py runs the real engines.


class RecordingStreams:
    """CPU stand-in of tensorrt_backend.CudaStreams: streams are names, operations are logged in order."""

    def __init__(self, log, snapshot=lambda: None):
        self.log, self.snapshot = log, snapshot
        self.caller, self.capturing = "caller", None

    def current(self):
        return self.caller

    def new_stream(self):
        return "engine"

    def after(self, waiter, producer):
        self.log.append(("wait", waiter, producer, self.snapshot()))

    @contextlib.contextmanager
    def on(self, stream):
        self.log.append(("enter", stream))
        yield
        self.log.append(("exit", stream))

    def handle(self, stream):
        return {"caller": 0, "engine": 7}[stream]

    def record(self, tensor, stream):
        self.log.append(("record", tensor.data_ptr(), stream))

    def new_graph(self):
        return RecordedGraph(self.log)

    @contextlib.contextmanager
    def capture(self, graph, stream):
        self.capturing = graph
        self.log.append(("capture", stream))
        yield
        self.capturing = None


class RecordedGraph:
    def __init__(self, log):
        self.log, self.work = log, []

    def replay(self):
        self.log.append(("replay",))
        for work in self.work:
            work()


class StandInContext:
    """Stand-in of a TensorRT execution context for inputs x [n] float32 -> y = 2x + 1, own_state_0 = 3x."""

    def __init__(self, log, streams):
        self.log, self.streams, self.addresses, self.shape = log, streams, {}, None

    def set_input_shape(self, name, shape):
        self.shape = shape
        return len(shape) == 1 and shape[0] <= 64

    def get_tensor_shape(self, name):
        return self.shape

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def _view(self, name):
        n = self.shape[0]
        return torch.from_numpy(
            np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses[name]))
        )

    def execute_async_v3(self, handle):
        addresses = dict(self.addresses)

        def work():
            saved, self.addresses = self.addresses, addresses
            x = self._view("x").clone()
            self._view("y").copy_(2 * x + 1)
            self._view("own_state_0").copy_(3 * x)
            self.addresses = saved

        if self.streams.capturing is not None:
            self.streams.capturing.work.append(work)
        else:
            self.log.append(("execute", handle))
            work()
        return True


def _engine(cuda_graph=False):
    spec = NetworkSpec(
        "standin",
        (TensorSpec("x", "float32", (Dim("batch"),)),),
        (TensorSpec("y", "float32", (Dim("batch"),)), TensorSpec("own_state_0", "float32", (Dim("batch"),))),
    )
    engine = TensorRTEngine(spec, Path("standin.plan"), torch.device("cpu"), cuda_graph=cuda_graph)
    log = []
    streams = RecordingStreams(
        log, snapshot=lambda: [io.inputs["x"].tolist() for io in engine._shapes.values()]
    )
    context = StandInContext(log, streams)
    engine.attach(context, {"x": torch.float32}, {"y": torch.float32, "own_state_0": torch.float32}, streams)
    return engine, log


def test_engine_runs_on_its_own_stream_in_event_order():
    engine, log = _engine()
    assert engine.stream == "engine"  # a dedicated stream, not the caller's (or the legacy default) stream
    x = torch.arange(4, dtype=torch.float64)  # needs a conversion to the engine's float32
    out = engine.run({"x": x})
    assert torch.equal(out["y"], 2 * x.float() + 1) and torch.equal(out["own_state_0"], 3 * x.float())
    kinds = [e[0] for e in log]
    first_wait, execute, last_wait = (
        kinds.index("wait"),
        kinds.index("execute"),
        len(kinds) - 1 - kinds[::-1].index("wait"),
    )
    # inputs converted (on the caller's stream) -> engine stream waits -> engine -> caller waits -> outputs used
    assert log[first_wait][1:3] == ("engine", "caller") and log[first_wait][3] == [[0.0, 1.0, 2.0, 3.0]]
    assert first_wait < execute < last_wait and log[last_wait][1:3] == ("caller", "engine")
    assert log[execute][1] == 7  # enqueued with the engine stream's handle
    enter = max(i for i, e in enumerate(log[:execute]) if e[0] == "enter")
    assert log[enter] == ("enter", "engine")
    # every tensor that crosses streams is record_stream-ed on the stream that uses it
    recorded = {(e[1], e[2]) for e in log if e[0] == "record"}
    assert (engine._shapes[((4,),)].inputs["x"].data_ptr(), "engine") in recorded
    assert {(t.data_ptr(), "caller") for t in out.values()} <= recorded


def test_io_buffers_are_allocated_once_per_shape_and_kept_states_are_fresh():
    engine, _ = _engine()
    a = engine.run({"x": torch.ones(8)})
    y_first, state_first = a["y"].data_ptr(), a["own_state_0"].clone()
    b = engine.run({"x": torch.full((8,), 2.0)})
    assert b["y"].data_ptr() == y_first  # reused buffer: valid until the next run
    assert a["own_state_0"].data_ptr() != b["own_state_0"].data_ptr()  # the caller keeps states
    assert torch.equal(a["own_state_0"], state_first) and torch.equal(b["own_state_0"], torch.full((8,), 6.0))
    engine.run({"x": torch.ones(16)})
    engine.run({"x": torch.ones(32)})
    assert len(engine._shapes) == TensorRTEngine.SHAPES_KEPT  # bounded, oldest shape dropped
    with pytest.raises(ValueError, match="outside the engine's profile"):
        engine.run({"x": torch.ones(65)})


def test_cuda_graph_flag_captures_once_per_shape_then_replays():
    engine, log = _engine(cuda_graph=True)
    outs = [engine.run({"x": torch.full((4,), float(i))}) for i in range(3)]
    kinds = [e[0] for e in log]
    assert kinds.count("execute") == 1 and kinds.count("capture") == 1 and kinds.count("replay") == 2
    for i, out in enumerate(outs[1:], start=1):
        assert torch.equal(
            out["own_state_0"], torch.full((4,), 3.0 * i)
        )  # kept states copied out of the graph
    assert torch.equal(outs[2]["y"], torch.full((4,), 5.0))


def test_engine_hash_is_cached_by_file_version(tmp_path):
    from rerender.export.cache import _sha256_of_version, file_sha256, file_sha256_cached

    path = tmp_path / "e.plan"
    path.write_bytes(b"a" * 1000)
    first = file_sha256_cached(path)
    hits = _sha256_of_version.cache_info().hits
    assert file_sha256_cached(path) == first and _sha256_of_version.cache_info().hits == hits + 1
    st = path.stat()
    path.write_bytes(b"b" * 1000)  # same size, and the old mtime put back: the ctime still moves
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_sha256_cached(path) == file_sha256(path) != first
