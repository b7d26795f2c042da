"""Every preset runs end to end in smoke mode through the command line (`margin-notes run P --smoke`):
the same code path as the full run, on stand-in data in the real formats, and nothing lands in results/."""
import json, time
from pathlib import Path

import pytest

from margin_notes.cli import main
from margin_notes.config import PRESETS

_TIMES = {}


@pytest.fixture(scope='module', autouse=True)
def _results_untouched(results_snapshot):
    before = results_snapshot()
    yield
    assert results_snapshot() == before, 'a smoke run wrote under results/'
    total = sum(_TIMES.values())
    print(f"\npreset sweep: {len(_TIMES)} presets in {total:.0f} s; slowest: "
          + ', '.join(f"{k} {v:.1f} s" for k, v in sorted(_TIMES.items(), key=lambda kv: -kv[1])[:5]))


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_preset_runs_in_smoke_mode(preset, tmp_path, capsys):
    t0 = time.time()
    rc = main(['run', preset, '--smoke', '--no-progress', '--out', str(tmp_path / 'run')])
    _TIMES[preset] = time.time() - t0
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = [l for l in out.splitlines() if l.strip() and not l.lstrip().startswith('source:')]   # the recipe line under the first
    assert lines and all('[smoke run' in l for l in lines), out
    files = list((tmp_path / 'run').rglob('results.json'))
    assert files, f'{preset}: no results.json'
    for f in files:
        res = json.loads(f.read_text())
        assert res['config']['smoke'] and res['name'].startswith('[smoke run') and 'smoke' in res, f
    for f in (tmp_path / 'run').rglob('summary.json'):
        assert json.loads(f.read_text())['suite'].startswith('[smoke run'), f
        if PRESETS[preset].dataset not in ('digits', 'fmnist'): assert res['dataset'].endswith('[stand-in]'), res['dataset']
