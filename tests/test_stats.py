"""Tests for margin_notes.stats.ClassStats (chapter 03_class_stats)."""
import math

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings, strategies as st

from margin_notes.core import value_checks
from margin_notes.stats import ClassStats, naive_class_stats as naive_stream


def make_stream(seed, K, D, B, nb, absent=(), scale=3.0):
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([c for c in range(K) if c not in absent] or [0])
    out = []
    for _ in range(nb):
        y = allowed[torch.randint(0, len(allowed), (B,), generator=g)]
        out.append((torch.randn(B, D, generator=g, dtype=torch.float64) * scale + 1.0, y))
    return out


@pytest.mark.parametrize('p,mode', [(2, 'scalar'), (5, 'scalar'), (3.5, 'scalar'), (2, 'moment')])
def test_matches_naive_loop(p, mode):
    K, D = 7, 5
    batches = make_stream(0, K, D, 9, 6, absent=(3,))
    s = ClassStats(K, momentum=0.8, p=p, mode=mode, feature_dim=D).double()
    for f, y in batches:
        s.update(f, y)
    mu, sp, init = naive_stream(batches, K, 0.8, p, mode)
    torch.testing.assert_close(s.mean_norm_sq, mu, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s.spread, sp, rtol=1e-10, atol=1e-10)
    assert s.initialized.tolist() == init.tolist()
    assert not s.initialized[3]
    torch.testing.assert_close(s.variability, mu + sp)


@settings(max_examples=30, deadline=None)
@given(K=st.integers(1, 1000), D=st.integers(1, 5), B=st.integers(1, 24), nb=st.integers(1, 3),
       rho=st.floats(0.0, 0.99), seed=st.integers(0, 10_000), p=st.sampled_from([2.0, 5.0]))
def test_property_matches_naive(K, D, B, nb, rho, seed, p):
    batches = make_stream(seed, K, D, B, nb)
    s = ClassStats(K, momentum=rho, p=p).double()
    for f, y in batches:
        s.update(f, y)
    mu, sp, init = naive_stream(batches, K, rho, p)
    torch.testing.assert_close(s.mean_norm_sq, mu, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s.spread, sp, rtol=1e-9, atol=1e-9)
    assert s.initialized.tolist() == init.tolist()
    assert (s.spread >= 0).all()
    # mean_spread averages over initialised classes only
    torch.testing.assert_close(s.mean_spread(), sp[init].mean())


def test_first_observation_initialises_and_absent_classes_keep_values():
    s = ClassStats(4, momentum=0.5)
    s.update(torch.tensor([[2.0, 0.0], [4.0, 0.0]]), torch.tensor([1, 1]))
    assert s.initialized.tolist() == [False, True, False, False]
    torch.testing.assert_close(s.mean_norm_sq[1], torch.tensor(9.0))   # mean (3, 0)
    torch.testing.assert_close(s.spread[1], torch.tensor(1.0))
    # a zero-valued first observation still counts as initialised (no test on the value)
    s.update(torch.zeros(1, 2), torch.tensor([0]))
    assert s.initialized[0] and s.mean_norm_sq[0] == 0
    s.update(torch.ones(2, 2), torch.tensor([0, 0]))
    torch.testing.assert_close(s.mean_norm_sq[0], torch.tensor(1.0))   # 0.5 * 0 + 0.5 * 2
    torch.testing.assert_close(s.mean_norm_sq[1], torch.tensor(9.0))   # class 1 absent: untouched


def test_eval_mode_and_detach():
    s = ClassStats(3)
    s.update(torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
    ref = {k: v.clone() for k, v in s.state_dict().items()}
    s.eval()
    s.update(torch.randn(6, 2) * 100, torch.tensor([0, 1, 2, 0, 1, 2]))
    for k, v in s.state_dict().items():
        assert torch.equal(v, ref[k])
    s.train()
    x = torch.randn(6, 2, requires_grad=True)
    s.update(x * 3, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert not any(b.requires_grad for b in s.buffers())


def test_state_dict_round_trip_and_continuation():
    batches = make_stream(1, 5, 3, 8, 6)
    a = ClassStats(5, momentum=0.7, mode='moment', feature_dim=3)
    for f, y in batches[:3]:
        a.update(f.float(), y)
    b = ClassStats(5, momentum=0.7, mode='moment', feature_dim=3)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {'mean_norm_sq', 'spread', 'initialized', 'mean', 'sq_norm'}
    for f, y in batches[3:]:
        a.update(f.float(), y)
        b.update(f.float(), y)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


def test_reduced_precision_inputs_accumulate_in_float32():
    s = ClassStats(3)
    for dt in (torch.bfloat16, torch.float16):
        s.update((torch.randn(8, 4) * 200).to(dt), torch.randint(0, 3, (8,)))
    assert s.spread.dtype == torch.float32 and torch.isfinite(s.variability).all()


def test_reset():
    s = ClassStats(3)
    s.update(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    s.reset()
    assert not s.initialized.any() and (s.variability == 0).all()


def test_bad_input():
    s = ClassStats(3, feature_dim=2)
    with pytest.raises(ValueError, match=r'\[0, 3\)'):
        s.update(torch.randn(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match='rows'):
        s.update(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='NaN'):
        s.update(torch.tensor([[0.0, float('nan')]]), torch.tensor([0]))
    with pytest.raises(ValueError, match='feature_dim'):
        s.update(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='integer'):
        s.update(torch.randn(2, 2), torch.tensor([0.0, 1.0]))
    for kw in (dict(momentum=1.0), dict(momentum=-0.1), dict(p=0.5), dict(mode='x'), dict(mode='moment')):
        with pytest.raises(ValueError):
            ClassStats(3, **kw)
    with pytest.raises(ValueError):
        ClassStats(0)


def test_sync_sums_before_update(monkeypatch):
    """With distributed 'initialised', the stacked sums go through all_reduce before the update.

    A fake all_reduce that doubles its input simulates two processes holding the same batch: the
    result must equal the statistics of the concatenated batch (same means and spreads), and the
    scalar (p=2) path must call all_reduce exactly once, the p=5 path twice.
    """
    calls = []

    def fake_all_reduce(t, op=None, group=None):
        calls.append(tuple(t.shape))
        t.mul_(2)

    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'all_reduce', fake_all_reduce)
    f, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 4, (10,))
    for p, n_calls in ((2, 1), (5, 2)):
        calls.clear()
        s = ClassStats(4, p=p).double()
        s.update(f, y)
        assert len(calls) == n_calls and calls[0] == (4, 5)
        monkeypatch.setattr(dist, 'is_initialized', lambda: False)
        ref = ClassStats(4, p=p).double()
        ref.update(torch.cat([f, f]), torch.cat([y, y]))
        monkeypatch.setattr(dist, 'is_initialized', lambda: True)
        torch.testing.assert_close(s.mean_norm_sq, ref.mean_norm_sq)
        torch.testing.assert_close(s.spread, ref.spread)
    calls.clear()
    ClassStats(4, sync=False).update(f.float(), y)
    assert calls == []


def test_real_single_process_gloo_group(tmp_path):
    """The real all_reduce call path, in a one-process gloo group (the result equals the unsynced one)."""
    if not dist.is_available():
        pytest.skip('torch.distributed not available')
    if dist.is_initialized():
        pytest.skip('a process group is already initialised')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        f, y = torch.randn(12, 3), torch.randint(0, 5, (12,))
        a, b = ClassStats(5), ClassStats(5, sync=False)
        a.update(f, y)
        b.update(f, y)
        torch.testing.assert_close(a.variability, b.variability)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_update_has_no_host_sync():
    s = ClassStats(10, p=5).cuda()
    f, y = torch.randn(32, 8, device='cuda'), torch.randint(0, 10, (32,), device='cuda')
    torch.cuda.set_sync_debug_mode('error')
    try:
        s.update(f, y)
        s.mean_spread()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert s.initialized.any().item()


@pytest.mark.parametrize('mode,p', [('scalar', 2), ('scalar', 5), ('moment', 2)])
def test_bad_batches_never_enter_the_ema_with_checks_off(mode, p):
    """NaN, inf and finite-but-overflowing (1e20: its square overflows float32) batches are skipped per class."""
    K, D = 4, 3
    clean = make_stream(1, K, D, 12, 4)
    clean = [(f.float(), y) for f, y in clean]
    s = ClassStats(K, momentum=0.7, p=p, mode=mode, feature_dim=D)
    y_bad = torch.arange(12) % K
    with value_checks(False):                                 # the accelerator path: no host reads
        s.update(*clean[0])
        for v in (float('nan'), float('inf'), -float('inf'), 1e20):
            s.update(torch.full((12, D), v), y_bad)
            assert s.last_skipped.all()
            assert torch.isfinite(s.mean_norm_sq).all() and torch.isfinite(s.spread).all()
        for f, y in clean[1:]:
            s.update(f, y)
    mu, sp, init = naive_stream(clean, K, 0.7, p, mode)       # EMA of the clean batches only
    torch.testing.assert_close(s.mean_norm_sq.double(), mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.spread.double(), sp, rtol=1e-5, atol=1e-4)
    assert s.initialized.tolist() == init.tolist()
    assert s.skipped.tolist() == [4] * K and 'skipped' not in s.state_dict()


def test_one_bad_row_skips_only_its_class_and_fp16_features_do_not_overflow():
    s = ClassStats(3)
    f = torch.randn(6, 2); f[1, 1] = float('inf')
    with value_checks(False):
        s.update(f, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert s.initialized.tolist() == [True, False, True] and s.last_skipped.tolist() == [False, True, False]
    # fp16 features of size 300 (squared norm 9e4 > fp16 max 65504) are squared in float32
    s16 = ClassStats(1).update(torch.full((4, 2), 300.0, dtype=torch.float16), torch.zeros(4, dtype=torch.uint8))
    torch.testing.assert_close(s16.mean_norm_sq, torch.tensor([1.8e5]))
    assert ClassStats(2).half().spread.dtype == torch.float32
