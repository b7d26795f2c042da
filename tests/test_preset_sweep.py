"""Presets run end to end in smoke mode through the command line (`margin-notes run P --smoke`):
the same code path as the full run, on stand-in data in the real formats, and nothing lands in results/.

Which presets run:
- by default, one preset per (dataset, architecture, method family), the first by name of each; a suite preset
  is its own family. The family comes from the registry (`registry.get_method(cfg.loss)`): the chapter that
  teaches the method and the module of its loss class (`Method.chapter`, `Method.module`), so MR², DBM, MARC,
  LWR and the baselines are apart and a method registered with a new chapter or loss module is picked up with
  no change here; a preset that switches LWR on for a method without it (`cfg.lwr`) adds '+lwr'.
- with the environment variable MARGIN_NOTES_ALL_PRESETS=1, every preset:

      MARGIN_NOTES_ALL_PRESETS=1 MARGIN_NOTES_SMOKE=1 MPLBACKEND=Agg python -m pytest -q tests/test_preset_sweep.py

`test_preset_selection` checks the choice (never empty, every key covered, all of them in the full mode) and the
module prints how many presets ran and how long they took."""
import json, os, time
from pathlib import Path

import pytest

from margin_notes.cli import main
from margin_notes.config import resolve
from margin_notes.presets import PRESETS
from margin_notes.registry import get_method

ALL_PRESETS = os.environ.get('MARGIN_NOTES_ALL_PRESETS', '') == '1'


def method_family(cfg) -> str:
    "A preset's method family, from the registry: 'suite', or '<chapter>/<loss module>' (+ '+lwr' when the preset switches LWR on)."
    if cfg.suite: return 'suite'
    m = get_method(cfg.loss)
    lwr_on = resolve(cfg).lwr is not None and m.lwr is None
    return f"{m.chapter}/{m.module}" + ('+lwr' if lwr_on else '')


def preset_key(name: str) -> tuple:
    "(dataset, architecture, method family) of a preset."
    cfg = PRESETS[name]
    return cfg.dataset, cfg.arch, method_family(cfg)


def chosen_presets(all_presets: bool = ALL_PRESETS) -> list:
    "Every preset (all_presets), or the first by name of each (dataset, architecture, method family)."
    names = sorted(PRESETS)
    if all_presets: return names
    first = {}
    for n in names: first.setdefault(preset_key(n), n)
    return sorted(first.values())


CHOSEN = chosen_presets()
print(f"preset sweep: {len(CHOSEN)} of {len(PRESETS)} presets"
      + (' (MARGIN_NOTES_ALL_PRESETS=1)' if ALL_PRESETS else ' (one per dataset, architecture and method family; MARGIN_NOTES_ALL_PRESETS=1 for all)'))

_TIMES = {}


def test_preset_selection():
    "The choice is never empty, covers every (dataset, architecture, family) once, and is every preset in the full mode."
    keys = {preset_key(n) for n in PRESETS}
    default = chosen_presets(False)
    assert len(default) == len(keys) > 0 and {preset_key(n) for n in default} == keys
    assert len({preset_key(n) for n in default}) == len(default)          # one per key
    assert chosen_presets(True) == sorted(PRESETS) and len(PRESETS) >= len(default)
    assert CHOSEN == (sorted(PRESETS) if ALL_PRESETS else default) and len(CHOSEN) > 0
    fams = {k[2] for k in keys}                                            # the registry's families are told apart
    assert {'suite'} < fams and len({f.split('/')[0] for f in fams}) >= 5, fams


@pytest.fixture(scope='module', autouse=True)
def _results_untouched(results_snapshot):
    before = results_snapshot()
    yield
    total = sum(_TIMES.values())   # printed first, so that the timing shows even when the check below fails
    print(f"\npreset sweep: {len(_TIMES)} of {len(CHOSEN)} chosen presets ran ({len(PRESETS)} in all) in {total:.0f} s; slowest: "
          + ', '.join(f"{k} {v:.1f} s" for k, v in sorted(_TIMES.items(), key=lambda kv: -kv[1])[:5]))
    assert results_snapshot() == before, 'a smoke run wrote under results/'


@pytest.mark.parametrize('preset', CHOSEN)
def test_preset_runs_in_smoke_mode(preset, tmp_path, capsys):
    t0 = time.time()
    rc = main(['run', preset, '--smoke', '--no-progress', '--out', str(tmp_path / 'run')])
    _TIMES[preset] = time.time() - t0
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = [l for l in out.splitlines() if l.strip() and not l.lstrip().startswith(('source:', 'precision on '))]   # the recipe and precision lines under the first
    assert lines and all('[smoke run' in l for l in lines), out
    files = list((tmp_path / 'run').rglob('results.json'))
    assert files, f'{preset}: no results.json'
    for f in files:
        res = json.loads(f.read_text())
        assert res['config']['smoke'] and res['name'].startswith('[smoke run') and 'smoke' in res, f
    for f in (tmp_path / 'run').rglob('summary.json'):
        assert json.loads(f.read_text())['suite'].startswith('[smoke run'), f
        if PRESETS[preset].dataset not in ('digits', 'fmnist'): assert res['dataset'].endswith('[stand-in]'), res['dataset']
