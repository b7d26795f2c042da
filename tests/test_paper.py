"Tests of margin_notes.paper: the published numbers, 'not run' for missing runs, fake results folders rendered."
import json
import math

import numpy as np
import pytest

from margin_notes import paper as P


def _write(folder, pca, dataset='cifar100', epochs=200, device='cpu', smoke=False, report=None):
    folder.mkdir(parents=True, exist_ok=True)
    pca = [float(a) for a in pca]
    rep = report if report is not None else {'overall': float(np.mean(pca))}
    (folder / 'results.json').write_text(json.dumps({
        'name': folder.name, 'dataset': dataset, 'epochs': epochs, 'device': device,
        'per_class_accuracy': pca, 'report': rep, 'config': {'dataset': dataset, 'epochs': epochs, 'smoke': smoke}}))
    return folder


# --- the numbers match the papers (spot checks; each would fail on a typo) ---
@pytest.mark.parametrize('table,method,metric,value', [
    (P.MR2_TABLE1A, 'ERM', 'overall', 70.9), (P.MR2_TABLE1A, 'MR²', 'hard', 61.9),
    (P.MR2_TABLE1A, 'FairDRO', 'easy', 85.7), (P.MR2_TABLE1A, 'LfF', 'hard', 53.7),
    (P.MR2_TABLE1B, 'MR²', 'overall', 76.9), (P.MR2_TABLE1B, 'DRO', 'medium', 79.3),
    (P.MR2_TABLE1B, 'ERM', 'hard', 56.4),
    (P.MARC_TABLE2['cifar10-lt100'], 'MARC', 'overall', 85.3), (P.MARC_TABLE2['cifar10-lt200'], 'MARC', 'overall', 81.1),
    (P.MARC_TABLE2['cifar100-lt100'], 'MARC', 'overall', 50.8), (P.MARC_TABLE2['cifar100-lt200'], 'MARC', 'overall', 47.4),
    (P.MARC_TABLE2['cifar100-lt100'], 'Softmax', 'overall', 45.3), (P.MARC_TABLE2['cifar10-lt200'], 'Class-balanced sampling', 'overall', 68.3),
    (P.MARC_TABLE4, 'MARC', 'overall', 52.3), (P.MARC_TABLE4, 'MARC', 'few_shot', 36.6), (P.MARC_TABLE4, 'Softmax', 'many_shot', 65.1),
    (P.DBM_CIFAR100LT, 'DBM-CE', 'overall', 46.53), (P.DBM_CIFAR100LT, 'DBM-BS', 'overall', 51.30),
    (P.DBM_CIFAR100LT, 'NCL', 'overall', 56.68),
    (P.LWR_COMPAT, 'BS + LWR', 'overall', 51.5), (P.LWR_COMPAT, 'BS + LWR', 'few_shot', 30.7),
    (P.LWR_COMPAT, 'Focal', 'many_shot', 56.3), (P.LWR_THETA, 'θ = 0.4', 'overall', 50.7),
    (P.LWR_THETA, 'θ = -1.0', 'few_shot', 30.0), (P.LWR_ABLATION, 'BS', 'overall', 46.3),
])
def test_spot_values(table, method, metric, value):
    assert table.value(method, metric) == pytest.approx(value, abs=1e-9)


def test_empty_cells_are_none():
    assert P.MARC_TABLE2['cifar100-lt200'].value('BBN') is None
    assert P.MARC_TABLE2['cifar10-lt200'].value('Hybrid-SC') is None
    assert P.MARC_TABLE2['cifar10-lt100'].value('BBN') == 79.8


def test_internal_consistency():
    # MR2 gains over ERM printed in Table 1: (a) +1.4/+2.8/+5.2, (b) +0.4/+1.4/+3.2
    for t, gains in ((P.MR2_TABLE1A, (1.4, 2.8, 5.2)), (P.MR2_TABLE1B, (0.4, 1.4, 3.2))):
        got = [t.value('MR²', m) - t.value('ERM', m) for m in ('easy', 'medium', 'hard')]
        assert got == pytest.approx(gains, abs=1e-9)
    # LWR compatibility: each + LWR gain on All as printed (+2.8, +2.8, +3.0, +2.1)
    for base, g in (('CE-DRW', 2.8), ('BS', 2.8), ('Focal', 3.0), ('LA', 2.1)):
        assert P.LWR_COMPAT.value(f'{base} + LWR') - P.LWR_COMPAT.value(base) == pytest.approx(g, abs=1e-9)
    assert P.LWR_THETA.rows['θ = 1.0'] == P.LWR_ABLATION.rows['BS']
    assert len(P.MR2_TABLE1A.methods) == len(P.MR2_TABLE1B.methods) == 15
    assert len(P.MARC_TABLE4.methods) == 12 and len(P.DBM_CIFAR100LT.methods) == 14


def test_every_table_registered_with_source():
    assert len(P.PAPER_TABLES) == 12
    for t in P.PAPER_TABLES.values():
        assert t.source and t.setting and t.rows
        for r in t.rows.values():
            for v in r.values(): assert v is None or 0 < v < 100


def test_bad_table_rejected():
    with pytest.raises(ValueError, match='unknown metric'): P.PaperTable('x', 's', 's', ('top5',), {})
    with pytest.raises(ValueError, match='row'): P.PaperTable('x', 's', 's', ('overall',), {'a': {'easy': 1.0}})
    with pytest.raises(KeyError): P.MR2_TABLE1A.value('not a method')


# --- missing runs say "not run", never a number ---
def test_missing_runs_not_run(tmp_path):
    runs = {'ERM': None, 'MR²': tmp_path / 'does-not-exist', 'LDAM': tmp_path}   # tmp_path exists but is empty
    df = P.compare_table(P.MR2_TABLE1A, runs)
    ours = [c for c in df.columns if c.endswith(' ours')]
    assert len(ours) == 4
    assert (df[ours] == P.NOT_RUN).all().all()          # every row of the table, run or not
    assert list(df['method']) == P.MR2_TABLE1A.methods
    assert (df['seeds'] == 0).all()
    md = P.table_markdown(df)
    assert md.count(P.NOT_RUN) == 15 * 4 and 'MR² Table 1a' in md


def test_fake_results_rendered(tmp_path):
    erm = _write(tmp_path / 'erm', [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], device='NVIDIA H100')
    _write(tmp_path / 'mr2' / 'seed0', [0.9, 0.9, 0.8, 0.7, 0.6, 0.5])
    _write(tmp_path / 'mr2' / 'seed1', [0.9, 0.9, 0.8, 0.7, 0.6, 0.7])
    df = P.compare_table(P.MR2_TABLE1A, {'ERM': erm, 'MR²': tmp_path / 'mr2', 'extra': None}, only_runs=True).set_index('method')
    assert list(df.index) == ['ERM', 'MR²', 'extra']
    assert df.loc['ERM', 'Overall ours'] == '65.0' and df.loc['ERM', 'Overall paper'] == '70.9'
    assert df.loc['ERM', 'Easy ours'] == '85.0' and df.loc['ERM', 'Hard ours'] == '45.0'
    assert df.loc['ERM', 'device'] == 'NVIDIA H100' and df.loc['ERM', 'seeds'] == 1 and df.loc['ERM', 'epochs'] == '200'
    # MR2 on the ERM partition: hard = classes 4, 5 -> 0.55 and 0.65 -> 60.0 ± 7.1 (sample std)
    assert df.loc['MR²', 'Hard ours'] == '60.0 ± 7.1' and df.loc['MR²', 'seeds'] == 2
    assert df.loc['MR²', 'Easy ours'] == '90.0 ± 0.0'
    assert df.loc['extra', 'Overall paper'] == '–' and df.loc['extra', 'Overall ours'] == P.NOT_RUN


def test_groups_need_reference(tmp_path):
    mr2 = _write(tmp_path / 'mr2', [0.5, 0.6, 0.7])
    df = P.compare_table(P.MR2_TABLE1A, {'MR²': mr2}, only_runs=True)
    assert df.loc[0, 'Overall ours'] == '60.0'
    assert df.loc[0, 'Hard ours'].startswith('needs ERM')


def test_shot_groups_and_undefined(tmp_path):
    rep = {'overall': 0.5, 'many_shot': 0.7, 'medium_shot': 0.4, 'few_shot': float('nan')}
    run = _write(tmp_path / 'bs', [0.5] * 4, dataset='cifar10-jpeg', smoke=True, report=rep)
    df = P.compare_table(P.MARC_TABLE4, {'Balanced Softmax': run}, only_runs=True)
    r = df.iloc[0]
    assert r['Many ours'] == '70.0' and r['Medium-shot ours'] == '40.0' and r['Few ours'] == '–'
    assert r['Few paper'] == '29.8' and r['data'] == 'cifar10-jpeg (smoke)'


def test_dbm_two_decimals():
    df = P.compare_table(P.DBM_CIFAR100LT, {'DBM-BS': None}, only_runs=True)
    assert df.loc[0, 'Overall paper'] == '51.30'


def test_part_reads_stage1(tmp_path):
    d = tmp_path / 'marc'
    d.mkdir()
    (d / 'results.json').write_text(json.dumps({
        'dataset': 'cifar10', 'epochs': 10, 'device': 'cpu', 'per_class_accuracy': [0.9, 0.7], 'report': {'overall': 0.8},
        'stage1': {'per_class_accuracy': [0.9, 0.3], 'report': {'overall': 0.6}}}))
    df = P.compare_table(P.MARC_TABLE2['cifar10-lt100'], {'Softmax': P.ResultPart(d), 'MARC': d}, only_runs=True).set_index('method')
    assert df.loc['Softmax', 'Overall ours'] == '60.0' and df.loc['MARC', 'Overall ours'] == '80.0'
    assert P.load_runs(P.ResultPart(tmp_path / 'nothing')) == []


def test_plan_commands_and_lookup(tmp_path):
    plan = [P.PlannedRun('ERM', 'cifar100-r32-erm'),
            P.PlannedRun('BS + LWR', 'cifar100lt100-r32-bs', name='bs-lwr-t0.2', overrides={'lwr': {'threshold': 0.2}}),
            P.PlannedRun('Softmax', 'cifar100lt100-r32-marc', part='stage1'),
            P.PlannedRun('JTT', None)]
    assert P.run_command(plan[0], 'ch', seed=1) == ('margin-notes run cifar100-r32-erm --set seed=1 --out runs/ch/cifar100-r32-erm/seed1 '
                                                    '--publish results/ch/cifar100-r32-erm/seed1')
    c = P.run_command(plan[1], 'ch', seed=0, gpus=8)
    assert c.startswith('torchrun --nproc_per_node=8 -m margin_notes.cli run cifar100lt100-r32-bs --set ')
    assert "'lwr={\"threshold\": 0.2}'" in c and c.endswith('--out runs/ch/bs-lwr-t0.2/seed0 --publish results/ch/bs-lwr-t0.2/seed0')
    assert P.run_command(plan[3], 'ch') == '—'
    assert all(v is None for v in P.planned_runs(plan, 'ch', root=tmp_path).values())
    _write(tmp_path / 'ch' / 'cifar100-r32-erm' / 'seed0', [0.5, 0.7])
    got = P.planned_runs(plan, 'ch', root=tmp_path)
    assert got['ERM'] == tmp_path / 'ch' / 'cifar100-r32-erm' and got['BS + LWR'] is None and got['JTT'] is None
    pt = P.plan_table(plan, 'ch')
    assert list(pt['status'])[-1] == 'not in the library'


def test_lwr_ablation_attribution_rows_are_the_cifar100lt_if100_block():
    "The ablation's BS row and final row are the two CIFAR-100-LT (IF 100) rows of the poster's scrambled block."
    from margin_notes.paper import LWR_ABLATION, LWR_THETA
    assert [LWR_ABLATION.value('BS', m) for m in ('few_shot', 'medium_shot', 'many_shot', 'overall')] == [25.0, 46.7, 63.9, 46.3]
    assert [LWR_ABLATION.value('BS + λ(t) LWR w/ proj', m) for m in ('few_shot', 'medium_shot', 'many_shot', 'overall')] == [32.2, 50.0, 66.6, 50.7]
    assert 'CIFAR-100-LT, IF 100' in LWR_ABLATION.setting and 'CIFAR-100-LT, IF 100' in LWR_THETA.setting
