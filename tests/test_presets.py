"Tests of margin_notes.presets: every preset is a valid configuration of a registry method, with its source."
from margin_notes.config import resolve, resolved_loss, suite_members, validate_config
from margin_notes.presets import PRESETS, get_config
from margin_notes.registry import get_method

# losses that put their margins on cosines and apply their own scale (chapters 14 and 16): they need the cosine head
COSINE_LOSSES = ('LDAMLoss(', 'DBMLoss(')


def test_every_preset_is_valid_with_a_source():
    for n, p in PRESETS.items():
        validate_config(p)                                                  # raises with the field named
        assert isinstance(p.source, str) and len(p.source) > 20, (n, p.source)   # where its recipe comes from


def test_every_preset_method_and_suite_member_is_a_registry_method_on_the_right_head():
    seen = set()
    for n, p in PRESETS.items():
        members = [m for *_, m in suite_members(p)] if p.suite else [p]
        for c in members:
            get_method(c.loss)                                              # raises for a name the registry lacks
            call = resolved_loss(c)                                         # the constructor call the run trains with
            want = 'cosine' if call.startswith(COSINE_LOSSES) else 'linear'
            assert resolve(c).head == want, (n, c.name, call)               # presets never put a loss on the wrong head
            seen.add(want)
    assert seen == {'cosine', 'linear'}                                     # both kinds occur, so both branches were checked


def test_get_config_applies_overrides():
    c = get_config('digits-lt-erm', ['epochs=3', 'seed=7'])
    assert (c.epochs, c.seed) == (3, 7) and PRESETS['digits-lt-erm'].epochs != 3
