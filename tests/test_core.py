"""Tests for margin_notes.core and the project frame (README in sync, package importable)."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from margin_notes import core

ROOT = Path(__file__).resolve().parents[1]


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv('MARGIN_NOTES_DATA', str(tmp_path / 'd'))
    assert core.data_root() == tmp_path / 'd'
    monkeypatch.delenv('MARGIN_NOTES_DATA')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert core.data_root() == tmp_path / 'xdg' / 'margin_notes'


def test_cache_dir_never_under_data_root(monkeypatch, tmp_path):
    ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o555)
    monkeypatch.setenv('MARGIN_NOTES_DATA', str(ro))
    monkeypatch.delenv('MARGIN_NOTES_CACHE', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    c = core.cache_dir('feat')
    assert c == tmp_path / 'xdg' / 'margin_notes' / 'cache' / 'feat' and c.is_dir()
    assert list(ro.iterdir()) == []  # nothing written under the (shared, read-only) data root
    monkeypatch.setenv('MARGIN_NOTES_CACHE', str(tmp_path / 'explicit'))
    assert core.cache_dir() == tmp_path / 'explicit'


def test_smoke_flag(monkeypatch):
    monkeypatch.delenv('IN_TEST', raising=False)
    monkeypatch.setenv('MARGIN_NOTES_SMOKE', '1'); assert core.is_smoke() and core.smoke_or(10, 1) == 1
    monkeypatch.setenv('MARGIN_NOTES_SMOKE', '0'); monkeypatch.setenv('IN_TEST', '1'); assert not core.is_smoke()
    monkeypatch.delenv('MARGIN_NOTES_SMOKE'); assert core.is_smoke()
    monkeypatch.delenv('IN_TEST'); assert not core.is_smoke() and core.smoke_or(10, 1) == 10


@pytest.mark.parametrize('logits,targets,msg', [
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), '[0, 3)'),
    (torch.randn(4, 3), torch.tensor([0, -1, 2, 1]), '[0, 3)'),
    (torch.randn(4, 3), torch.tensor([0, 1, 2]), '3 entries'),
    (torch.randn(4), torch.tensor([0, 1, 2, 0]), '(B, K)'),
    (torch.full((2, 3), float('inf')), torch.tensor([0, 1]), 'NaN or inf'),
    (torch.randn(2, 3), torch.tensor([0.0, 1.0]), 'integer'),
    (torch.randint(0, 3, (2, 3)), torch.tensor([0, 1]), 'floating point'),
])
def test_check_logits_targets_errors(logits, targets, msg):
    with pytest.raises(ValueError, match=None) as e: core.check_logits_targets(logits, targets)
    assert msg in str(e.value)


def test_check_class_counts():
    c = core.check_class_counts(np.array([3, 2, 1]), num_classes=3)
    assert c.dtype == torch.float64 and c.tolist() == [3.0, 2.0, 1.0]
    for bad, msg in [([1, 0], 'count <= 0'), ([1, -2], 'count <= 0'), ([], 'non-empty'), ([[1, 2]], '1-d'),
                     ([1, float('inf')], 'NaN or inf'), (['a'], 'sequence of numbers')]:
        with pytest.raises(ValueError) as e: core.check_class_counts(bad)
        assert msg in str(e.value)


def test_value_checks_skipped_off_cpu_unless_enabled(monkeypatch):
    # a tensor claiming to live on an accelerator must not be read (that would force a host sync)
    monkeypatch.setattr(core, '_check_values', lambda t: core._VALUE_CHECKS['accelerators'])
    core.check_targets(torch.tensor([5]), 3)  # not read: no error
    core.set_value_checks(True)
    try:
        with pytest.raises(ValueError): core.check_targets(torch.tensor([5]), 3)
    finally: core.set_value_checks(False)


def test_atomic_write_json_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / 'r.json'
    core.atomic_write_json(p, {'a': 1})
    with pytest.raises(TypeError): core.atomic_write_json(p, {'a': object()})
    assert json.loads(p.read_text()) == {'a': 1}
    assert sorted(f.name for f in tmp_path.iterdir()) == ['r.json']


def test_atomic_torch_save_roundtrip(tmp_path):
    sd = {'w': torch.randn(3)}
    core.atomic_torch_save(sd, tmp_path / 'c.pt')
    assert torch.equal(torch.load(tmp_path / 'c.pt')['w'], sd['w'])


def test_readme_in_sync_with_index():
    r = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_core_utilities_live_in_core_not_in_the_public_face():
    import margin_notes, margin_notes.core as core
    assert margin_notes.__version__
    for name in ['data_root', 'is_smoke', 'check_logits_targets', 'atomic_write_json']:
        assert name in core.__all__ and name not in margin_notes.__all__, name   # `margin_notes.core.<name>`


def test_check_positive_int_takes_python_ints_from_one():
    from margin_notes.core import check_positive_int
    assert check_positive_int(3, 'epochs') == 3
    for bad in (0, -1, True, 2.0, '3', None):
        with pytest.raises(ValueError, match='`epochs` must be a positive integer'): check_positive_int(bad, 'epochs')


def test_cpu_model_reads_the_model_name_line(tmp_path, monkeypatch):
    import builtins
    from margin_notes.core import cpu_model
    real_open = builtins.open
    (tmp_path / 'cpuinfo').write_text('processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: avx2\n')
    monkeypatch.setattr(builtins, 'open', lambda f, *a, **k: real_open(tmp_path / 'cpuinfo' if f == '/proc/cpuinfo' else f, *a, **k))
    assert cpu_model() == 'Example CPU 9000'
    (tmp_path / 'cpuinfo').write_text('processor\t: 0\n')
    assert cpu_model() is None
