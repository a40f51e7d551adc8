"""The local voice page (`python -m mdm_jax.serve`) on 127.0.0.1 with the quick demo's model: bad
requests (not audio, cut short, too long, too big, a text message) are refused in words while the
server keeps serving, 20 concurrent requests all complete, and a real headless browser (Debian's
chromium, driven by Playwright) uploads a question, sees the text stream in and receives the first
audio block, and shows a too-big file and a dropped connection in words. With two models (the demo's
checkpoint at two step counts) every answer carries both models' results and the page shows both
columns with their audio."""

import asyncio
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mdm_jax import serve
from mdm_jax.serve import VoiceModel

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
MAX_BYTES = 1_000_000  # the server's upload limit here; its WebSocket layer takes messages up to twice that


@pytest.fixture(scope="module")
def server(demo_run, tmp_path_factory):
    yield from _serve(demo_run, tmp_path_factory, [str(demo_run / "model.json")])


@pytest.fixture(scope="module")
def two_models(demo_run, tmp_path_factory):
    """The demo's checkpoint at 1 and at 4 denoising steps per block: two columns."""
    yield from _serve(demo_run, tmp_path_factory, _steps(demo_run, 1, 4))


def _steps(demo_run, *steps: int) -> list[str]:
    return [f"{demo_run / 'model.json'}@sampler.denoise_steps={s}" for s in steps]


def _serve(demo_run, tmp_path_factory, models: list[str]):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "mdm_jax.serve", *[a for m in models for a in ("--model", m)],
                             "--port", str(port), "--max-blocks", "2", "--max-text-tokens", "8", "--warmup", "2",
                             "--max-bytes", str(MAX_BYTES)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while True:  # the page answers once the model is loaded and compiled (startup warm-up)
        try:
            urllib.request.urlopen(url, timeout=5).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
    model = json.loads((demo_run / "model.json").read_text())
    question = json.loads(Path(model["test_manifest"]).read_text().splitlines()[0])
    yield {"url": url, "proc": proc, "wav": Path(model["test_manifest"]).parent / question["user_audio"]}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_a_model_is_a_path_and_its_overrides():
    assert serve._spec("runs/demo/model.json") == ("runs/demo/model.json", [])
    assert serve._spec("runs/demo/model.json@sampler.denoise_steps=1,dtype=bfloat16") == (
        "runs/demo/model.json", ["sampler.denoise_steps=1", "dtype=bfloat16"])
    assert serve._spec("runs/v@2/model.json") == ("runs/v@2/model.json", [])  # an @ in the path, no overrides


@pytest.mark.parametrize("models, words", [
    (["missing.json"], "[Errno 2] No such file or directory: '{tmp}/missing.json'"),
    (["model.json@sampler.denoise_steps=1", "model.json"], "{tmp}/model.json: no tokenizer, template, token2wav entry"),
])
def test_a_broken_model_is_refused_in_one_line(tmp_path, capsys, models, words):
    (tmp_path / "model.json").write_text('{"params": "nowhere"}')
    with pytest.raises(SystemExit) as stop:
        serve.main([a for m in models for a in ("--model", str(tmp_path / m))])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == f"error: --model: {words.format(tmp=tmp_path)}\n", err


def _wav_bytes(audio, rate) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV")
    return buffer.getvalue()


async def _ask(url: str, data: bytes | str, close_code: int = 1000) -> list[dict]:
    """Sends one message (bytes: binary, str: text) -> the server's messages, having checked its close code."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(url.replace("http", "ws") + "/answer", max_size=None, open_timeout=60) as ws:
        messages = []
        try:
            await ws.send(data)
            async for raw in ws:
                messages.append(json.loads(raw))
        except ConnectionClosed:
            pass
        assert ws.close_code == close_code, (ws.close_code, ws.close_reason, messages)
        return messages


def test_bad_uploads_are_refused_and_the_server_keeps_serving(server):
    refused = asyncio.run(_ask(server["url"], b"this is not audio"))
    assert refused == [{"type": "error", "message": "Refused: it is not an audio file (libsndfile cannot read it)."}]
    long = asyncio.run(_ask(server["url"], _wav_bytes(np.zeros(8_000 * 40, np.float32), 8_000)))  # < MAX_BYTES
    assert [m["type"] for m in long] == ["error"] and "too long (at most 30 s)" in long[0]["message"]
    audio, rate = sf.read(server["wav"], dtype="float32")
    resampled = asyncio.run(_ask(server["url"], _wav_bytes(audio[::2], rate // 2)))  # 8 kHz: resampled
    assert resampled[0]["type"] == "accepted" and resampled[0]["seconds"] == pytest.approx(len(audio) / rate, 0.01)
    assert resampled[-1]["type"] == "done" and any(m.get("audio") for m in resampled)
    assert server["proc"].poll() is None


@pytest.mark.parametrize("request_, words", [
    ("hello", "Refused: send the question's audio file as one binary message, not a text message."),
    ('{"audio": "UklGRg=="}', "Refused: send the question's audio file as one binary message, not a text message."),
    ("cut", "Refused: it is cut short (its header promises more audio than arrived)."),
    ("over", f"Refused: it is too big ({MAX_BYTES + 1} bytes, at most {MAX_BYTES})."),
    ("far_over", None),  # past the WebSocket layer's limit: closed with 1009 (the page explains it)
])
def test_every_bad_request_is_refused_and_the_next_one_answered(server, request_, words):
    wav = server["wav"].read_bytes()
    data = {"cut": wav[: len(wav) // 2], "over": wav + bytes(MAX_BYTES + 1 - len(wav)),
            "far_over": bytes(2 * MAX_BYTES + 1)}.get(request_, request_)
    refused = asyncio.run(_ask(server["url"], data, close_code=1000 if words else 1009))
    assert refused == ([{"type": "error", "message": words}] if words else [])
    answered = asyncio.run(_ask(server["url"], wav))
    assert answered[0]["type"] == "accepted" and answered[-1]["type"] == "done"
    assert server["proc"].poll() is None


def test_twenty_concurrent_requests_all_complete(server):
    data = server["wav"].read_bytes()

    async def all_of_them():
        return await asyncio.gather(*[_ask(server["url"], data) for _ in range(20)])

    answers = asyncio.run(all_of_them())
    assert all(a[0]["type"] == "accepted" and a[-1]["type"] == "done" for a in answers)
    assert not [m for a in answers for m in a if m["type"] == "error"]
    assert len({a[-1]["text"] for a in answers}) == 1  # the same question, the same greedy answer
    assert server["proc"].poll() is None  # no restart


@contextlib.contextmanager
def _browser():
    """Debian's headless chromium driven by Playwright (skips where either is missing)."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"])
        yield browser
        browser.close()


def test_the_page_in_a_real_browser(server, tmp_path):
    with _browser() as browser:
        page = browser.new_page()
        page.goto(server["url"])
        page.set_input_files("#file", str(server["wav"]))
        page.click("#send")
        page.wait_for_selector("body[data-first-audio]", timeout=120_000)
        page.wait_for_selector("body[data-done]", timeout=120_000)
        assert page.inner_text("#talker-0 .text").strip() and int(page.inner_text("#talker-0 .blocks")) >= 1
        assert page.inner_text("#error") == ""
        page.screenshot(path=os.environ.get("MDM_SCREENSHOT", str(tmp_path / "voice_page.png")), full_page=True)

        big = tmp_path / "big.wav"
        big.write_bytes(bytes(2 * MAX_BYTES + 1))
        page.set_input_files("#file", str(big))
        page.click("#send")  # refused by the page itself, before sending
        assert page.inner_text("#error") == "Refused: the file is 1.9 MiB; the server takes at most 1.0 MiB."
        page.evaluate("document.body.dataset.maxBytes = 1e9")  # as a page without the check: the server closes
        page.click("#send")
        page.wait_for_function("document.getElementById('error').textContent.includes('1009')", timeout=60_000)
        assert page.inner_text("#error") == "The server closed the connection: the file is too big for it (code 1009)."
        assert page.inner_text("#status") == "Ready."


def test_two_models_answer_each_question_side_by_side(two_models, demo_run):
    """Each answer carries every model's blocks and its own result (first packet, tokens per second, the
    whole audio), model after model; the checkpoint named twice is loaded once."""
    messages = asyncio.run(_ask(two_models["url"], two_models["wav"].read_bytes()))
    assert messages[0]["type"] == "accepted" and messages[-1]["type"] == "done"
    blocks = [m["model"] for m in messages if m["type"] == "block"]
    assert blocks == sorted(blocks) and set(blocks) == {0, 1}  # one model's answer, then the other's
    answers = [m for m in messages if m["type"] == "answer"]
    assert [a["model"] for a in answers] == [0, 1]
    assert answers[0]["label"].endswith("sampler.denoise_steps=1 · mdm, 1 step per block")
    assert answers[1]["label"].endswith("sampler.denoise_steps=4 · mdm, 4 steps per block")
    for a in answers:
        assert a["first_packet_s"] > 0 and a["tokens_per_s"] > 0 and a["talker_tokens_per_s"] > 0 and a["units"] > 0
        audio, _ = sf.read(io.BytesIO(base64.b64decode(a["audio"])))
        assert len(audio) > 0
    assert messages[-1]["total_s"] == pytest.approx(sum(a["total_s"] for a in answers))
    one, four = VoiceModel.load_all(_steps(demo_run, 1, 4))
    assert one.params is four.params and (one.cfg.sampler.denoise_steps, four.cfg.sampler.denoise_steps) == (1, 4)


def test_the_comparison_in_a_real_browser(two_models, tmp_path):
    with _browser() as browser:
        page = browser.new_page()
        page.goto(two_models["url"])
        page.set_input_files("#file", str(two_models["wav"]))
        page.click("#send")
        page.wait_for_selector("body[data-done]", timeout=120_000)
        assert page.inner_text("#error") == ""
        for i in (0, 1):
            column = f"#talker-{i}"
            assert page.is_visible(f"{column} h2") and page.is_visible(f"{column} audio[src^='data:audio/wav']")
            assert page.inner_text(f"{column} .text").strip() and "first packet" in page.inner_text(f"{column} .stats")
            page.wait_for_function(f"document.querySelector('{column} audio').duration > 0", timeout=30_000)
        assert "4 steps per block" in page.inner_text("#talker-1 h2")
        page.screenshot(path=str(tmp_path / "voice_page_two_models.png"), full_page=True)
