"""The held-out evaluation data of the demo and the sweeps: spoken test questions, the LLM's answers
to them (greedy, or the reference answer teacher-forced), and the token2wav fitted on the training
answers that resynthesises speech for the judge."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import numpy as np

from data_pipelines.audio import load_audio
from data_pipelines.features import log_mel
from data_pipelines.manifest import load_units, read_manifest
from data_pipelines.tokenizer import TEMPLATES, encode_dialogue, encode_prompt, load_tokenizer, num_speech_frames
from data_pipelines.validation import BadRecords
from mdm_jax.convert.params_io import load_params
from mdm_jax.eval.metrics import Answer, answer_texts
from mdm_jax.model.vocalnet import VocalNet
from mdm_jax.vocoder.flow import FlowToken2Wav


def held_out_questions(corpus_dir: str, n: int, split: str = "test"):
    """The first spoken version of each of the first `n` dialogues of a held-out split: "test" (the
    main split: held-out combinations of trained templates and values) or "novel" (held-out templates
    and values)."""
    seen, out = set(), []
    for r in read_manifest(os.path.join(corpus_dir, f"{split}.jsonl"), BadRecords(strict=True)):
        if r.assistant_text not in seen:
            seen.add(r.assistant_text)
            out.append(r)
    return out[:n]


def held_out(corpus_dir: str, corpus: dict, n: int, split: str = "test") -> dict:
    """What an evaluation compares against: the held-out `records` (`held_out_questions`), their reference
    answers' `texts` and `units`."""
    records = held_out_questions(corpus_dir, n, split)
    return {"records": records, "texts": [r.assistant_text for r in records],
            "units": [load_units(r, corpus["units"]["k"]) for r in records]}


def talker_references(demo: Path, corpus_dir: str, corpus: dict, budget, eval_dialogues: int) -> dict:
    """What the Talker alone is judged against, from a demo run (its stage I, token2wav): the LLM's states on
    the reference answers (`hidden`), their `units` and `texts`, the `t2w` and the budget's `max_blocks`."""
    params, cfg = load_params(str(demo / "stage1" / "params"))
    refs = held_out(corpus_dir, corpus, eval_dialogues)
    t2w = fit_flow_token2wav(corpus_dir, corpus, str(demo / "token2wav.msgpack"), budget.token2wav_train_steps,
                             cfg.speech_decoder.block_size)
    return {"hidden": reference_answers(params, cfg, corpus_dir, refs["records"]), "units": refs["units"],
            "texts": refs["texts"], "t2w": t2w, "max_blocks": budget.max_blocks}


def fit_flow_token2wav(corpus_dir: str, corpus: dict, path: str, train_steps: int, chunk_units: int,
                       small: bool = False) -> FlowToken2Wav:
    """The trained token2wav (flow matching to the mel, then Griffin-Lim) on the training answers,
    chunk-causal over `chunk_units` units: the Talker's block, so each block's audio follows it."""
    if os.path.exists(path):
        t2w = FlowToken2Wav.load(path)
        if t2w.config.chunk_units != chunk_units:
            raise ValueError(f"{path} synthesises chunks of {t2w.config.chunk_units} units, the Talker's blocks are "
                             f"{chunk_units}: remove it to train one for these blocks")
        return t2w
    units, audio = _training_answers(corpus_dir, corpus)
    size = dict(d_model=32, num_heads=2, ffn_dim=64, encoder_layers=1, estimator_layers=1) if small else {}
    t2w = FlowToken2Wav.fit(units, audio, corpus["units"]["k"], train_steps, chunk_units=chunk_units, **size)
    t2w.save(path)
    return t2w


def _training_answers(corpus_dir: str, corpus: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(units, 16 kHz audio) of each distinct spoken answer of the training split."""
    seen, units, audio = set(), [], []
    for r in read_manifest(os.path.join(corpus_dir, "train.jsonl"), BadRecords(strict=True)):
        if r.assistant_audio not in seen:
            seen.add(r.assistant_audio)
            units.append(load_units(r, corpus["units"]["k"]))
            audio.append(load_audio(r.assistant_audio, r.assistant_audio, max_seconds=30.0)[0])
    return units, audio


def spoken_questions(cfg, corpus_dir: str, records) -> tuple[list[tuple[np.ndarray, list[int]]], int]:
    """-> ((log-mel of each record's spoken question, its prompt ids), the answer's end-of-text id)."""
    tok = load_tokenizer(os.path.join(corpus_dir, "tokenizer.json"))
    questions, end = [], None
    for r in records:
        mel, num_speech = _question(r, cfg)
        prompt, end = encode_prompt(tok, TEMPLATES["tiny"], num_speech)
        questions.append((mel, prompt))
    return questions, end


def spoken_answers(params, cfg, corpus_dir: str, records) -> tuple[list[Answer], list[str]]:
    """The model's greedy answers to the records' spoken questions: (answers, their decoded texts)."""
    tok = load_tokenizer(os.path.join(corpus_dir, "tokenizer.json"))
    questions, end = spoken_questions(cfg, corpus_dir, records)
    answers = answer_texts(params, cfg, questions, eos_id=end)
    return answers, [tok.decode([t for t in a.text_ids if t != end]) for a in answers]


def reference_answers(params, cfg, corpus_dir: str, records) -> list[np.ndarray]:
    """The LLM's states (T, d) on each record's reference answer (end token included), teacher-forced
    after its spoken question: what the speech decoder reads in training. Decoding from them measures
    the speech decoder alone, whatever answer the LLM would have generated."""
    tok = load_tokenizer(os.path.join(corpus_dir, "tokenizer.json"))
    states = []
    for r in records:
        mel, num_speech = _question(r, cfg)
        ids, answer = encode_dialogue(tok, TEMPLATES["tiny"], num_speech, r.assistant_text)
        states.append(np.asarray(_llm_states(params, mel[None], ids[None], cfg=cfg))[0, answer == 1])
    return states


def _question(record, cfg):
    """-> (log-mel (n_mels, frames) of the spoken question, its number of speech placeholders)."""
    mel = log_mel(load_audio(record.user_audio, record.id, max_seconds=30.0)[0], cfg.encoder.num_mel_bins)
    return mel, num_speech_frames(mel.shape[-1], cfg.adaptor.downsample)


@functools.partial(jax.jit, static_argnames="cfg")
def _llm_states(params, mel, ids, *, cfg):
    """mel (1, n_mels, frames), ids (1, L) -> the LLM's last hidden states (1, L, d)."""
    model = VocalNet(cfg)
    speech = model.apply({"params": params}, mel, method=VocalNet.encode_speech)
    return model.apply({"params": params}, ids, speech, method=VocalNet.llm_forward)[1]
