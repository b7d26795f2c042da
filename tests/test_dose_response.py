"""scripts/dose_response.py: the dosed margins are what they claim to be (against MR²'s own rule and naive float64
arithmetic), and the smoke run writes its results and per-image predictions only where it is told."""
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
from margin_notes.mr2 import MR2Loss  # noqa: E402
from margin_notes.registry import METHODS, unregister_method  # noqa: E402


@pytest.fixture(scope='module')
def D():
    "Import the script for this module only: it registers its own methods, which must not leak into other tests' registry."
    before = set(METHODS)
    sys.path.insert(0, str(ROOT / 'scripts'))
    try:
        import dose_response
        yield dose_response
    finally:
        for name in set(METHODS) - before: unregister_method(name)
        sys.path.remove(str(ROOT / 'scripts'))
        for mod in ('dose_response', 'referee_experiments'): sys.modules.pop(mod, None)


def _fed(loss, seed=0, K=5, D_=8, steps=4):
    "Run a few training steps so every class has statistics; classes get different spreads."
    g = torch.Generator().manual_seed(seed)
    loss.train()
    for _ in range(steps):
        y = torch.arange(K).repeat(6)
        f = torch.randn(len(y), D_, generator=g) * (1 + y[:, None].float()) + y[:, None].float()
        loss(torch.randn(len(y), K, generator=g), y, f)
    return loss


def test_cube_root_dose_is_mr2s_rule(D):
    # p = 1/3 on A is MR²'s own margins (with lambda = 0) when no floor binds
    a, b = _fed(D.DoseMR2Loss(5, stat='A', power=1 / 3)), _fed(MR2Loss(5, lam=0.0))
    torch.testing.assert_close(a.gammas().double(), b.gammas().double(), rtol=1e-5, atol=1e-6)


def test_power_dose_against_float64(D):
    m = _fed(D.DoseMR2Loss(5, stat='A', power=2.0, margin_floor=0.0))
    v = m.stats.variability.double().numpy()
    want = v ** 2 / np.mean(v ** 2)                                  # mean margin 1
    np.testing.assert_allclose(m.gammas().double().numpy(), want, rtol=1e-5)
    assert len(m.trace) == 4 and m.trace[-1].shape == (5,)


def test_fixed_ratio_and_reversal(D):
    m = _fed(D.DoseMR2Loss(5, stat='spread', ratio=4.0))
    g = m.gammas().double()
    assert abs(float(g.max() / g.min()) - 4.0) < 1e-5 and abs(float(g.mean()) - 1.0) < 1e-6
    s = m.stats.spread.double()
    assert torch.equal(g.argsort(), s.argsort())                      # the largest spread gets the largest margin
    r = _fed(D.DoseMR2Loss(5, stat='spread', ratio=4.0, direction=-1)).gammas().double()
    assert torch.equal(r.argsort(), s.argsort().flip(0))


def test_bad_options_refused(D):
    with pytest.raises(ValueError, match='stat'): D.DoseMR2Loss(3, stat='mean')
    with pytest.raises(ValueError, match='direction'): D.DoseMR2Loss(3, direction=0)


def test_smoke_run(D, tmp_path):
    from margin_notes.data import load_dataset
    try: load_dataset('fmnist', max_per_class=1)
    except (FileNotFoundError, OSError, ValueError): pytest.skip('Fashion-MNIST is not installed')
    r = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'dose_response.py'), '--smoke', str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / 'fmnist-lt100.json').read_text())
    assert set(res['summary']) == {c[0] for c in D.CONFIGS} and res['smoke'] is True
    rec = res['runs']['A ratio 2'][0]
    assert abs(rec['gamma_ratio_final'] - 2.0) < 1e-4 and len(rec['gamma_per_epoch']) == 1
    z = np.load(tmp_path / 'fmnist-lt100-predictions.npz')
    assert z['predictions'].shape == (len(D.CONFIGS), len(z['labels']))


def test_dbm_scale_grid_smoke(D, tmp_path):
    from margin_notes.data import load_dataset
    try: load_dataset('fmnist', max_per_class=1)
    except (FileNotFoundError, OSError, ValueError): pytest.skip('Fashion-MNIST is not installed')
    r = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'dose_response.py'), '--grid', 'dbm-scale', '--smoke', str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / 'dbm-scale-fmnist-lt100.json').read_text())
    assert set(res['chosen_on_validation']) == {'BS cosine', 'DBM'} and res['configs']['BS cosine s=8']['overrides'] == {'head': 'cosine', 'cosine_scale': 8.0}
    assert res['chosen_on_validation']['DBM'] in {f'DBM s={s:g}' for s in D.SCALES}
