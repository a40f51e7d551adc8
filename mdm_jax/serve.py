"""A local voice page: record or upload a question, read the answer's text as it streams and hear
it block by block.

    python -m mdm_jax.serve --model runs/demo/model.json          # then open http://127.0.0.1:8000

One Starlette app on 127.0.0.1: GET / is the page (`static/voice.html`); the page sends the question's
audio file (any format libsndfile reads; the page records WAV) as one binary message over the WebSocket
/answer and receives JSON messages: `accepted` (the question's seconds), one `block` per speech block
(text so far, units, its audio as a base64 16-bit WAV, stage times), then `done`. A bad request gets
one `error` in words (a text message instead of the file, not audio, cut short, too long, too big,
empty; other rates are resampled) and the server keeps serving. The WebSocket layer takes messages up
to twice `--max-bytes`, so the app's own size check answers; a message beyond that is closed with
code 1009, which the page explains (it also checks the size before sending). Requests share one model
and run one at a time (a lock): the page is for a person, not a fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import tempfile
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
from mdm_jax.cli import load_model
from mdm_jax.decode.streaming import StreamChunk, spoken_question, stream
from mdm_jax.vocoder.load import load_token2wav

PAGE = Path(__file__).parent / "static" / "voice.html"
MAX_BYTES = 16 * 2**20  # default upload limit


@dataclass
class VoiceModel:
    """The model a demo run wrote (`model.json`: params, tokenizer, template, token2wav)."""

    params: dict
    cfg: object
    tokenizer: object
    template: str
    token2wav: object
    max_seconds: float
    max_text_tokens: int
    max_blocks: int
    max_bytes: int

    @classmethod
    def load(cls, path: str, max_seconds: float = 30.0, max_text_tokens: int = 64, max_blocks: int = 16,
             max_bytes: int = MAX_BYTES):
        model = json.loads(Path(path).read_text())
        params, cfg = load_model(model["params"], [])
        return cls(params, cfg, load_tokenizer(model["tokenizer"]), model["template"],
                   load_token2wav(model["token2wav"]), max_seconds, max_text_tokens, max_blocks, max_bytes)

    def audio(self, data: bytes) -> np.ndarray:
        """An uploaded file's bytes -> 16 kHz mono float32; BadRecordError (the reason in words) if unusable."""
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            return load_audio(f.name, "the upload", max_seconds=self.max_seconds)[0]

    def answer(self, audio: np.ndarray):
        """-> (StreamChunks of the spoken answer, the end-of-text id)."""
        mel, prompt, (end,) = spoken_question(audio, self.cfg, self.tokenizer, self.template)
        return stream(self.params, self.cfg, mel, prompt, eos_ids={end}, max_text_tokens=self.max_text_tokens,
                      max_blocks=self.max_blocks, token2wav=self.token2wav), end

    def message(self, chunk: StreamChunk, end: int) -> dict:
        audio = None
        if chunk.audio is not None and len(chunk.audio):
            buffer = io.BytesIO()
            sf.write(buffer, chunk.audio, self.token2wav.sample_rate, format="WAV", subtype="PCM_16")
            audio = base64.b64encode(buffer.getvalue()).decode()
        return {"type": "block", "block": chunk.block, "units": len(chunk.speech), "elapsed_s": chunk.elapsed_s,
                "text": self.tokenizer.decode([t for t in chunk.text_ids if t != end]), "audio": audio,
                "times": chunk.times}


def refusal(e: BadRecordError, model: VoiceModel) -> str:
    """Why an upload was refused, in words for the page."""
    why = {Reason.CORRUPT_AUDIO: "it is not an audio file (libsndfile cannot read it)",
           Reason.TRUNCATED_AUDIO: "it is cut short (its header promises more audio than arrived)",
           Reason.MISSING_FILE: "it is empty", Reason.EMPTY_AUDIO: "it holds no sound",
           Reason.TOO_LONG: f"it is too long (at most {model.max_seconds:g} s)",
           Reason.TOO_BIG: f"it is too big ({e.detail})", Reason.MALFORMED: e.detail,
           Reason.NON_FINITE: "it holds NaN or infinite samples"}.get(e.reason, e.reason.value.replace("_", " "))
    return f"Refused: {why}."


def upload(message: dict, model: VoiceModel) -> np.ndarray:
    """One received WebSocket message -> the question's audio; BadRecordError naming what is wrong."""
    data = message.get("bytes")
    if data is None:
        raise BadRecordError("the upload", Reason.MALFORMED, "send the question's audio file as one binary "
                             "message, not a text message")
    if len(data) > model.max_bytes:
        raise BadRecordError("the upload", Reason.TOO_BIG, f"{len(data)} bytes, at most {model.max_bytes}")
    return model.audio(data)


def create_app(model: VoiceModel, warmup: tuple[float, ...] = (1.0, 2.5, 5.0)) -> Starlette:
    lock = asyncio.Lock()

    async def page(request):
        return HTMLResponse(PAGE.read_text().replace("{{max_bytes}}", str(model.max_bytes)))

    async def answer(ws: WebSocket):
        await ws.accept()
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":  # gone before sending anything
            return
        try:
            audio = upload(message, model)
        except BadRecordError as e:
            await ws.send_json({"type": "error", "message": refusal(e, model)})
            await ws.close()
            return
        await ws.send_json({"type": "accepted", "seconds": len(audio) / SAMPLE_RATE})
        async with lock:  # one model, one request at a time
            loop, queue = asyncio.get_running_loop(), asyncio.Queue()

            def produce():  # in a worker thread: JAX blocks, the event loop keeps serving
                try:
                    chunks, end = model.answer(audio)
                    for chunk in chunks:
                        loop.call_soon_threadsafe(queue.put_nowait, model.message(chunk, end))
                except Exception as e:  # reported to this page, the server keeps running
                    loop.call_soon_threadsafe(queue.put_nowait, {"type": "error", "message": repr(e)})
                loop.call_soon_threadsafe(queue.put_nowait, None)

            worker = loop.run_in_executor(None, produce)
            last = None
            while (message := await queue.get()) is not None:
                last = message
                await ws.send_json(message)
            await worker
        if last is not None and last["type"] == "block":
            await ws.send_json({"type": "done", "text": last["text"], "total_s": last["elapsed_s"]})
        await ws.close()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for seconds in warmup:  # compile the length buckets of typical questions before the first one
            silence = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
            await asyncio.get_running_loop().run_in_executor(None, lambda audio=silence: list(model.answer(audio)[0]))
        yield

    return Starlette(routes=[Route("/", page), WebSocketRoute("/answer", answer)], lifespan=lifespan)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mdm_jax.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.json of a demo run (params, tokenizer, token2wav)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longer questions are refused")
    parser.add_argument("--max-text-tokens", type=int, default=64)
    parser.add_argument("--max-blocks", type=int, default=16)
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="larger uploads are refused")
    parser.add_argument("--warmup", default="1,2.5,5", help="question seconds compiled at start (their buckets)")
    args = parser.parse_args(argv)
    try:
        model = VoiceModel.load(args.model, args.max_seconds, args.max_text_tokens, args.max_blocks, args.max_bytes)
    except (ValueError, OSError) as e:  # a missing or broken model.json / checkpoint: one line
        parser.exit(2, f"error: --model {args.model}: {e}\n")
    except KeyError as e:
        parser.exit(2, f"error: --model {args.model}: no {e} entry\n")
    warmup = tuple(float(s) for s in args.warmup.split(",") if s)
    uvicorn.run(create_app(model, warmup), host=args.host, port=args.port, log_level="warning",
                ws_max_size=2 * args.max_bytes)  # room for the app's own check to answer an oversize upload


if __name__ == "__main__":
    main()
