"""Shared pytest configuration: hypothesis runs derandomised on CI, so a CI run is reproducible; one snapshot of
results/ for the tests that check a smoke run leaves it untouched."""
import os
import pytest
from hypothesis import settings

settings.register_profile('ci', derandomize=True, deadline=None, print_blob=True)
settings.register_profile('dev', deadline=None, print_blob=True)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci' if os.environ.get('CI') else 'dev'))


def _results_snapshot() -> list[str]:
    "Every path under results/, files with their modification time: equal snapshots mean nothing was added, removed or rewritten."
    from margin_notes.paper import results_root
    return sorted(str(p) + (f' {p.stat().st_mtime_ns}' if p.is_file() else '') for p in results_root().rglob('*'))


@pytest.fixture(scope='session')
def results_snapshot():
    "The function `_results_snapshot` (session-scoped, so module-scoped fixtures can use it)."
    return _results_snapshot
