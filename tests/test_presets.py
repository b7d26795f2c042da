"Tests of margin_notes.presets: every preset is a valid configuration of a registry method, with its source."
import pytest

from margin_notes.config import resolve, suite_members, validate_config
from margin_notes.presets import PRESETS, get_config
from margin_notes.registry import get_method


def test_every_preset_method_and_suite_member_is_a_registry_method():
    for n, p in PRESETS.items():
        members = [m for *_, m in suite_members(p)] if p.suite else [p]
        for c in members:
            get_method(c.loss)
            r = resolve(c)
            assert r.head == get_method(c.loss).head, n   # presets never put a loss on the wrong head
