"Tests of margin_notes.registry: each method defined once, its loss, its options, its colour, and the extension point."
import math

import pytest
import torch

from margin_notes.registry import METHODS, get_method, build_method_loss, check_method_kwargs, method_names
from margin_notes.core import import_extra
from margin_notes.config import Config, ConfigError, resolve, validate_config, suite_members
from margin_notes.presets import PRESETS
from margin_notes import baselines as B

COUNTS = [60, 25, 9, 3]


def _by_hand(name, counts):
    "The loss each registry entry should build, written out without the registry."
    K = len(counts)
    from margin_notes.dbm import DBMLoss
    from margin_notes.mr2 import MR2Loss
    return {'erm': lambda: B.CELoss(), 'ce-drw': lambda: B.CELoss(), 'focal': lambda: B.FocalLoss(),
            'ldam': lambda: B.LDAMLoss(counts), 'ldam-drw': lambda: B.LDAMLoss(counts),
            'bs': lambda: B.BalancedSoftmaxLoss(counts), 'la': lambda: B.LogitAdjustedLoss(counts),
            'la-posthoc': lambda: B.CELoss(), 'marc': lambda: B.CELoss(),
            'dbm': lambda: DBMLoss(counts),   # a name means the class defaults ...
            'dbm-ce-s32': lambda: DBMLoss(counts, scale=32.0, base='ce'),   # ... or names its variant
            'dbm-bs-s32': lambda: DBMLoss(counts, scale=32.0),
            'mr2': lambda: MR2Loss(K),
            'mr2-paper': lambda: MR2Loss(K, variant='paper')}[name]()


@pytest.mark.parametrize('name', [n for n in METHODS if n != 'bs-lwr'])
def test_each_entry_builds_the_loss_it_names(name):
    m = METHODS[name]
    torch.manual_seed(0)
    z = torch.randn(16, 4).clamp(-0.99, 0.99) if m.head == 'cosine' else torch.randn(16, 4) * 3
    y, f = torch.arange(16) % 4, torch.randn(16, 6)
    got, ref = build_method_loss(name, COUNTS), _by_hand(name, COUNTS)
    assert type(got) is type(ref)
    torch.testing.assert_close(got(z, y, features=f), ref(z, y, features=f))


def test_lwr_entry_is_the_lwr_composition():
    assert METHODS['bs-lwr'].lwr == {}   # LWR at its class defaults (threshold 0.4)
    from margin_notes.lwr import LWRLoss
    head = torch.nn.Linear(6, 4)
    got, ref = build_method_loss('bs-lwr', COUNTS, head), LWRLoss(B.BalancedSoftmaxLoss(COUNTS), head, threshold=0.4)
    got.set_progress(0.3); ref.set_progress(0.3)
    z, y = torch.randn(8, 4), torch.arange(8) % 4
    torch.testing.assert_close(got(z, y), ref(z, y))
    # LWR options can be added to any method
    assert type(build_method_loss('la', COUNTS, head, lwr={'threshold': 0.2})).__name__ == 'LWRLoss'


def test_a_name_means_the_class_defaults_or_names_its_variant():
    import inspect
    for m in METHODS.values():
        defaults = {n: p.default for n, p in inspect.signature(m.loss).parameters.items()}
        assert all(defaults.get(k, inspect.Parameter.empty) != v for k, v in m.loss_kwargs.items()), m.name
    assert sorted(n for n, m in METHODS.items() if m.loss_kwargs) == ['dbm-bs-s32', 'dbm-ce-s32', 'mr2-paper']
    assert build_method_loss('mr2', COUNTS).variant == 'released' and build_method_loss('mr2-paper', COUNTS).variant == 'paper'
    d = build_method_loss('dbm', COUNTS)
    assert (d.base, d.scale) == ('bs', 8.0)
    for old in ('dbm-bs', 'dbm-ce'):   # names that meant another loss are refused with their replacement
        with pytest.raises(KeyError, match='renamed'): get_method(old)


def test_loss_call_is_the_constructor_call():
    from margin_notes.registry import loss_call
    from margin_notes.dbm import DBMLoss
    from margin_notes.mr2 import MR2Loss
    s = loss_call('mr2', num_classes=10)
    assert s.startswith('MR2Loss(num_classes=10, ') and "variant='released'" in s and 'lam=0.1' in s
    assert "base='bs'" in loss_call('dbm') and "scale='auto'" in loss_call('dbm')
    for name in METHODS:
        if METHODS[name].lwr is None:   # evaluating the string builds the same loss
            got = eval(loss_call(name, COUNTS), {c.__name__: c for c in (B.CELoss, B.FocalLoss, B.LDAMLoss, B.BalancedSoftmaxLoss,
                                                                          B.LogitAdjustedLoss, DBMLoss, MR2Loss)})
            assert repr(got) == repr(build_method_loss(name, COUNTS)), name


def test_register_method_is_the_extension_point():
    from margin_notes.registry import register_method, unregister_method
    from margin_notes.config import Config, validate_config

    class Smooth(torch.nn.Module):
        def __init__(self, num_classes: int, eps: float = 0.1): super().__init__(); self.K, self.eps = num_classes, eps
        def forward(self, z, y, features=None): return torch.nn.functional.cross_entropy(z, y, label_smoothing=self.eps)
    register_method('smooth-test', 'Smooth', Smooth, first_arg='num_classes', loss_kwargs={'eps': 0.3})
    try:
        l = build_method_loss('smooth-test', COUNTS)
        assert (l.K, l.eps) == (4, 0.3)
        validate_config(Config(loss='smooth-test', loss_kwargs={'eps': 0.2}))
        with pytest.raises(ConfigError, match="did you mean 'eps'"): validate_config(Config(loss='smooth-test', loss_kwargs={'epss': 0.2}))
        with pytest.raises(ValueError, match='exists already'): register_method('smooth-test', 'x', Smooth)
    finally: unregister_method('smooth-test')
    with pytest.raises(KeyError): get_method('smooth-test')


def test_names_aliases_and_errors():
    assert get_method('CE') is METHODS['erm'] and get_method('lwr') is METHODS['bs-lwr'] and get_method('MR²') is METHODS['mr2']
    with pytest.raises(KeyError, match="did you mean 'focal'"): get_method('focall')
    with pytest.raises(ValueError, match="did you mean 'tau'"): check_method_kwargs('la', {'taus': 2.0})
    with pytest.raises(ValueError, match="expects float"): check_method_kwargs('la', {'tau': 'big'})
    assert set(method_names()) == set(METHODS) and 'ce' in method_names(aliases=True)
    with pytest.raises(ImportError, match=r"margin_notes\[book\]"): import_extra('surely_not_installed_xyz')



def test_colours_come_from_the_entries():
    pytest.importorskip('matplotlib')
    from margin_notes.registry import method_color
    for m in METHODS.values():
        assert method_color(m.name) == method_color(m.label) == m.color





def test_replacing_an_alias_makes_the_name_mean_the_new_method(monkeypatch):
    "register_method(name, ..., replace=True) over an alias ('ce' names ERM): afterwards the name reaches the new method."
    import margin_notes.registry as R
    monkeypatch.setattr(R, 'METHODS', dict(R.METHODS)); monkeypatch.setattr(R, '_ALIASES', dict(R._ALIASES))   # restored after the test
    assert get_method('ce').name == 'erm'

    class Plain(torch.nn.Module):
        def __init__(self, num_classes: int): super().__init__(); self.K = num_classes
        def forward(self, z, y, features=None): return torch.nn.functional.cross_entropy(z, y)
    with pytest.raises(ValueError, match='exists already'): R.register_method('ce', 'Plain CE', Plain, first_arg='num_classes')
    R.register_method('ce', 'Plain CE', Plain, first_arg='num_classes', replace=True)
    assert R.get_method('ce').label == 'Plain CE' and R.get_method('erm').name == 'erm'
