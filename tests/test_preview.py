"""`rerender preview` driven in a real headless Chromium.

A real `rerender preview` subprocess serves a tiny synthetic clip; Selenium clicks through the ladder
(first keyframe → all keyframes → full propagation), changes K, re-runs, renders to a file and checks that a
bad setting shows the CLI's own sentence. Plain HTTP requests check what is served and that every other path
is a 404. The screenshot is kept as `artifacts/preview.png`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media import normal_clip, not_a_video
from preview_server import Server, wait_for

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FRAMES = 12
K = 4
# A small processing size and few synthesis iterations keep each full propagation to seconds on 2 cores.
CHEAP = ["--size", "64", "--search-vote-iters", "2", "--patchmatch-iters", "2", "--fast-size", "64"]


def uniform_keyframes(frames: int, k: int) -> list[int]:
    """The schedule of the filter issue: 0, K, 2K, ... and the last frame."""
    return sorted(set(range(0, frames, k)) | {frames - 1})


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return normal_clip(tmp_path_factory.mktemp("preview-clip"), width=160, height=96, frames=FRAMES)


@pytest.fixture(scope="module")
def outdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("preview-out")


@pytest.fixture(scope="module")
def server(clip, outdir):
    srv = Server(["-i", str(clip), "-K", str(K), "--output-dir", str(outdir), *CHEAP])
    yield srv
    srv.stop()


def run_message(argv: list[str]) -> str:
    """The sentence `rerender run` prints for these options (the page must show the same one)."""
    from rerender.filter.errors import UsageError
    from rerender.filter.job import parse_run_options

    with pytest.raises(UsageError) as info:
        parse_run_options(argv)
    return str(info.value)


# -- plain HTTP ---------------------------------------------------------------------------------------


def test_serves_its_page_assets_status_and_frames(server):
    code, headers, page = server.request("GET", "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b"rerender preview" in page and b'id="run-first-keyframe"' in page and b"/app.js" in page
    code, headers, js = server.request("GET", "/app.js")
    assert code == 200 and "javascript" in headers["Content-Type"] and b"/status" in js
    code, headers, _ = server.request("GET", "/style.css")
    assert code == 200 and headers["Content-Type"].startswith("text/css")
    status = server.status()
    assert {"state", "stage", "run_id"} <= status.keys()
    code, _, settings = server.request("GET", "/settings")
    settings = json.loads(settings)
    assert settings["values"]["-K"] == str(K)  # the command line's run options fill the form
    assert "-K" in [f["flag"] for f in settings["fields"]]
    code, headers, jpeg = server.request("GET", "/input.jpg")
    assert code == 200 and headers["Content-Type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"


@pytest.mark.parametrize(
    "path",
    [
        "/../etc/passwd",
        "/static/../../x",
        "/etc/passwd",
        "/index.html",
        "/app.js/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "//etc/passwd",
        "/keyframe.jpg/x",
        "/favicon.ico",
    ],
)
def test_any_other_path_is_404(server, path):
    code, _, body = server.request("GET", path)
    assert code == 404, (path, body[:200])
    code, _, _ = server.request("POST", path, body={})
    assert code == 404


def test_state_changes_need_json_from_this_host(server):
    code, _, _ = server.request("POST", "/run", headers={"Content-Type": "text/plain"})
    assert code == 415  # a cross-site form post cannot start jobs
    code, _, _ = server.request(
        "POST", "/run", headers={"Content-Type": "application/json", "Content-Length": "-5"}
    )
    assert code == 400
    code, _, _ = server.request("GET", "/status", headers={"Host": "evil.example:80"})
    assert code == 403  # DNS rebinding: only the loopback names are served


# -- the browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER} missing); "
            "README set-up installs them"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_ladder_in_a_real_browser(server, browser, clip, outdir):
    from selenium.webdriver.common.by import By

    def el(id_):
        return browser.find_element(By.ID, id_)

    def text(id_):
        return el(id_).text.strip()

    def wait_run(run_id: int, timeout: float = 40) -> dict:
        def finished():
            st = server.status()
            return st if st["run_id"] > run_id and st["state"] in ("done", "error", "cancelled") else None

        st = wait_for(finished, timeout, "the run to finish")
        wait_for(
            lambda: (
                browser.find_element(By.TAG_NAME, "body").get_attribute("data-run-id") == str(st["run_id"])
                and text("state") == st["state"]
            ),
            5,
            "the page to show the run's state",
        )
        return st

    def set_field(id_, value):
        field = el(id_)
        field.clear()
        field.send_keys(value)

    browser.get(server.url)
    wait_for(lambda: browser.find_elements(By.ID, "field-K"), 10, "the settings form")
    assert el("field-K").get_attribute("value") == str(K)
    assert text("state") == "idle"

    # 1. First keyframe: the stylized keyframe appears as an image in the page.
    run_id = server.status()["run_id"]
    el("run-first-keyframe").click()
    st = wait_run(run_id)
    assert st["state"] == "done", st
    assert st["stage"] == "first-keyframe" and st["keyframes"] == [0]
    wait_for(
        lambda: browser.execute_script("return document.getElementById('keyframe').naturalWidth") > 0,
        10,
        "the first keyframe image",
    )
    assert text("keyframes").startswith("1")
    # The served keyframe is the stylized frame at the processing size the job reported.
    code, headers, jpeg = server.request("GET", "/keyframe.jpg")
    width, height = st["processing_size"]
    assert code == 200 and cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (
        height,
        width,
        3,
    )

    # 2. All keyframes, K from the command line.
    run_id = st["run_id"]
    el("run-keyframes").click()
    st = wait_run(run_id)
    assert st["state"] == "done" and st["stage"] == "keyframes", st
    assert st["keyframes"] == uniform_keyframes(FRAMES, K)
    assert text("keyframes") == f"{len(st['keyframes'])} / {len(st['keyframes'])}"
    # The contact sheet holds one thumbnail per keyframe, in one row here, and the page shows it.
    from rerender.filter.preview.sheet import GAP, THUMB_HEIGHT

    width, height = st["processing_size"]
    thumb = round(width * THUMB_HEIGHT / height)
    sheet_width = len(st["keyframes"]) * (thumb + GAP) - GAP
    code, _, jpeg = server.request("GET", "/keyframes.jpg")
    assert code == 200
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (
        THUMB_HEIGHT,
        sheet_width,
        3,
    )
    wait_for(
        lambda: browser.execute_script("return document.getElementById('sheet').naturalWidth") == sheet_width,
        10,
        "the keyframe sheet in the page",
    )

    # Change K in the page and re-run the current stage.
    set_field("field-K", "3")
    run_id = st["run_id"]
    el("rerun").click()
    st = wait_run(run_id)
    assert st["state"] == "done" and st["stage"] == "keyframes", st
    assert st["keyframes"] == uniform_keyframes(FRAMES, 3)
    assert "-K 3" in st["command"] and text("command") == st["command"]

    # An invalid setting shows the sentence `rerender run` prints for it, and starts nothing.
    set_field("field-K", "0")
    el("rerun").click()
    expected = run_message(["-i", str(clip), "-K", "0", "-o", str(outdir / "x.mp4")])
    wait_for(lambda: el("error").is_displayed() and text("error"), 10, "the error message")
    assert text("error") == expected
    assert server.status()["run_id"] == st["run_id"]

    # 3. Full propagation: progress (frames done/total, fps, ETA) is shown while it runs.
    set_field("field-K", str(K))
    run_id = st["run_id"]
    el("run-full").click()
    wait_for(lambda: not el("error").is_displayed(), 5, "the error to clear")
    seen = set()

    def full_done():
        seen.add((text("frames"), text("fps"), text("eta")))
        st = server.status()
        return st if st["run_id"] > run_id and st["state"] in ("done", "error", "cancelled") else None

    st = wait_for(full_done, 60, "the full propagation")
    assert st["state"] == "done" and st["stage"] == "full", st
    assert st["done"] == st["total"] == FRAMES
    wait_for(lambda: text("frames") == f"{FRAMES} / {FRAMES}", 5, "the page's frame count")
    assert text("fps") not in ("", "–")
    # The MJPEG streams reached the browser: both views show frames at the input's size (160x96), not the
    # 320x180 placeholders.
    for view in ("input-view", "output-view"):
        wait_for(
            lambda view=view: (
                browser.execute_script(f"return document.getElementById('{view}').naturalWidth") == 160
            ),
            10,
            f"{view} to show a frame",
        )
    print("progress seen while the full propagation ran (frames, fps, ETA):", sorted(seen))

    # Render to file: the same settings at full size, `rerender run` semantics, next to --output-dir.
    run_id = st["run_id"]
    el("render").click()
    st = wait_run(run_id, 60)
    assert st["state"] == "done" and st["kind"] == "render", st
    output = Path(st["output"])
    assert output.parent == outdir and output.is_file()
    with av.open(str(output)) as container:
        assert sum(1 for _ in container.decode(video=0)) == FRAMES
    wait_for(lambda: el("notice").is_displayed() and str(output) in text("notice"), 5, "the render notice")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "preview.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_fast_mode_caps_previews_only_and_job_errors_reach_the_page(clip, outdir, tmp_path):
    """Fast preview: processing size and sampler steps capped for previews, the file keeps the full
    settings; an error raised inside the job is reported in the status with the CLI's sentence. The model
    is named on the command line: the page may keep it (or clear it), never name another file."""
    missing = tmp_path / "no-such-model"
    values = {"--model": str(missing), "--steps": "20"}
    server = Server(
        ["-i", str(clip), "--model", str(missing), "--output-dir", str(outdir), "--fast-size", "64"]
    )

    def run(path: str, body: dict) -> dict:
        body = {"values": values, "extra": "", **body}
        return server.run_and_wait(path, body, 60, "the diffusion run to fail")

    def effective(st: dict) -> tuple[int, int]:
        """(processing size cap, sampler steps) the run was started with."""
        return st["effective"]["size"], st["effective"]["steps"]

    try:
        st = run("/run", {"stage": "first-keyframe", "fast": True})
        assert effective(st) == (64, 8)  # the server's --fast-size 64 and the default --fast-steps 8
        assert st["fast_caps"] == "fast preview: processing size capped at 64, steps capped at 8"
        assert st["state"] == "error" and str(missing) in st["message"]
        assert "internal error" not in st["message"]
        st = run("/run", {"stage": "first-keyframe", "fast": False})
        assert effective(st) == (512, 20) and st["state"] == "error"
        before = sorted(outdir.iterdir())
        st = run("/render", {"fast": True})  # the file never uses the fast caps
        assert st["kind"] == "render" and effective(st) == (512, 20) and st["state"] == "error"
        assert sorted(outdir.iterdir()) == before  # a failed render leaves no file behind
        code, _, payload = server.request(
            "POST", "/run", body={"values": {"--model": str(tmp_path)}, "extra": ""}
        )
        assert code == 400 and "--model" in json.loads(payload)["error"]
    finally:
        server.stop()


def test_a_diffusion_model_stays_loaded_from_run_to_run(clip, tmp_path):
    """The diffusion renderer through the page's HTTP API (tiny SD1.5, random weights, offline): the first
    keyframe, then every keyframe with another prompt and seed, both from one model load; the keyframe
    image is served while the page shows the run's exact `rerender run` command."""
    import tiny_models

    if tiny_models.TOKENIZER_MISSING is not None:
        pytest.skip(str(tiny_models.TOKENIZER_MISSING))
    model = tiny_models.write_diffusers_folder(tmp_path / "sd", tiny_models.build_components())
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    srv = Server(["-i", str(clip), "-K", str(K), "--model", str(model), *CHEAP], env=env)
    try:
        code, _, payload = srv.request("GET", "/settings")
        form = json.loads(payload)["values"]  # what the page's form holds: the command line's options
        assert form["--model"] == str(model)

        def run(stage: str, changes: dict) -> dict:
            body = {"stage": stage, "fast": True, "values": {**form, **changes}, "extra": ""}
            return srv.run_and_wait("/run", body, 300, f"the diffusion {stage} run")

        st = run("first-keyframe", {"--prompt": "a watercolour cat", "--seed": "1"})
        assert st["state"] == "done", st["message"]
        assert st["keyframes"] == [0] and st["model_loads"] == 1
        assert "--model" in st["command"] and "watercolour" in st["command"]
        code, headers, jpeg = srv.request("GET", "/keyframe.jpg")
        assert code == 200 and headers["Content-Type"] == "image/jpeg"
        keyframe = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert keyframe is not None and min(keyframe.shape[:2]) == 64  # the fast processing size
        st = run("keyframes", {"--prompt": "an oil painting of a cat", "--seed": "2"})
        assert st["state"] == "done", st["message"]
        assert st["keyframes"] == uniform_keyframes(FRAMES, K)
        assert st["model_loads"] == 1  # the prompt and seed changed; the networks were not loaded again
    finally:
        srv.stop()
    assert "Traceback" not in srv.stderr


def test_fast_mode_never_scales_a_small_input_up(clip, tmp_path):
    """Fast mode caps the processing size without asking for upscaling: the 160x96 clip is smaller than
    the default fast size (256), so its keyframe is rendered at the clip's own size (96, padded to 128)."""
    srv = Server(["-i", str(clip), "-K", str(K), "--search-vote-iters", "2", "--patchmatch-iters", "2"])
    try:
        body = {"stage": "first-keyframe", "fast": True, "values": {}, "extra": ""}
        st = srv.run_and_wait("/run", body, 120, "the first keyframe")
        assert st["state"] == "done", st["message"]
        assert st["effective"]["size"] == 256 and not st["effective"]["upscale"]
        code, _, jpeg = srv.request("GET", "/keyframe.jpg")
        keyframe = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert code == 200 and keyframe is not None and min(keyframe.shape[:2]) == 128
    finally:
        srv.stop()


# -- the page's settings are options -------------------------------------------------------------


def test_fields_and_more_flags_give_the_options_run_parses(clip, tmp_path):
    """A field's text and the same flag in "more flags" give the options `rerender run` parses from its
    argv, merged with the `rerender preview` command line's (a bad value gets the same sentence); and no
    module of the preview builds a run argv for its fields or parses one to check them."""
    import ast

    from rerender.filter.errors import UsageError
    from rerender.filter.job import parse_run_options
    from rerender.filter.preview.session import PreviewSession
    from rerender.filter.preview.settings import PageSettings

    command_line = ["-i", str(clip), "--allow-pickle", "--search-vote-iters", "2", "-K", "7"]
    session = PreviewSession(clip, command_line, workdir=tmp_path)
    form, extra = session.initial_values, session.initial_extra  # what the page starts from
    assert form == {"-K": "7"} and "--search-vote-iters" in extra
    check = str(tmp_path / "check.mp4")
    for flag, text in [
        ("-K", "3"),
        ("--keyframes", "adaptive"),
        ("--size", "128"),
        ("--classic-sigma-s", "20"),
    ]:
        expected = parse_run_options([*command_line, flag, text, "-o", check])
        for settings in (
            PageSettings({**form, flag: text}, extra),
            PageSettings(form, f"{extra} {flag} {text}"),
            PageSettings({**form, flag: ""}, f"{extra} {flag}={text}"),  # "more flags" wins over a field
        ):
            options, shown = session.options_for(settings)
            assert options == expected, (settings, options, expected)
        options, shown = session.options_for(PageSettings({flag: text}, ""))
        assert "--allow-pickle" in shown  # the command line's fixed options keep their values
    for flag, text in [("-K", "x"), ("-K", "0"), ("--size", "abc"), ("--keyframes", "sometimes")]:
        message = run_message([*command_line, flag, text, "-o", check])
        for settings in (PageSettings({flag: text}, ""), PageSettings({}, f"{flag} {text}")):
            with pytest.raises(UsageError) as info:
                session.options_for(settings)
            assert str(info.value) == message
    session.close()
    modules = sorted((REPO / "filter" / "preview").glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        tree = ast.parse(path.read_text())
        defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        called = {
            getattr(node.func, "attr", getattr(node.func, "id", None))
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
        }
        assert "page_argv" not in defined and "parse_run_options" not in called, path


# -- command line ---------------------------------------------------------------------------------


def test_cancel_button_and_ctrl_c_stop_a_run_in_flight(clip, tmp_path):
    """A full propagation at the 512 processing size takes far longer than these checks, so both the
    Cancel request and Ctrl-C land while it runs."""
    srv = Server(["-i", str(clip), "-K", "2"])
    slow = {"stage": "full", "fast": False, "values": {"--size": "512"}, "extra": ""}
    try:
        code, _, body = srv.request("POST", "/run", body=slow)
        assert code == 202, body
        wait_for(lambda: srv.status()["keyframes"], 60, "the first keyframe")
        code, _, body = srv.request("POST", "/cancel", body={})
        assert code == 200 and json.loads(body)["state"] == "cancelled", body
        code, _, body = srv.request("POST", "/run", body=slow)
        assert code == 202, body
        wait_for(lambda: srv.status()["keyframes"], 60, "the first keyframe again")
        assert srv.interrupt() == 0
    finally:
        srv.stop()
    assert "on 127.0.0.1 only" in srv.stderr
    assert "cancelling the run in flight" in srv.stderr and "stopped" in srv.stderr
    assert "Traceback" not in srv.stderr


def test_bad_command_line_is_one_line(clip, tmp_path):
    env = dict(os.environ)
    for argv, needle in [
        (["-i", str(tmp_path / "missing.mp4")], "input file not found"),
        ([], "required: -i/--input"),
        (["-i", str(clip), "--fast-size", "100"], "--fast-size must be a multiple of 64"),
        (["-i", str(clip), "-o", str(tmp_path / "o.mp4")], "only on 'Render to file'"),
        (["-i", "-"], "not '-'"),
        (["-i", str(not_a_video(tmp_path))], "not a media file"),
        (
            ["-i", str(clip), "-K", "0"],
            run_message(["-i", str(clip), "-K", "0", "-o", str(tmp_path / "o.mp4")]),
        ),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "rerender.filter.cli", "preview", *argv, "--port", "0"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 2, result.stderr
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
