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
