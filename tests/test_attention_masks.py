"""Attention masks against a loop-by-loop reference written from the rules in words."""

import itertools

import jax
import numpy as np
import pytest

from mdm_jax.diffusion.attention_masks import autoregressive_mask, block_diffusion_mask, draw_streaming


def reference(text_len, speech_len, t, n_speech, streaming, block, text_per_block, diffusion):
    """One sample, dense. Returns (mask (n, n), positions (n,), valid (n,)) for
    `[BOS][text (t)][SOS][x_t (n_speech)][x_0 (n_speech)]` (diffusion) or
    `[BOS][text (t)][SOS][speech (n_speech)]` (AR)."""
    segments = [("bos", 0), *[("text", i) for i in range(t)], ("sos", 0)]
    segments += [("noisy" if diffusion else "speech", i) for i in range(n_speech)]
    if diffusion:
        segments += [("clean", i) for i in range(n_speech)]
    n = len(segments)

    def is_valid(kind, i):
        return i < text_len if kind == "text" else i < speech_len if kind in ("noisy", "clean", "speech") else True

    def visible_text(kind, i):  # how many text positions a query sees
        if kind == "bos":
            return 0
        if kind == "text":
            return i + 1  # causal
        chunk = 0 if kind == "sos" else i // block
        return (chunk + 1) * text_per_block if streaming else t

    mask = np.zeros((n, n), bool)
    for a, (qk, qi) in enumerate(segments):
        for c, (kk, ki) in enumerate(segments):
            if a == c:
                mask[a, c] = True  # everyone sees itself (padded rows stay finite)
                continue
            if not (is_valid(qk, qi) and is_valid(kk, ki)):
                continue
            if kk == "bos":
                ok = True
            elif kk == "text":
                ok = ki < visible_text(qk, qi)
            elif kk == "sos":
                ok = qk not in ("bos", "text")
            elif kk == "speech":
                ok = qk == "speech" and ki <= qi
            elif kk == "noisy":  # only its own noisy block, both ways
                ok = qk == "noisy" and ki // block == qi // block
            else:  # clean: noisy block b sees clean blocks < b; clean block b sees clean blocks <= b
                ok = (qk == "noisy" and ki // block < qi // block) or (qk == "clean" and ki // block <= qi // block)
            mask[a, c] = ok

    positions, p = np.zeros(n, int), 0
    for a, (kind, i) in enumerate(segments):  # valid positions are numbered 0, 1, ...; x_0 repeats x_t
        if kind == "clean":
            positions[a] = positions[segments.index(("noisy", i))]
        else:
            positions[a] = p
            p += is_valid(kind, i)
    return mask, positions, np.array([is_valid(*s) for s in segments])


_diffusion_mask = jax.jit(block_diffusion_mask, static_argnames=("block_size", "text_per_block"))
_ar_mask = jax.jit(autoregressive_mask, static_argnames=("chunk_size", "text_per_chunk"))


def build(diffusion, text_len, speech_len, t, n_speech, streaming, block, tpb):
    text_valid = np.arange(t)[None] < np.asarray(text_len)[:, None]
    speech_valid = np.arange(n_speech)[None] < np.asarray(speech_len)[:, None]
    if diffusion:
        mask, pos = _diffusion_mask(
            text_valid, speech_valid, np.asarray(streaming), block_size=block, text_per_block=tpb
        )
    else:
        mask, pos = _ar_mask(text_valid, speech_valid, np.asarray(streaming), chunk_size=block, text_per_chunk=tpb)
    return np.asarray(mask.dense()), np.asarray(pos)


@pytest.mark.parametrize("diffusion", [True, False])
def test_matches_reference_on_random_shapes(diffusion):
    rng = np.random.default_rng(0 if diffusion else 1)
    for _ in range(6):
        b, t, n_speech = 8, rng.integers(1, 12), rng.integers(1, 20)
        block, tpb = rng.integers(1, 6), rng.integers(1, 4)
        text_len, speech_len = rng.integers(0, t + 1, b), rng.integers(0, n_speech + 1, b)
        streaming = rng.random(b) < 0.5
        mask, pos = build(diffusion, text_len, speech_len, t, n_speech, streaming, block, tpb)
        for i in range(b):
            ref_mask, ref_pos, valid = reference(
                text_len[i], speech_len[i], t, n_speech, streaming[i], block, tpb, diffusion
            )
            np.testing.assert_array_equal(mask[i], ref_mask)
            np.testing.assert_array_equal(pos[i][valid], ref_pos[valid])  # padded positions: any value


def test_streaming_rule_at_chunk_boundaries():
    t, n_speech = 40, 90  # 6 chunks of 15 speech tokens; text long enough for every chunk
    for diffusion in (True, False):
        mask, _ = build(diffusion, [t], [n_speech], t, n_speech, [True], 15, 5)
        text = slice(1, 1 + t)
        speech_rows = [2 + t + i for i in range(n_speech)] + (
            [2 + t + n_speech + i for i in range(n_speech)] if diffusion else []
        )
        for row in speech_rows:
            i = (row - 2 - t) % n_speech
            seen = np.flatnonzero(mask[0, row, text])
            assert seen.tolist() == list(range(min(t, (i // 15 + 1) * 5))), (diffusion, i)
            assert mask[0, row, 0]  # BOS always visible
        # explicit boundaries: speech token 14 sees text < 5, token 15 sees text < 10
        assert mask[0, 2 + t + 14, 1 + 4] and not mask[0, 2 + t + 14, 1 + 5]
        assert mask[0, 2 + t + 15, 1 + 9] and not mask[0, 2 + t + 15, 1 + 10]
        assert np.flatnonzero(mask[0, 1 + t, text]).tolist() == list(range(5))  # SOS is in chunk 0
        full, _ = build(diffusion, [t], [n_speech], t, n_speech, [False], 15, 5)
        assert full[0, 2 + t :, text].all()  # non-streaming: all text


def test_clean_stream_never_sees_noisy_stream_and_positions_are_shared():
    t, n_speech = 7, 33
    mask, pos = build(True, [5, 7], [33, 20], t, n_speech, [True, False], 15, 5)
    noisy, clean = slice(2 + t, 2 + t + n_speech), slice(2 + t + n_speech, 2 + t + 2 * n_speech)
    assert not mask[:, clean, noisy].any()
    np.testing.assert_array_equal(pos[:, noisy], pos[:, clean])
    assert pos[0, 2 + t] == 1 + 5 + 1  # speech starts right after the 5 valid text positions and SOS


def test_every_row_attends_somewhere():
    mask, _ = build(True, [0, 3], [0, 4], 3, 8, [True, False], 3, 1)
    assert mask.any(-1).all()


def test_draw_streaming_rate():
    s = np.asarray(draw_streaming(jax.random.key(0), 20000, 0.3))
    assert s.dtype == bool and abs(s.mean() - 0.3) < 0.015


def test_vectorised_forward_equals_blockwise_forward():
    """The [x_t ; x_0] pass gives every x_t block the logits it gets when run alone after its
    clean prefix (the state of block-autoregressive decoding with a KV cache)."""
    from flax import linen as nn

    from mdm_jax.config.model import SpeechDecoderConfig
    from mdm_jax.model.speech_decoder import SpeechDecoder

    cfg = SpeechDecoderConfig(
        talker="vocalnet", num_units=20, d_model=32, num_heads=4, num_kv_heads=2, ffn_dim=64, prenn_layers=1,
        num_layers=2, mtp_modules=0
    )
    bs, tpb, t, n_speech = 4, 2, 6, 10
    text_len, speech_len, streaming = np.array([6, 4]), np.array([10, 7]), np.array([True, False])
    rng = np.random.default_rng(0)
    text = rng.normal(size=(2, t, cfg.d_model)).astype(np.float32)
    x0 = rng.integers(0, cfg.num_units, (2, n_speech))
    xt = np.where(rng.random((2, n_speech)) < 0.5, cfg.mask_id, x0)
    sos = np.full((2, 1), cfg.sos_id)

    model = SpeechDecoder(cfg)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), text, np.concatenate([sos, xt, x0], 1)))
    params = jax.tree.map(lambda p: rng.normal(0, 0.5, p.shape).astype(np.float32), shapes)  # any leak shows
    apply = jax.jit(lambda text, tokens, mask, pos: model.apply(params, text, tokens, mask, pos)[0])

    mask, pos = build(True, text_len, speech_len, t, n_speech, streaming, bs, tpb)
    vectorised = np.asarray(apply(text, np.concatenate([sos, xt, x0], 1), mask, pos))[:, 1 : 1 + n_speech]

    # One run per (sample, block): [BOS][text][SOS][x_0 blocks < b][x_t block b], padded to one shape.
    # In words: a slot sees every valid slot of an earlier group and of its own group, where BOS and
    # each text position are their own group and each speech block is one group; a streaming speech
    # slot of block c (SOS: c = 0) sees only text < (c + 1)·tpb. Positions number the valid slots.
    num_blocks = -(-n_speech // bs)
    tokens, masks, positions, wanted = [], [], [], []
    for i, b in itertools.product(range(2), range(num_blocks)):
        block = slice(b * bs, min((b + 1) * bs, n_speech))
        speech = np.concatenate([x0[i, : b * bs], xt[i, block]])
        speech_ok = np.arange(len(speech)) < speech_len[i]
        speech_block = np.arange(len(speech)) // bs
        slots = [("bos", 0, True), *[("text", j, j < text_len[i]) for j in range(t)], ("sos", 0, True)]
        slots += [("speech", c, ok) for c, ok in zip(speech_block, speech_ok)]
        slots += [("pad", 0, False)] * (2 + t + n_speech - len(slots))
        group = lambda kind, j: {"bos": 0, "text": 1 + j, "sos": 1 + t}.get(kind, 2 + t + j)
        m = np.eye(len(slots), dtype=bool)
        for a, (qk, qj, qok) in enumerate(slots):
            for c, (kk, kj, kok) in enumerate(slots):
                if qok and kok and group(kk, kj) <= group(qk, qj):
                    limit = ((0 if qk == "sos" else qj) + 1) * tpb if streaming[i] else t
                    m[a, c] = not (kk == "text" and qk in ("sos", "speech") and kj >= limit)
        tokens.append(np.concatenate([sos[i], speech, np.full(1 + n_speech - 1 - len(speech), cfg.pad_id)]))
        masks.append(m)
        positions.append(np.cumsum([ok for _, _, ok in slots]) - 1)
        wanted.append((i, block, slice(1 + b * bs, 1 + b * bs + block.stop - block.start)))
    separate = np.asarray(apply(np.repeat(text, num_blocks, 0), np.stack(tokens), np.stack(masks), np.stack(positions)))

    for r, (i, block, cols) in enumerate(wanted):
        ok = np.arange(block.start, block.stop) < speech_len[i]
        np.testing.assert_allclose(vectorised[i, block][ok], separate[r, cols][ok], atol=1e-4, rtol=1e-4)

    leaky = mask.copy()  # sanity: letting x_t see its own clean block changes the logits
    leaky[:, 2 + t : 2 + t + n_speech, 2 + t + n_speech : 2 + t + 2 * n_speech] |= np.kron(
        np.eye(num_blocks, dtype=bool), np.ones((bs, bs), bool)
    )[:n_speech, :n_speech]
    broken = np.asarray(apply(text, np.concatenate([sos, xt, x0], 1), leaky, pos))[:, 1 : 1 + n_speech]
    assert np.abs(broken - vectorised).max() > 1e-2
