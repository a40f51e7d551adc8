"""Text tokenization (Hugging Face `tokenizers`) and the dialogue prompt with a speech placeholder.

The user turn holds one placeholder token; `encode_dialogue` replaces it by `SPEECH_PLACEHOLDER`
(-200, VocalNet's id) once per adaptor frame and the model overwrites those positions, in order,
with speech embeddings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data_pipelines.placeholders import SPEECH_PLACEHOLDER

# Special tokens of the small BPE trained for the `tiny` preset (ids 0.. in this order).
TINY_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<user>", "<assistant>", "<speech>")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """`user` contains `speech` exactly once; the answer follows `assistant` and ends with `end`."""

    user: str
    assistant: str
    end: str
    speech: str


TEMPLATES = {
    "tiny": PromptTemplate(user="<bos><user><speech>", assistant="<assistant>", end="<eos>", speech="<speech>"),
    "llama3": PromptTemplate(
        user="<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|reserved_special_token_0|><|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end="<|eot_id|>",
        speech="<|reserved_special_token_0|>",
    ),
}


def load_tokenizer(path: str) -> Tokenizer:
    """Loads a `tokenizer.json` (LLaMA, Qwen, or one written by `train_bpe`)."""
    return Tokenizer.from_file(path)


def train_bpe(texts: Iterable[str], vocab_size: int = 1024, path: str | None = None) -> Tokenizer:
    """Trains a byte-level BPE with `TINY_SPECIAL_TOKENS`; saves it as tokenizer.json at `path` if given."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # Any byte stays encodable.
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if path is not None:
        tok.save(path)
    return tok


def num_speech_frames(mel_frames: int, k: int = 5) -> int:
    """Adaptor frames for `mel_frames`: Whisper's stride-2 conv, then groups of `k` frames."""
    return (mel_frames + 1) // 2 // k


def speech_token_id(tok: Tokenizer, template: PromptTemplate) -> int:
    """Id of the placeholder; it must be a single known token of `tok`."""
    ids = tok.encode(template.speech, add_special_tokens=False).ids
    if len(ids) != 1 or tok.token_to_id(template.speech) is None:
        raise ValueError(f"speech placeholder {template.speech!r} is not a token of this tokenizer (got ids {ids})")
    return ids[0]


def encode_dialogue(
    tok: Tokenizer, template: PromptTemplate, num_speech: int, answer: str
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a prompt with `num_speech` placeholders, followed by the answer.

    Returns:
      ids: (L,) int32.
      loss_mask: (L,) int32, 1 on the answer and the end token (the positions the LLM predicts).
    """

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False).ids

    speech_id = speech_token_id(tok, template)
    user = encode(template.user)
    if user.count(speech_id) != 1:
        raise ValueError(f"template user turn {template.user!r} must hold {template.speech!r} exactly once")
    at = user.index(speech_id)
    prompt = user[:at] + [SPEECH_PLACEHOLDER] * num_speech + user[at + 1 :] + encode(template.assistant)
    target = encode(answer) + encode(template.end)
    ids = np.asarray(prompt + target, np.int32)
    loss_mask = np.concatenate([np.zeros(len(prompt), np.int32), np.ones(len(target), np.int32)])
    return ids, loss_mask


def encode_prompt(tok: Tokenizer, template: PromptTemplate, num_speech: int) -> tuple[list[int], int]:
    """The prompt alone (ids up to where the answer starts) and the id that ends an answer."""
    ids, loss_mask = encode_dialogue(tok, template, num_speech, "")
    end = tok.encode(template.end, add_special_tokens=False).ids
    if len(end) != 1:
        raise ValueError(f"template end {template.end!r} must be a single token of this tokenizer (got ids {end})")
    return ids[loss_mask == 0].tolist(), end[0]
