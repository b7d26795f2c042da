"The package face: lazy top-level names, light imports of the loss modules, and an __init__ that nbdev_export keeps."
import ast, json, os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'PYTHONPATH': str(ROOT)}
HEAVY = ('matplotlib', 'pandas', 'sklearn', 'open_clip', 'timm', 'margin_notes.engine', 'margin_notes.probe',
         'margin_notes.paper', 'margin_notes.config', 'margin_notes.data', 'margin_notes.models', 'margin_notes.style')


def _modules_after(code: str) -> set:
    r = subprocess.run([sys.executable, '-c', code + '\nimport sys, json; print(json.dumps(sorted(sys.modules)))'],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize('mod', ['mr2', 'baselines', 'dbm', 'lwr', 'marc', 'stats', 'registry', 'schedules'])
def test_importing_a_loss_module_loads_no_plotting_trainer_or_backend(mod):
    loaded = _modules_after(f'import margin_notes.{mod}')
    assert f'margin_notes.{mod}' in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_schedules_do_not_even_import_torch():
    # the registry holds the loss classes themselves (chapter 18), so it imports torch; the schedules do not
    assert 'torch' not in _modules_after('import margin_notes.schedules')


def test_top_level_names_are_lazy_and_explicit():
    loaded = _modules_after('from margin_notes import MR2Loss; import margin_notes; dir(margin_notes)')
    assert 'margin_notes.mr2' in loaded and not loaded & set(HEAVY)
    import importlib, margin_notes
    assert len(margin_notes.__all__) <= 60, 'the public face is meant to stay short'
    assert margin_notes.__all__ == sorted(margin_notes._NAMES) and set(dir(margin_notes)) >= set(margin_notes.__all__)
    for mod, names in margin_notes._PUBLIC.items():
        m = importlib.import_module(f'margin_notes.{mod}')
        for n in names:   # each public name is the object its module exports
            assert n in m.__all__, (mod, n)
            assert getattr(margin_notes, n) is getattr(m, n), n
    from margin_notes import MR2Loss, fit, summary_table, cifar_lt_counts, train_epochs, get_config   # noqa: F401
    with pytest.raises(AttributeError, match='no_such_name'): margin_notes.no_such_name
    with pytest.raises(AttributeError, match='naive_mr2_loss'): margin_notes.naive_mr2_loss   # a module's own reference stays in it


def test_star_import_gives_every_public_name():
    r = subprocess.run([sys.executable, '-c', 'from margin_notes import *; print(MR2Loss.__name__, get_method("mr2").label)'],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ['MR2Loss', 'MR²'], r.stderr


def test_nbdev_export_keeps_the_lazy_init(tmp_path):
    "nbdev_export ends with add_init + update_version on the library folder: they may only touch the version line."
    from nbdev.config import add_init   # what nbdev_export calls last (it calls update_version)
    lib = tmp_path / 'margin_notes'; lib.mkdir()
    init = (ROOT / 'margin_notes' / '__init__.py').read_text()
    (lib / '__init__.py').write_text(init.replace('__version__ = "', '__version__ = "0.0.0-old" #', 1))
    cwd = os.getcwd(); os.chdir(ROOT)
    try:
        add_init(lib)
    finally: os.chdir(cwd)
    new = (lib / '__init__.py').read_text()
    assert new.splitlines()[1:] == init.splitlines()[1:] and new.splitlines()[0].startswith('__version__ = "')
    assert 'def __getattr__' in new


def test_help_is_fast():
    import time
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, '-m', 'margin_notes.cli', '--help'], env=ENV, capture_output=True, text=True, timeout=120)
    dt = time.perf_counter() - t0
    assert r.returncode == 0 and 'margin-notes list' in r.stdout
    assert dt < 5, dt   # about 0.3 s on an idle CPU: no torch import (a generous bound for loaded CI machines)
