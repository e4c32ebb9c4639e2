"""FAST action tokenizer (pi0-FAST): DCT, round trips, file format, malformed sequences, id mapping."""

import json
import os

import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer, trainers

from vla_ros.errors import ActionDecodeError, CheckpointError, EngineError
from vla_ros.model import fast_tokenizer as ft

H, D = 50, 32  # pi0fast-tiny's horizon and action dim
SCALE = 10.0


def _smooth(rng, n, horizon=H, dims=D):
    """Sums of three low-frequency sines per dim, amplitude <= ~0.9 (normalized actions)."""
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    out = np.zeros((n, horizon, dims))
    for cycles in (0.5, 1.0, 2.0):
        amp = rng.uniform(-0.3, 0.3, (n, 1, dims))
        freq = cycles * rng.uniform(0.5, 1.0, (n, 1, dims))
        phase = rng.uniform(0.0, 2 * np.pi, (n, 1, dims))
        out += amp * np.sin(2 * np.pi * freq * t + phase)
    return out


def _noisy(rng, n, horizon=H, dims=D):
    return _smooth(rng, n, horizon, dims) + rng.normal(0.0, 0.05, (n, horizon, dims))


@pytest.fixture(scope='module')
def chunks():
    rng = np.random.default_rng(0)
    return np.concatenate([_smooth(rng, 150), _noisy(rng, 150)])


@pytest.fixture(scope='module')
def tok(chunks):
    return ft.FastActionTokenizer.train(chunks, vocab_size=256, scale=SCALE)


def _dct_definition(x):
    """Orthonormal DCT-II along axis 0 written out as sums (independent of dct_matrix)."""
    n = x.shape[0]
    out = np.zeros_like(x, dtype=np.float64)
    for k in range(n):
        w = np.sqrt(1.0 / n) if k == 0 else np.sqrt(2.0 / n)
        for t in range(n):
            out[k] += w * np.cos(np.pi * (2 * t + 1) * k / (2 * n)) * x[t]
    return out


def test_dct_is_orthonormal_dct2_along_time():
    x = np.random.default_rng(1).normal(size=(12, 3))
    np.testing.assert_allclose(ft.dct_time(x), _dct_definition(x), atol=1e-12)
    np.testing.assert_allclose(ft.idct_time(ft.dct_time(x)), x, atol=1e-12)
    c = ft.dct_matrix(12)
    np.testing.assert_allclose(c @ c.T, np.eye(12), atol=1e-12)
    # a constant signal lands in coefficient 0 only: time is axis 0, dims stay separate
    const = np.tile([1.0, -2.0, 0.5], (12, 1))
    np.testing.assert_allclose(ft.dct_time(const)[0], np.sqrt(12) * const[0], atol=1e-12)
    np.testing.assert_allclose(ft.dct_time(const)[1:], 0.0, atol=1e-12)


def test_dct_matches_scipy():
    fft = pytest.importorskip('scipy.fft')
    x = np.random.default_rng(2).normal(size=(50, 7))
    np.testing.assert_allclose(ft.dct_time(x), fft.dct(x, axis=0, norm='ortho'), atol=1e-12)
    np.testing.assert_allclose(ft.idct_time(x), fft.idct(x, axis=0, norm='ortho'), atol=1e-12)


@pytest.mark.parametrize('kind', ['smooth', 'noisy'])
def test_round_trip_within_quantization_step(tok, kind):
    # Rounding moves each DCT coefficient by at most 0.5 / scale. The inverse DCT is
    # orthonormal, so per action dim the L2 error over time is <= sqrt(H) * 0.5 / scale,
    # i.e. RMS over time <= 0.5 / scale (0.05 here), and each sample is off by at
    # most sqrt(H) * 0.5 / scale (Cauchy-Schwarz on a unit column of the DCT matrix).
    rng = np.random.default_rng(3)
    fresh = _smooth(rng, 8) if kind == 'smooth' else _noisy(rng, 8)  # not in the training set
    step = 0.5 / SCALE
    for chunk in fresh:
        ids = tok.encode(chunk)
        out = tok.decode(ids)
        assert out.shape == (H, D)
        err = out - chunk
        coeff_err = ft.dct_time(out) - ft.dct_time(chunk)
        assert np.abs(coeff_err).max() <= step + 1e-9
        assert np.sqrt((err ** 2).mean(axis=0)).max() <= step + 1e-9
        assert np.abs(err).max() <= np.sqrt(H) * step + 1e-9
        # and it is a quantization, not an identity: decoded coefficients sit on the 1/scale grid
        grid = ft.dct_time(out) * SCALE
        np.testing.assert_allclose(grid, np.round(grid), atol=1e-6)
    if kind == 'smooth':
        assert len(ids) < H * D / 4  # BPE compresses the mostly-zero high frequencies


def test_file_format_round_trip(tok, chunks, tmp_path):
    tok.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['processor_config.json', 'tokenizer.json']
    config = json.loads((tmp_path / 'processor_config.json').read_text())
    assert config == {'processor_class': 'UniversalActionProcessor', 'scale': 10, 'min_token': tok.min_token,
                      'vocab_size': 256, 'time_horizon': H, 'action_dim': D}
    assert tok.min_token == int(np.around(np.einsum('kt,ntd->nkd', ft.dct_matrix(H), chunks) * SCALE).min())
    # code shipped beside the files is never run
    (tmp_path / 'processing_action_tokenizer.py').write_text('raise RuntimeError("must not run")\n')
    loaded = ft.FastActionTokenizer.load(str(tmp_path))
    assert (loaded.scale, loaded.min_token) == (SCALE, tok.min_token)
    assert (loaded.time_horizon, loaded.action_dim) == (H, D)
    for chunk in chunks[::50]:
        ids = tok.encode(chunk)
        assert loaded.encode(chunk) == ids
        np.testing.assert_array_equal(loaded.decode(ids), tok.decode(ids))


def test_train_writes_files_and_is_deterministic(chunks, tmp_path):
    a = ft.FastActionTokenizer.train(chunks[:60], vocab_size=256, scale=SCALE, directory=str(tmp_path))
    b = ft.FastActionTokenizer.train(chunks[:60], vocab_size=256, scale=SCALE)
    assert a.tokenizer.to_str() == b.tokenizer.to_str()
    assert ft.FastActionTokenizer.load(str(tmp_path)).encode(chunks[0]) == b.encode(chunks[0])
    with pytest.raises(ValueError, match='vocab_size 16 is smaller'):
        ft.FastActionTokenizer.train(chunks[:10], vocab_size=16, scale=SCALE)


def test_load_reports_missing_files_and_fields(tok, tmp_path):
    with pytest.raises(CheckpointError, match='processor_config.json is missing'):
        ft.FastActionTokenizer.load(str(tmp_path))
    tok.save(str(tmp_path))
    config = json.loads((tmp_path / 'processor_config.json').read_text())
    del config['min_token']
    (tmp_path / 'processor_config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match='"min_token" is missing'):
        ft.FastActionTokenizer.load(str(tmp_path))


def test_published_config_with_null_shape_needs_horizon_and_dim(tok, chunks, tmp_path):
    tok.save(str(tmp_path))
    config = json.loads((tmp_path / 'processor_config.json').read_text())
    config.update(time_horizon=None, action_dim=None)  # as in the published universal tokenizer
    (tmp_path / 'processor_config.json').write_text(json.dumps(config))
    ids = tok.encode(chunks[0])
    bare = ft.FastActionTokenizer.load(str(tmp_path))
    with pytest.raises(ValueError, match='time_horizon'):
        bare.decode(ids)
    np.testing.assert_array_equal(bare.decode(ids, time_horizon=H, action_dim=D), tok.decode(ids))
    given = ft.FastActionTokenizer.load(str(tmp_path), time_horizon=H, action_dim=D)
    np.testing.assert_array_equal(given.decode(ids), tok.decode(ids))


def test_malformed_sequences_raise_named_error(tok, chunks):
    ids = tok.encode(chunks[0])
    cases = {
        'truncated': (ids[:-1], r'decode to \d+ DCT coefficients, expected 50 x 32 = 1600'),
        'one token': (ids[:1], 'expected 50 x 32'),
        'too long': (ids + ids[:3], 'expected 50 x 32'),
        'empty': ([], 'no action tokens'),
        'out of vocabulary': (ids[:5] + [tok.num_ids] + ids[5:], f'token {tok.num_ids} at position 5'),
        'negative id': ([-1] + ids, 'outside the FAST vocabulary'),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(ActionDecodeError, match=message) as info:
            tok.decode(bad)
        assert isinstance(info.value, EngineError), name
        assert '\n' not in str(info.value), name
    # a decode for a shorter horizon is a length error, not a silent truncation
    with pytest.raises(ActionDecodeError, match='1600 DCT coefficients, expected 10 x 32 = 320'):
        tok.decode(ids, time_horizon=10)


def test_cut_multibyte_symbol_raises_named_error():
    # With scale 60 the symbols go past 127, so chr(k) is two UTF-8 bytes in the byte-level
    # BPE; a lone lead byte ('\xc2' is byte-level 'Â') decodes to U+FFFD and must not pass.
    rng = np.random.default_rng(4)
    tok = ft.FastActionTokenizer.train(_smooth(rng, 40, 10, 4), vocab_size=1024, scale=60.0)
    lead = tok.tokenizer.token_to_id('\u00c2')
    assert lead is not None
    ids = tok.encode(_smooth(rng, 1, 10, 4)[0])
    with pytest.raises(ActionDecodeError, match='whole symbols'):
        tok.decode(ids + [lead])


def test_encode_refuses_unrepresentable_chunks(tok):
    with pytest.raises(ValueError, match='below min_token'):
        tok.encode(np.full((H, D), -5.0))  # not normalized: coefficient 0 is -5 * sqrt(50) * 10
    with pytest.raises(ValueError, match='cannot represent'):
        tok.encode(np.full((H, D), 5.0))
    with pytest.raises(ValueError, match='chunk shape'):
        tok.encode(np.zeros((H, D + 1)))


def test_paligemma_id_mapping():
    vocab = 257152
    assert ft.fast_to_paligemma(0, vocab).item() == 257023  # 257152 - 1 - 128
    np.testing.assert_array_equal(ft.fast_to_paligemma([0, 1, 255], vocab), [257023, 257022, 256768])
    fast = np.arange(1024)
    pg = ft.fast_to_paligemma(fast, vocab)
    assert pg.max() == vocab - 1 - 128 and pg.min() == vocab - 128 - 1024
    np.testing.assert_array_equal(ft.paligemma_to_fast(pg, vocab, fast_vocab_size=1024), fast)
    np.testing.assert_array_equal(ft.paligemma_to_fast([257023, 256768], vocab, skip=128), [0, 255])
    # a text token or one of the 128 reserved ids is not an action token
    for pg_id in (1000, 257024, vocab - 1, 257023 - 256):
        with pytest.raises(ActionDecodeError, match=f'generated token {pg_id} at position 1'):
            ft.paligemma_to_fast([257023, pg_id], vocab, fast_vocab_size=256)


def _reference_fit(action_data, scale, vocab_size):
    """The reference processor's fit(), re-implemented from its source (scipy DCT, ByteLevelBPETokenizer)."""
    fft = pytest.importorskip('scipy.fft')
    dct_tokens = [fft.dct(a, axis=0, norm='ortho').flatten() for a in action_data]
    max_token = int(np.around(np.concatenate(dct_tokens) * scale).max())
    min_token = int(np.around(np.concatenate(dct_tokens) * scale).min())
    bpe = ByteLevelBPETokenizer()
    alphabet = [chr(i) for i in range(max_token - min_token + 1)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[], initial_alphabet=alphabet, max_token_length=10000)
    strings = (''.join(map(chr, (np.around(t * scale) - min_token).astype(int))) for t in dct_tokens)
    bpe._tokenizer.train_from_iterator(strings, trainer=trainer)
    return bpe._tokenizer, min_token


def _reference_call(bpe, min_token, scale, chunk):
    """The reference processor's __call__ for one chunk: DCT along time of [batch, time, dim]."""
    fft = pytest.importorskip('scipy.fft')
    coeff = np.around(fft.dct(chunk[None], axis=1, norm='ortho') * scale)[0]
    return bpe.encode(''.join(map(chr, np.maximum(coeff.flatten() - min_token, 0).astype(int)))).ids


def test_ids_match_reference_algorithm(chunks, tok):
    bpe, min_token = _reference_fit(list(chunks), SCALE, 256)
    assert min_token == tok.min_token
    assert json.loads(bpe.to_str()) == json.loads(tok.tokenizer.to_str())
    rng = np.random.default_rng(5)
    for chunk in np.concatenate([_smooth(rng, 4), _noisy(rng, 4)]):
        assert tok.encode(chunk) == _reference_call(bpe, min_token, SCALE, chunk)
