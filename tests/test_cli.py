"Tests of the margin-notes console command (margin_notes.cli)."
import json, os, subprocess, sys
from pathlib import Path

import pytest

from margin_notes.cli import main, collect_results
from margin_notes.engine import PRESETS

os.environ.setdefault('MARGIN_NOTES_NO_PROGRESS', '1')
ROOT = Path(__file__).resolve().parents[1]
SMALL = ['--set', 'epochs=2', 'model_kwargs={hidden: 32, feature_dim: 16}', '--no-progress']


def test_help_lists_every_preset(capsys):
    with pytest.raises(SystemExit) as e: main(['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for n in PRESETS: assert n in out
    with pytest.raises(SystemExit): main(['run', '--help'])
    assert 'digits-lt' in capsys.readouterr().out


def test_errors_name_the_problem(capsys):
    assert main(['run', 'digits-lt-ermm']) == 2
    assert 'digits-lt-erm' in capsys.readouterr().err
    assert main(['run', 'digits-lt-erm', '--set', 'optimiser=adamw']) == 2
    assert "'optimiser'" in capsys.readouterr().err
    assert main(['report', '/nonexistent/folder']) == 2


def test_dry_run_applies_overrides(capsys):
    assert main(['run', 'cifar100lt100-r32-bs-lwr', '--set', 'lwr.threshold=0.6', 'epochs=3', '--dry-run']) == 0
    c = json.loads(capsys.readouterr().out)
    assert c['lwr'] == {'threshold': 0.6, 'weight': 1.0} and c['epochs'] == 3 and c['loss'] == 'bs'


def test_run_config_file_eval_calibrate_report(tmp_path, capsys):
    cfg = PRESETS['digits-lt-erm'].replace(epochs=2, name='my-run')
    cfg.save(tmp_path / 'my.yaml')
    assert main(['run', str(tmp_path / 'my.yaml'), '--out', str(tmp_path / 'r'), *SMALL]) == 0
    assert 'my-run' in capsys.readouterr().out
    saved = json.loads((tmp_path / 'r' / 'results.json').read_text())
    assert main(['eval', str(tmp_path / 'r'), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['per_class_accuracy'] == saved['per_class_accuracy']
    assert main(['calibrate', str(tmp_path / 'r'), '--method', 'la']) == 0
    out = capsys.readouterr().out
    cal = tmp_path / 'r-la' / 'results.json'
    assert str(cal.resolve()) in out and json.loads(cal.read_text())['posthoc']['method'] == 'la'
    assert main(['report', str(tmp_path / 'r'), str(tmp_path / 'r-la'), '--out', str(tmp_path / 'rep')]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / 'rep' / 'report.md').exists() and (tmp_path / 'rep' / 'per_class.png').exists()
    assert 'my-run' in out and 'my-run+la' in out
    assert set(collect_results([tmp_path])) == {'my-run', 'my-run+la'}   # a parent folder: every run below it


def test_resume_from_cli(tmp_path):
    assert main(['run', 'digits-lt-erm', '--out', str(tmp_path / 'r'), *SMALL]) == 0
    assert main(['run', 'digits-lt-erm', '--out', str(tmp_path / 'r'), '--resume', *SMALL]) == 0   # nothing left: finishes at once
    import csv
    assert len(list(csv.DictReader(open(tmp_path / 'r' / 'metrics.csv')))) == 2


def test_suite_default_run_prints_where_outputs_go(tmp_path):
    "`make run` path: the console entry point as a subprocess, smoke sizes, default output folder runs/<preset>."
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'margin_notes.cli', 'run', 'digits-lt', '--smoke', '--set', 'epochs=1', '--no-progress'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out_dir = tmp_path / 'runs' / 'digits-lt'
    assert f"outputs: {out_dir.resolve()}/" in r.stdout
    for f in ('summary.md', 'summary.csv', 'summary.json', 'per_class.png'): assert (out_dir / f).exists()
    s = json.loads((out_dir / 'summary.json').read_text())
    assert 'ERM' in s['methods'] and len(s['methods']) + len(s['skipped']) == len(PRESETS['digits-lt'].suite)
    assert '| ERM' in r.stdout
