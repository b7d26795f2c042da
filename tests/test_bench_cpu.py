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
    assert set(saved['img_per_s']) == {'bare-fp32', 'bare-fp32-cl', 'bare-bf16-cl', 'engine'} and all(v > 0 for v in saved['img_per_s'].values())
    assert saved['bf16_over_fp32'] == res['bf16_over_fp32'] > 0 and saved['fp32_cl_over_fp32'] > 0
    # the engine picks bf16 exactly where the CPU has native bf16, channels_last on every CPU, and is compared with that bare loop
    assert saved['native_bf16'] == cpu_has_native_bf16()
    assert saved['engine_precision'] == {'amp': 'bf16' if cpu_has_native_bf16() else 'fp32', 'channels_last': True}
    assert saved['bare_same'] == ('bare-bf16-cl' if cpu_has_native_bf16() else 'bare-fp32-cl')
    assert 'engine_epoch_s' in saved['epoch'] or 'skipped' in saved['epoch']
    # the CPU's bf16/AMX flags are recorded (chapter 30 names the units); every one is a bf16 or AMX flag
    assert isinstance(saved['machine']['cpu_flags'], list) and all('bf16' in f or f.startswith('amx') for f in saved['machine']['cpu_flags'])


@pytest.mark.parametrize('name', ['cpu-precision.json', 'cpu-precision-avx2.json', 'cpu-precision-earlier.json'])
def test_committed_results_are_a_full_run(name):
    "Each committed run (chapter 30 reads all three) is a full run on this benchmark's shapes, with every ratio recomputable from its rounds."
    import statistics
    p = ROOT / 'results' / 'bench' / name
    assert p.is_file(), f'{p} is not committed: chapter 30 reads it'
    r = json.loads(p.read_text())
    assert not r['quick'] and r['batch'] == 128
    ips = r['img_per_s_rounds']
    med = lambda a_, b_: statistics.median(a / b for a, b in zip(ips[a_], ips[b_]))
    assert r['bf16_over_fp32'] == med('bare-bf16-cl', 'bare-fp32')
    assert r['bare_bf16_over_engine'] == med('bare-bf16-cl', 'engine')
    if 'bare-fp32-cl' in ips:   # files written since the fp32 channels-last variant was added
        assert r['fp32_cl_over_fp32'] == med('bare-fp32-cl', 'bare-fp32') and r['bare_same_over_engine'] == med(r['bare_same'], 'engine')
        assert r['engine_precision']['amp'] == ('bf16' if r['native_bf16'] else 'fp32')
    if name.endswith('avx2.json'): assert r['machine']['cpu_capability'] == 'AVX2' and r['native_bf16'] is False
    if name == 'cpu-precision.json':   # chapter 30's goal line reads this file: a native-bf16 machine, in the current format
        assert r['native_bf16'] is True and 'bare-fp32-cl' in ips and 'avx512_bf16' in r['machine']['cpu_flags']


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
    assert p.is_file(), f'{p} is not committed: chapter 30 reads it'
    r = json.loads(p.read_text())
    assert not r['quick'] and r['epochs'] >= 5 and r['seeds'] == [0, 1, 2]
    assert r['auto_precision'] == {'amp': 'bf16', 'channels_last': True}
    fp, au = ([r['runs'][k][str(s)] for s in r['seeds']] for k in ('fp32', 'auto'))
    assert all(x['precision'] == {'amp': 'fp32', 'channels_last': False} for x in fp)
    d = np.array([b['overall'] - a['overall'] for a, b in zip(fp, au)], dtype=np.float64)
    assert r['diff_mean'] == pytest.approx(d.mean(), abs=1e-12) and r['diff_std'] == pytest.approx(d.std(ddof=1), abs=1e-12)
    assert r['p_paired_t'] == pytest.approx(ttest_rel([b['overall'] for b in au], [a['overall'] for a in fp]).pvalue, rel=1e-9)
