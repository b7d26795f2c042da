"The CPU precision benchmark (benchmarks/cpu_precision.py) runs end to end in its quick mode and writes what chapter 30 reads."
import importlib.util, json

import numpy as np
import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location('cpu_precision', ROOT / 'benchmarks' / 'cpu_precision.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def test_quick_run_writes_every_field(tmp_path):
    from margin_notes.loop import cpu_has_native_bf16
    res = _bench().main(['--quick', '--out', str(tmp_path / 'b.json')])
    saved = json.loads((tmp_path / 'b.json').read_text())
    assert set(saved['img_per_s']) == {'bare-fp32', 'bare-bf16-cl', 'engine'} and all(v > 0 for v in saved['img_per_s'].values())
    assert saved['bf16_over_fp32'] == res['bf16_over_fp32'] > 0
    # the engine picks bf16 + channels_last exactly where the CPU has native bf16
    assert saved['engine_precision'] == ({'amp': 'bf16', 'channels_last': True} if cpu_has_native_bf16() else {'amp': 'fp32', 'channels_last': False})
    assert 'engine_epoch_s' in saved['epoch'] or 'skipped' in saved['epoch']


def test_committed_results_are_a_full_run():
    "The committed run (if any) is a full run on this benchmark's shapes, with every ratio recomputable from its rounds."
    import statistics
    p = ROOT / 'results' / 'bench' / 'cpu-precision.json'
    if not p.exists(): return
    r = json.loads(p.read_text())
    assert not r['quick'] and r['batch'] == 128
    ips = r['img_per_s_rounds']
    assert r['bf16_over_fp32'] == statistics.median(a / b for a, b in zip(ips['bare-bf16-cl'], ips['bare-fp32']))
    assert r['bare_bf16_over_engine'] == statistics.median(a / b for a, b in zip(ips['bare-bf16-cl'], ips['engine']))


def test_precision_check_quick(tmp_path):
    "scripts/precision_check.py pairs an fp32 and an 'auto' run per seed on the same data and writes their difference."
    spec = importlib.util.spec_from_file_location('precision_check', ROOT / 'scripts' / 'precision_check.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    res = m.main(['--quick', '--epochs', '1', '--seeds', '0', '--out', str(tmp_path / 'p.json')])
    saved = json.loads((tmp_path / 'p.json').read_text())
    assert saved['runs']['fp32']['0']['precision'] == {'amp': 'fp32', 'channels_last': False}
    assert saved['diff_mean'] == res['diff_mean'] == saved['runs']['auto']['0']['overall'] - saved['runs']['fp32']['0']['overall']


def test_committed_precision_check_is_a_full_run():
    "The committed precision check (chapter 30 shows it) is a full run: real data, three seeds paired, every summary recomputable."
    from scipy.stats import ttest_rel
    p = ROOT / 'results' / 'precision' / 'cifar10jpeg-lt100.json'
    if not p.exists(): return
    r = json.loads(p.read_text())
    assert not r['quick'] and r['epochs'] >= 5 and r['seeds'] == [0, 1, 2]
    assert r['auto_precision'] == {'amp': 'bf16', 'channels_last': True}
    fp, au = ([r['runs'][k][str(s)] for s in r['seeds']] for k in ('fp32', 'auto'))
    assert all(x['precision'] == {'amp': 'fp32', 'channels_last': False} for x in fp)
    d = np.array([b['overall'] - a['overall'] for a, b in zip(fp, au)], dtype=np.float64)
    assert r['diff_mean'] == pytest.approx(d.mean(), abs=1e-12) and r['diff_std'] == pytest.approx(d.std(ddof=1), abs=1e-12)
    assert r['p_paired_t'] == pytest.approx(ttest_rel([b['overall'] for b in au], [a['overall'] for a in fp]).pvalue, rel=1e-9)
