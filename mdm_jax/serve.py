"""A local voice page: record or upload a question, read the answer's text as it streams and hear
it block by block; with several Talkers, compare them on the same question side by side.

    python -m mdm_jax.serve --model runs/demo/model.json          # then open http://127.0.0.1:8000
    python -m mdm_jax.serve --model runs/demo/model.json@sampler.denoise_steps=1 \
                            --model runs/demo/model.json@sampler.denoise_steps=4 --model runs/other/model.json

`--model MODEL.json[@key=value,...]` is a demo run's model (params, tokenizer, template, token2wav) run as the
overrides say (`generate`'s, e.g. sampler.method=ar); repeated, each is one column of the page, and one
checkpoint named several times is loaded once. Each question is answered by every model in turn, so one
model's times are not another's: the page shows per model its text, first-packet time (the first audio
block, from the end of the question), speech tokens per second (of the whole answer, and of the Talker's
own decoding) and the whole answer's audio; the first model's blocks also play as they arrive.

One Starlette app on 127.0.0.1: GET / is the page (`static/voice.html`); the page sends the question's
audio file (any format libsndfile reads; the page records WAV) as one binary message over the WebSocket
/answer and receives JSON messages: `accepted` (the question's seconds), then per model one `block` per
speech block (`model`: its index; text so far, units, its audio as a base64 16-bit WAV, stage times) and
one `answer` (its text, first-packet time, tokens per second, the whole audio), then `done`. A bad request
gets one `error` in words (a text message instead of the file, not audio, cut short, too long, too big,
empty; other rates are resampled) and the server keeps serving. The WebSocket layer takes messages up
to twice `--max-bytes`, so the app's own size check answers; a message beyond that is closed with
code 1009, which the page explains (it also checks the size before sending). Requests run one at a time
(a lock): the page is for a person, not a fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import html
import io
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import uvicorn
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from data_pipelines.audio import load_audio
from data_pipelines.features import SAMPLE_RATE
from data_pipelines.tokenizer import load_tokenizer
from data_pipelines.validation import BadRecordError, Reason
from mdm_jax.config.model import ModelConfig
from mdm_jax.decode.inference import MAX_SECONDS, WARMUP_SECONDS, load_models, spoken_question
from mdm_jax.decode.streaming import StreamChunk, stream
from mdm_jax.vocoder.load import load_token2wav

PAGE = Path(__file__).parent / "static" / "voice.html"
MAX_BYTES = 16 * 2**20  # default upload limit


@dataclass(frozen=True)
class Limits:
    """What the server takes and answers: question seconds, upload bytes, text tokens and speech blocks."""

    max_seconds: float = MAX_SECONDS
    max_bytes: int = MAX_BYTES
    max_text_tokens: int = 64
    max_blocks: int = 16


@dataclass
class VoiceModel:
    """One model of the page: a demo run's `model.json` (params, tokenizer, template, token2wav), run as its
    overrides say."""

    label: str
    params: dict
    cfg: ModelConfig
    tokenizer: object
    template: str
    token2wav: object

    @classmethod
    def load_all(cls, specs: Sequence[str]) -> list[VoiceModel]:
        """`MODEL.json[@key=value,...]` each -> its VoiceModel; params named several times are loaded once."""
        parsed = [_spec(spec) for spec in specs]
        runs = [_run(path) for path, _ in parsed]
        loaded = load_models([(run["params"], overrides) for run, (_, overrides) in zip(runs, parsed)])
        tokenizers = {r["tokenizer"]: load_tokenizer(r["tokenizer"]) for r in runs}
        vocoders = {r["token2wav"]: load_token2wav(r["token2wav"]) for r in runs}  # once per file
        return [cls(_label(path, overrides, cfg), params, cfg, tokenizers[run["tokenizer"]], run["template"],
                    vocoders[run["token2wav"]])
                for (path, overrides), run, (params, cfg) in zip(parsed, runs, loaded)]

    def answer(self, audio: np.ndarray, limits: Limits):
        """-> (StreamChunks of the spoken answer, the end-of-text id)."""
        mel, prompt, (end,) = spoken_question(audio, self.cfg, self.tokenizer, self.template)
        return stream(self.params, self.cfg, mel, prompt, eos_ids={end}, max_text_tokens=limits.max_text_tokens,
                      max_blocks=limits.max_blocks, token2wav=self.token2wav), end

    def wav(self, audio: np.ndarray | None) -> str | None:
        """Samples -> a base64 16-bit WAV, None for none."""
        if audio is None or not len(audio):
            return None
        buffer = io.BytesIO()
        sf.write(buffer, audio, self.token2wav.sample_rate, format="WAV", subtype="PCM_16")
        return base64.b64encode(buffer.getvalue()).decode()

    def text(self, chunk: StreamChunk, end: int) -> str:
        return self.tokenizer.decode([t for t in chunk.text_ids if t != end])

    def message(self, chunk: StreamChunk, end: int, index: int) -> dict:
        return {"type": "block", "model": index, "block": chunk.block, "units": len(chunk.speech),
                "elapsed_s": chunk.elapsed_s, "text": self.text(chunk, end), "audio": self.wav(chunk.audio),
                "times": chunk.times}

    def summary(self, chunks: list[StreamChunk], end: int, index: int) -> dict:
        """One model's whole answer: its text, first-packet time, speech tokens per second, all its audio."""
        units = sum(len(c.speech) for c in chunks)
        total, talker = chunks[-1].elapsed_s, sum(c.times["decoder"] for c in chunks)
        audio = [c.audio for c in chunks if c.audio is not None]
        return {"type": "answer", "model": index, "label": self.label, "text": self.text(chunks[-1], end),
                "first_packet_s": next((c.elapsed_s for c in chunks if c.audio is not None and len(c.audio)),
                                       chunks[0].elapsed_s),
                "units": units, "blocks": len(chunks), "total_s": total, "tokens_per_s": units / total,
                "talker_tokens_per_s": units / talker, "audio": self.wav(np.concatenate(audio) if audio else None)}


def _spec(spec: str) -> tuple[str, list[str]]:
    """`MODEL.json[@key=value,...]` -> (the path, its overrides)."""
    path, at, overrides = spec.rpartition("@")
    if not at or "=" not in overrides:
        return spec, []
    return path, overrides.split(",")


def _run(path: str) -> dict:
    """A demo run's model.json; ValueError naming the file and what is wrong."""
    try:
        run = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    missing = [k for k in ("params", "tokenizer", "template", "token2wav") if k not in run]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} entry")
    return run


def _label(path: str, overrides: list[str], cfg: ModelConfig) -> str:
    """A column's heading: the run's folder, the overrides, the method that decodes its speech."""
    steps = cfg.sampler.denoise_steps
    method = f"mdm, {steps} step{'s' * (steps != 1)} per block" if cfg.sampler.method == "mdm" else cfg.sampler.method
    return " · ".join([Path(path).absolute().parent.name, *overrides, method])


def refusal(e: BadRecordError, limits: Limits) -> str:
    """Why an upload was refused, in words for the page."""
    why = {Reason.CORRUPT_AUDIO: "it is not an audio file (libsndfile cannot read it)",
           Reason.TRUNCATED_AUDIO: "it is cut short (its header promises more audio than arrived)",
           Reason.MISSING_FILE: "it is empty", Reason.EMPTY_AUDIO: "it holds no sound",
           Reason.TOO_LONG: f"it is too long (at most {limits.max_seconds:g} s)",
           Reason.TOO_BIG: f"it is too big ({e.detail})", Reason.MALFORMED: e.detail,
           Reason.NON_FINITE: "it holds NaN or infinite samples"}.get(e.reason, e.reason.value.replace("_", " "))
    return f"Refused: {why}."


def upload(message: dict, limits: Limits) -> np.ndarray:
    """One received WebSocket message -> the question's audio (16 kHz mono float32); BadRecordError naming
    what is wrong."""
    data = message.get("bytes")
    if data is None:
        raise BadRecordError("the upload", Reason.MALFORMED, "send the question's audio file as one binary "
                             "message, not a text message")
    if len(data) > limits.max_bytes:
        raise BadRecordError("the upload", Reason.TOO_BIG, f"{len(data)} bytes, at most {limits.max_bytes}")
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        return load_audio(f.name, "the upload", max_seconds=limits.max_seconds)[0]


def answers(models: Sequence[VoiceModel], audio: np.ndarray, limits: Limits):
    """Every model's answer in turn, as the page's messages: its `block`s, then its `answer`."""
    for index, model in enumerate(models):
        chunks, end = model.answer(audio, limits)
        streamed = []
        for chunk in chunks:
            streamed.append(chunk)
            yield model.message(chunk, end, index)
        yield model.summary(streamed, end, index)


def create_app(models: Sequence[VoiceModel], limits: Limits = Limits(),
               warmup: tuple[float, ...] = WARMUP_SECONDS) -> Starlette:
    lock = asyncio.Lock()
    labels = html.escape(json.dumps([m.label for m in models]))

    async def page(request):
        return HTMLResponse(PAGE.read_text().replace("{{max_bytes}}", str(limits.max_bytes))
                            .replace("{{models}}", labels))

    async def answer(ws: WebSocket):
        await ws.accept()
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":  # gone before sending anything
            return
        try:
            audio = upload(message, limits)
        except BadRecordError as e:
            await ws.send_json({"type": "error", "message": refusal(e, limits)})
            await ws.close()
            return
        await ws.send_json({"type": "accepted", "seconds": len(audio) / SAMPLE_RATE})
        async with lock:  # one request at a time: each model's times are its own
            loop, queue = asyncio.get_running_loop(), asyncio.Queue()

            def produce():  # in a worker thread: JAX blocks, the event loop keeps serving
                try:
                    for out in answers(models, audio, limits):
                        loop.call_soon_threadsafe(queue.put_nowait, out)
                except Exception as e:  # reported to this page, the server keeps running
                    loop.call_soon_threadsafe(queue.put_nowait, {"type": "error", "message": repr(e)})
                loop.call_soon_threadsafe(queue.put_nowait, None)

            worker = loop.run_in_executor(None, produce)
            answered = []
            while (message := await queue.get()) is not None:
                answered += [message] if message["type"] == "answer" else []
                await ws.send_json(message)
            await worker
        if len(answered) == len(models):  # no error cut it short
            await ws.send_json({"type": "done", "text": answered[0]["text"],
                                "total_s": sum(a["total_s"] for a in answered)})
        await ws.close()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for seconds in warmup:  # compile the length buckets of typical questions before the first one
            silence = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
            await asyncio.get_running_loop().run_in_executor(
                None, lambda audio=silence: list(answers(models, audio, limits)))
        yield

    return Starlette(routes=[Route("/", page), WebSocketRoute("/answer", answer)], lifespan=lifespan)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mdm_jax.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, action="append",
                        help="model.json of a demo run (params, tokenizer, token2wav), optionally @key=value,... "
                             "of how it runs; repeat to compare models side by side")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="longer questions are refused")
    parser.add_argument("--max-text-tokens", type=int, default=64)
    parser.add_argument("--max-blocks", type=int, default=16)
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="larger uploads are refused")
    parser.add_argument("--warmup", default=",".join(f"{s:g}" for s in WARMUP_SECONDS),
                        help="question seconds compiled at start (their buckets)")
    args = parser.parse_args(argv)
    try:
        models = VoiceModel.load_all(args.model)
    except (ValueError, OSError) as e:  # a missing or broken model.json / checkpoint / override: one line
        parser.exit(2, f"error: --model: {e}\n")
    limits = Limits(args.max_seconds, args.max_bytes, args.max_text_tokens, args.max_blocks)
    warmup = tuple(float(s) for s in args.warmup.split(",") if s)
    uvicorn.run(create_app(models, limits, warmup), host=args.host, port=args.port, log_level="warning",
                ws_max_size=2 * args.max_bytes)  # room for the app's own check to answer an oversize upload


if __name__ == "__main__":
    main()
