"Tests for margin_notes.report: the one Markdown renderer, the one results loader, and seeds aggregated without dropping a run."
import json, math

import numpy as np
import pytest

from margin_notes.metrics import accuracy_report
from margin_notes.report import aggregate_runs, collect_results, load_results, markdown_table, summary_table


def test_markdown_table_plain():
    import pandas as pd
    df = pd.DataFrame({'a': [1, 2], 'b': ['x|y', 'z']}, index=pd.Index(['r1', 'r2'], name='row'))
    lines = markdown_table(df, index=True).splitlines()
    assert lines[0] == '| row | a | b |' and lines[1] == '|---|---|---|' and lines[2] == '| r1 | 1 | x\\|y |'
    assert markdown_table(df).splitlines()[0] == '| a | b |'                       # without the index
    assert markdown_table([['p', 1]], ['k', 'v']) == '| k | v |\n|---|---|\n| p | 1 |'
    padded = markdown_table([['long name', 1], ['x', 22]], ['k', 'v'], pad=True).splitlines()
    assert padded == ['| k         |  v |', '|-----------|----|', '| long name |  1 |', '| x         | 22 |']


def test_the_old_renderers_are_the_one_renderer():
    "diagnose's and paper's tables go through report.markdown_table (the names still work)."
    import pandas as pd
    import importlib
    diagnose, paper = (importlib.import_module(f"margin_notes.{m}") for m in ("diagnose", "paper"))
    assert diagnose.markdown_table is markdown_table
    df = pd.DataFrame({'method': ['ERM'], 'overall ours': ['71.0']})
    assert paper.table_markdown(df, caption=False) == markdown_table(df)


def _write_run(folder, name, seed, acc, counts=(50, 5)):
    folder.mkdir(parents=True)
    (folder / 'results.json').write_text(json.dumps({'name': name, 'seed': seed, 'per_class_accuracy': list(acc),
                                                     'class_counts': list(counts), 'report': accuracy_report(list(acc), list(counts))}))


def test_collect_results_keeps_every_seed(tmp_path):
    "The old loader kept one of two runs with the same name; now seeds are averaged and runs with a taken seed keep a row."
    accs = {0: [0.9, 0.5], 1: [0.8, 0.6], 2: [0.7, 0.1]}
    for s, a in accs.items(): _write_run(tmp_path / 'mr2' / f'seed{s}', 'mr2', s, a)
    _write_run(tmp_path / 'rerun' / 'seed0', 'mr2', 0, [0.3, 0.3])      # same name and seed: another run, not a seed
    _write_run(tmp_path / 'erm' / 'seed0', 'erm', 0, [1.0, 0.0])
    got = collect_results([tmp_path])
    assert sum(r.get('n_runs', 1) for r in got.values()) == len(load_results(tmp_path)) == 5
    assert set(got) == {'mr2', 'rerun/seed0/mr2', 'erm'}
    m = got['mr2']
    assert (m['n_runs'], sorted(m['seeds'])) == (3, [0, 1, 2])
    overall = [np.mean(a) for a in accs.values()]
    assert m['report']['overall'] == pytest.approx(np.mean(overall))
    assert m['report_std']['overall'] == pytest.approx(np.std(overall, ddof=1))
    assert m['per_class_accuracy'] == pytest.approx([0.8, 0.4])
    assert got['rerun/seed0/mr2']['per_class_accuracy'] == [0.3, 0.3] and 'n_runs' not in got['erm']
    table = summary_table(got)
    assert f"{100 * np.mean(overall):.1f} ± {100 * np.std(overall, ddof=1):.1f}" in table
    row = next(l for l in table.splitlines() if l.startswith('| mr2 '))
    assert row.split('|')[2].strip() == '3'                                     # the runs column
    # one run given twice (the same folder named twice): kept twice, never merged silently into one
    twice = collect_results([tmp_path / 'erm', tmp_path / 'erm', tmp_path / 'erm'])
    assert list(twice) == ['erm', 'seed0/erm', 'seed0/erm #2']


def test_collect_results_regroups_each_run(tmp_path):
    for s, a in enumerate(([0.9, 0.5], [0.7, 0.3])): _write_run(tmp_path / f'seed{s}', 'bs', s, a)
    r = collect_results([tmp_path], many=40)['bs']['report']    # 50 images: Many at 40 (Medium at the run's 100); 5: Few
    assert r['many_shot'] == pytest.approx(0.8) and r['few_shot'] == pytest.approx(0.4) and math.isnan(r['medium_shot'])
    with pytest.raises(FileNotFoundError, match='no results.json'): collect_results([tmp_path / 'missing'])
    assert load_results(None) == [] and load_results(tmp_path / 'missing') == []


def test_aggregate_runs_single_seed_has_undefined_std():
    a = aggregate_runs([{'name': 'x', 'seed': 0, 'per_class_accuracy': [0.5, 1.0], 'report': {'overall': 0.75}}])
    assert a['report']['overall'] == 0.75 and math.isnan(a['report_std']['overall'])
    with pytest.raises(ValueError): aggregate_runs([])


# ---------------------------------------------------------------- seeds of one run name: the naive float64 reference
def _ref_mean_std(values):
    "Mean and sample std (ddof=1) in float64; NaN std for one value; NaN propagates."
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else float('nan'))


def _same(x, y, rel=1e-12):
    return (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=rel, abs=1e-15)


_KEYS = ('overall', 'worst', 'many_shot', 'medium_shot', 'few_shot')


def test_two_run_folders_with_one_name_and_two_seeds_are_both_kept(tmp_path):
    "The issue's reproduction: two run folders, the same run name, seeds 0 and 1, given one by one. The old loader kept seed 1 only."
    accs = {0: [0.9, 0.5], 1: [0.7, 0.3]}
    for s, a in accs.items(): _write_run(tmp_path / f'mr2-seed{s}', 'mr2', s, a)
    got = collect_results([tmp_path / 'mr2-seed0', tmp_path / 'mr2-seed1'])
    assert list(got) == ['mr2']
    m = got['mr2']
    assert (m['n_runs'], m['seeds'], len(m['runs'])) == (2, [0, 1], 2)
    runs = [json.loads((tmp_path / f'mr2-seed{s}' / 'results.json').read_text()) for s in accs]
    for k in _KEYS:
        mean, sd = _ref_mean_std([r['report'][k] for r in runs])
        assert _same(m['report'][k], mean) and _same(m['report_std'][k], sd), k
    assert m['per_class_accuracy'] == pytest.approx(np.mean(np.array(list(accs.values()), dtype=np.float64), 0), rel=1e-12)
    row = next(l for l in summary_table(got).splitlines() if l.startswith('| mr2 '))
    mean, sd = _ref_mean_std([np.mean(np.asarray(a, dtype=np.float64)) for a in accs.values()])   # from the raw accuracies
    assert [c.strip() for c in row.split('|')[2:4]] == ['2', f"{100 * mean:.1f} ± {100 * sd:.1f}"]   # runs, overall


def test_aggregate_matches_float64_reference_over_seeds(tmp_path):
    "Five seeds, six classes: every summary figure and every class, mean and sample std, against numpy float64."
    rng = np.random.default_rng(0)
    counts = [500, 200, 90, 40, 15, 5]                    # Many, Many, Medium, Medium, Few, Few
    accs = rng.uniform(0, 1, size=(5, 6))
    for s in range(5): _write_run(tmp_path / f's{s}', 'bs', 10 + s, accs[s].tolist(), counts)
    _write_run(tmp_path / 'other', 'erm', 0, [0.5] * 6, counts)
    got = collect_results([tmp_path])
    assert set(got) == {'bs', 'erm'}
    m = got['bs']
    runs = load_results(tmp_path)
    bs = [r for r in runs if r['name'] == 'bs']
    assert (m['n_runs'], sorted(m['seeds'])) == (5, list(range(10, 15)))
    for k in _KEYS:
        mean, sd = _ref_mean_std([r['report'][k] for r in bs])
        assert _same(m['report'][k], mean) and _same(m['report_std'][k], sd), k
    assert m['per_class_accuracy'] == pytest.approx(accs.mean(0), rel=1e-12)
    # the summary figures themselves, from the raw accuracies (accuracy_report reads them through float32: 1e-7)
    assert m['report']['overall'] == pytest.approx(accs.mean(), rel=1e-7)
    assert m['report']['many_shot'] == pytest.approx(accs[:, :2].mean(), rel=1e-7)
    assert m['report']['few_shot'] == pytest.approx(accs[:, 4:].mean(), rel=1e-7)
    assert m['report_std']['worst'] == pytest.approx(accs.min(1).std(ddof=1), rel=1e-6)
    assert 'n_runs' not in got['erm'] and got['erm']['per_class_accuracy'] == [0.5] * 6


def test_same_name_and_seed_keeps_both_runs_in_their_own_rows(tmp_path):
    "Two runs with one name AND one seed are two runs (a rerun), not seeds: both kept, each labelled by its folder, never averaged."
    _write_run(tmp_path / 'a' / 'seed0', 'la', 0, [0.9, 0.1])
    _write_run(tmp_path / 'b' / 'seed0', 'la', 0, [0.5, 0.5])
    got = collect_results([tmp_path / 'a', tmp_path / 'b'])
    assert list(got) == ['la', 'seed0/la']
    assert [got[k]['per_class_accuracy'] for k in got] == [[0.9, 0.1], [0.5, 0.5]]
    assert all('n_runs' not in r for r in got.values())
    got = collect_results([tmp_path])                      # found below one folder: labelled by the path below it
    assert list(got) == ['la', 'b/seed0/la']


def test_same_name_on_other_classes_is_not_averaged(tmp_path):
    "A run of the same name with other classes or class counts (another data set) is not a seed: its own row, no crash."
    _write_run(tmp_path / 'a2' / 's0', 'erm', 0, [0.9, 0.5], (50, 5))
    _write_run(tmp_path / 'a2' / 's1', 'erm', 1, [0.7, 0.3], (50, 5))
    _write_run(tmp_path / 'k3' / 's2', 'erm', 2, [0.1, 0.2, 0.3], (50, 5, 2))       # three classes
    _write_run(tmp_path / 'c2' / 's3', 'erm', 3, [0.2, 0.2], (500, 50))             # two classes, other counts
    got = collect_results([tmp_path])
    assert sum(r.get('n_runs', 1) for r in got.values()) == 4
    assert got['erm']['n_runs'] == 2 and got['erm']['per_class_accuracy'] == pytest.approx([0.8, 0.4])
    assert sorted(k for k in got if k != 'erm') == ['c2/s3/erm', 'k3/s2/erm']
    head = summary_table(got).splitlines()[0]
    assert '| c0 ' not in head and 'runs' in head                                   # different classes: no per-class columns
    with pytest.raises(ValueError, match='not seeds of one experiment'):
        aggregate_runs([got['erm']['runs'][0], got['k3/s2/erm']])


def test_a_suite_row_of_seeds_is_not_averaged_again(tmp_path):
    "A summary.json row that already stands for two seeds brings its two runs back: three seeds give the mean of three, not of two."
    runs = []
    for s, a in enumerate(([0.9, 0.5], [0.7, 0.3])):
        _write_run(tmp_path / 'r' / f's{s}', 'mr2', s, a); runs.append(json.loads((tmp_path / 'r' / f's{s}' / 'results.json').read_text()))
    (tmp_path / 'suite').mkdir()
    (tmp_path / 'suite' / 'summary.json').write_text(json.dumps({'methods': {'mr2': aggregate_runs(runs)}}))
    _write_run(tmp_path / 'third', 'mr2', 2, [0.2, 0.2])
    got = collect_results([tmp_path / 'suite', tmp_path / 'third'])
    assert list(got) == ['mr2'] and got['mr2']['n_runs'] == 3 and got['mr2']['seeds'] == [0, 1, 2]
    mean, sd = _ref_mean_std([0.7, 0.5, 0.2])
    assert _same(got['mr2']['report']['overall'], mean, rel=1e-7) and _same(got['mr2']['report_std']['overall'], sd, rel=1e-6)


def test_write_summary_csv_keeps_the_runs_and_the_std(tmp_path):
    import csv
    from margin_notes.report import write_summary
    for s, a in enumerate(([0.9, 0.5], [0.7, 0.3], [0.8, 0.1])): _write_run(tmp_path / 'in' / f's{s}', 'bs', s, a)
    _write_run(tmp_path / 'in' / 'e', 'erm', 0, [1.0, 0.0])
    methods = collect_results([tmp_path / 'in'])
    write_summary({'suite': 't', 'methods': methods}, tmp_path / 'out', verbose=False)
    rows = {r['method']: r for r in csv.DictReader((tmp_path / 'out' / 'summary.csv').open())}
    _, sd = _ref_mean_std([0.7, 0.5, 0.45])
    assert rows['bs']['runs'] == '3' and float(rows['bs']['overall_std']) == pytest.approx(sd, rel=1e-6)
    assert rows['erm']['runs'] == '1' and rows['erm']['overall_std'] == ''
    assert '± ' in (tmp_path / 'out' / 'summary.md').read_text()


def test_no_run_is_ever_dropped(tmp_path):
    "Random names, seeds and folders, repeats included: every run lands in exactly one row."
    rng = np.random.default_rng(1)
    written = []
    for i in range(40):
        name, seed = ['erm', 'bs', 'mr2'][rng.integers(3)], int(rng.integers(3))
        acc = [round(float(x), 6) for x in rng.uniform(size=2)]
        _write_run(tmp_path / f'g{rng.integers(4)}' / f'run{i}', name, seed, acc)
        written.append((name, seed, tuple(acc)))
    got = collect_results([tmp_path / f'g{j}' for j in range(4) if (tmp_path / f'g{j}').exists()])
    kept = [(r['name'], r['seed'], tuple(r['per_class_accuracy'])) for g in got.values() for r in g.get('runs', [g])]
    assert sorted(kept) == sorted(written)
    for g in got.values():
        seeds = g.get('seeds', [g.get('seed')])
        assert len(seeds) == len(set(seeds))                                          # a row never holds one seed twice
