"""One parametrised bad-input matrix over every public loss of the library.

`LOSSES` (name -> Case(factory, kind)) holds every method of the registry (`margin_notes.registry.METHODS`, built with
the registry's own `build_method_loss`) plus the public losses and configurations the registry does not list; every
test below runs over all of them, so a new method is covered by its registry entry and any other loss by one line. `kind` says what the loss is fed: 'logits' (a linear head), 'cosines' (a cosine
head: values in [-1, 1]); `features=True` when the loss also needs the penultimate features.
"""
import inspect
import math
import pydoc
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn

from margin_notes.baselines import (BalancedSoftmaxLoss, CELoss, FocalLoss, LDAMLoss, LogitAdjustedLoss,
                                    drw_class_weights_at, drw_weights)
from margin_notes.core import value_checks
from margin_notes.dbm import DBMComposite, DBMLoss
from margin_notes.models import CosineClassifier
from margin_notes.lwr import LWRegularizer, LWRLoss
from margin_notes.stats import ClassStats
from margin_notes.marc import MARCLoss, fit_marc
from margin_notes.mr2 import MR2Loss
from margin_notes.registry import METHODS, build_method_loss

K, D, B = 4, 5, 12
COUNTS = [40, 20, 8, 2]


@dataclass
class Case:
    factory: Callable[[], nn.Module]
    kind: str = 'logits'            # 'logits' or 'cosines'
    features: bool = False          # the loss needs features=(B, D)


def _takes_class_weights(loss) -> bool:
    try: loss.set_class_weight(None); return True
    except AttributeError: return False


def _from_registry(m):
    "A registry method's training loss, built by the registry's own factory."
    def make():
        loss = build_method_loss(m, COUNTS, head=nn.Linear(D, K))
        if hasattr(loss, 'set_progress'): loss.set_progress(0.25)     # the trainer's job (LWR); lambda = 0.5625
        return loss
    return Case(make, 'cosines' if m.head == 'cosine' else 'logits', features=m.needs_features)


# every method of the registry (a new method is covered by its registry entry) ...
LOSSES = {name: _from_registry(m) for name, m in METHODS.items()}
# ... plus the public losses and configurations that are not a registry method's training loss
LOSSES.update({
    'ce-num_classes': Case(lambda: CELoss(num_classes=K)),
    'ce-drw-weights': Case(lambda: CELoss(drw_class_weights_at(9, COUNTS, drw_start_frac=0.8, epochs=10, beta=0.99))),
    'focal-num_classes': Case(lambda: FocalLoss(2.0, num_classes=K)),
    'ldam-drw-weights': Case(lambda: LDAMLoss(COUNTS, weight=drw_weights(COUNTS, 0.99)), 'cosines'),
    'mr2-normalised': Case(lambda: MR2Loss(K, lam=0.3, variant='paper', rep_normalize=True, stats_mode='moment', feature_dim=D),
                           features=True),
    'dbm+mr2': Case(lambda: DBMComposite(MR2Loss(K, lam=0.3), COUNTS, margin=0.3), 'cosines', features=True),
    'dbm+bs-lwr': Case(lambda: LWRLoss(DBMComposite(BalancedSoftmaxLoss(COUNTS), COUNTS), nn.Linear(D, K),
                                       schedule='constant'), 'cosines'),
    'marc-stage2': Case(lambda: MARCLoss(COUNTS)),
})
NAMES = list(LOSSES)


def inputs(case, seed=0, b=B, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = (torch.rand(b, K, generator=g) * 1.8 - 0.9) if case.kind == 'cosines' else torch.randn(b, K, generator=g) * 2
    y = torch.arange(b) % K                      # every class present
    f = torch.randn(b, D, generator=g) if case.features else None
    return out.to(dtype), y, (None if f is None else f.to(dtype))


def call(loss, out, y, f):
    return loss(out, y, features=f) if f is not None else loss(out, y)


def fresh(name):
    torch.manual_seed(0)
    return LOSSES[name].factory()


# ------------------------------------------------------------------------------------------------ labels

@pytest.mark.parametrize('dtype', [torch.uint8, torch.int8, torch.int16, torch.int32])
@pytest.mark.parametrize('name', NAMES)
def test_any_integer_label_dtype_gives_the_int64_answer(name, dtype):
    case = LOSSES[name]
    out, y, f = inputs(case)
    for weights in ([None, [1.0, 2.0, 3.0, 0.5]] if _takes_class_weights(fresh(name)) else [None]):
        ref_loss, loss = fresh(name), fresh(name)
        if weights is not None:
            ref_loss.set_class_weight(weights); loss.set_class_weight(weights)
        ref = call(ref_loss, out, y, f)
        got = call(loss, out, y.to(dtype), f)
        assert torch.isfinite(ref)
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize('bad', ['float', 'bool', 'high', 'negative'])
@pytest.mark.parametrize('name', NAMES)
def test_bad_labels_raise_naming_targets(name, bad):
    case = LOSSES[name]
    out, y, f = inputs(case)
    y = {'float': y.float(), 'bool': y % 2 == 0, 'high': y.clone().fill_(K), 'negative': y - 1}[bad]
    with pytest.raises((ValueError, TypeError), match='targets'):
        call(fresh(name), out, y, f)


# ------------------------------------------------------------------------------------------------ shapes, K, empty

@pytest.mark.parametrize('name', NAMES)
def test_wrong_shapes_raise_value_errors(name):
    case = LOSSES[name]
    out, y, f = inputs(case)
    for args in [(out[0], y, f), (out, y[:-1], f), (out, y[:, None], f), (out[:, :, None], y, f)]:
        with pytest.raises(ValueError):
            call(fresh(name), *args)
    if case.features:
        with pytest.raises(ValueError, match='features'):
            call(fresh(name), out, y, f[:-1])


@pytest.mark.parametrize('name', NAMES)
def test_wrong_number_of_classes(name):
    case = LOSSES[name]
    out, y, f = inputs(case)
    wide = torch.cat([out, out[:, :1]], 1)
    with pytest.raises(ValueError, match=r'columns|classes|num_classes|rows|shape'):
        call(fresh(name), wide, y, f)


@pytest.mark.parametrize('name', NAMES)
def test_empty_batch_is_a_clear_error(name):
    case = LOSSES[name]
    out, y, f = inputs(case, b=0)
    with pytest.raises(ValueError, match='empty batch'):
        call(fresh(name), out, y, f)


def test_fit_marc_empty_cache_is_a_clear_error():
    with pytest.raises(ValueError, match='empty batch'):
        fit_marc(torch.zeros(0, K), torch.ones(K), torch.zeros(0, dtype=torch.long), COUNTS)
    # and uint8 labels give the int64 fit
    g = torch.Generator().manual_seed(0)
    eta, y = torch.randn(40, K, generator=g), torch.arange(40) % K
    a = fit_marc(eta, torch.ones(K), y, COUNTS, max_iter=20)
    b = fit_marc(eta, torch.ones(K), y.to(torch.uint8), COUNTS, max_iter=20)
    torch.testing.assert_close(a.omega, b.omega, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ values

@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
@pytest.mark.parametrize('name', NAMES)
def test_non_finite_scores_raise_with_checks_on(name, bad):
    case = LOSSES[name]
    out, y, f = inputs(case)
    out = out.clone(); out[1, 2] = bad
    with pytest.raises(ValueError, match='NaN or inf'):
        call(fresh(name), out, y, f)
    if case.features:
        out, y, f = inputs(case)
        f = f.clone(); f[0, 0] = bad
        with pytest.raises(ValueError, match='NaN or inf'):
            call(fresh(name), out, y, f)


@pytest.mark.parametrize('name', [n for n, c in LOSSES.items() if c.kind == 'cosines'])
def test_cosine_losses_refuse_linear_logits(name):
    case = LOSSES[name]
    _, y, f = inputs(case)
    logits = nn.Linear(D, K)(torch.randn(B, D) * 4)
    with pytest.raises(ValueError, match=r'(LDAMLoss|DBMLoss) expects `cosines` in \[-1, 1\] from a cosine head'):
        call(fresh(name), logits, y, f)
    # rounding just past 1 (a cosine head in low precision) is accepted
    out, y, f = inputs(case)
    out = out.clone(); out[0, 0] = 1.0005
    assert torch.isfinite(call(fresh(name), out, y, f))
    # with value checks off (the accelerator path) nothing is read, so nothing is raised
    with value_checks(False):
        call(fresh(name), logits, y, f)


@pytest.mark.parametrize('name', NAMES)
def test_numpy_inputs_raise_type_errors(name):
    case = LOSSES[name]
    out, y, f = inputs(case)
    for args in [(out.numpy(), y, f), (out, y.numpy(), f)] + ([(out, y, f.numpy())] if case.features else []):
        with pytest.raises(TypeError, match='torch.Tensor'):
            call(fresh(name), *args)


# ------------------------------------------------------------------------------------------------ devices, dtypes

def _move(loss, device):
    loss = loss.to(device)
    if isinstance(loss, LWRLoss) and isinstance(loss._head, nn.Module):
        loss._head.to(device)
    return loss


@pytest.mark.parametrize('name', NAMES)
def test_runs_on_meta_tensors(name):
    case = LOSSES[name]
    out, y, f = inputs(case)
    loss = _move(fresh(name), 'meta')
    val = call(loss, out.to('meta'), y.to('meta'), None if f is None else f.to('meta'))
    assert val.device.type == 'meta' and val.dim() == 0


@pytest.mark.parametrize('name', NAMES)
def test_half_keeps_buffers_at_least_float32(name):
    case = LOSSES[name]
    out, y, f = inputs(case)
    ref = call(fresh(name), out, y, f)
    loss = fresh(name)
    before = {k: v.dtype for k, v in loss.named_buffers() if v.is_floating_point()}
    loss.half()
    after = {k: v.dtype for k, v in loss.named_buffers() if v.is_floating_point()}
    assert after == before, (before, after)
    # the same float32 inputs give the same answer as before .half()
    torch.testing.assert_close(call(loss, out, y, f), ref, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ constructors

@pytest.mark.parametrize('make,msg', [
    (lambda: MR2Loss(10.7), 'whole number'),
    (lambda: MR2Loss(0), 'num_classes'),
    (lambda: MR2Loss(4, eps=0.0), 'eps'),
    (lambda: MR2Loss(4, eps=-1.0), 'eps'),
    (lambda: CELoss(num_classes=2.5), 'whole number'),
    (lambda: FocalLoss(num_classes=True), 'whole number'),
    (lambda: DBMLoss(COUNTS, margin=4.0), 'pi'),
    (lambda: DBMLoss(COUNTS, eps=0.0), 'eps'),
    (lambda: LDAMLoss(COUNTS, max_margin=2.5), 'max_margin'),
    (lambda: LDAMLoss(COUNTS, scale=0.0), 'scale'),
    (lambda: BalancedSoftmaxLoss([4, 0, 1]), 'positive'),
    (lambda: MARCLoss(COUNTS, gamma=-1.0), 'gamma'),
    (lambda: drw_class_weights_at(3, COUNTS), 'drw_start'),
    (lambda: CosineClassifier(D, K, eps=0.0), 'eps'),
    (lambda: CosineClassifier(D, 3.5), 'whole number'),
    (lambda: ClassStats(2.5), 'whole number'),
    (lambda: LWRegularizer(eps=-1.0), 'eps'),
])
def test_constructor_arguments_are_validated(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


def test_lwr_transposed_head_weight():
    head = nn.Linear(D, K)
    out, y, f = inputs(LOSSES['bs-lwr'])
    with pytest.raises(ValueError, match='transposed'):
        LWRLoss(BalancedSoftmaxLoss(COUNTS), head.weight.detach().T)(out, y)
    # (D, K) with D == K: the shape alone cannot tell, the features can
    with pytest.raises(ValueError, match='transposed'):
        LWRLoss(BalancedSoftmaxLoss(COUNTS), torch.randn(K, D))(out, y, features=torch.randn(B, K))


# ------------------------------------------------------------------------------------------------ help()

@pytest.mark.parametrize('name', NAMES)
def test_help_lists_every_constructor_argument(name):
    cls = type(fresh(name))
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    params = [p for p in inspect.signature(cls.__init__).parameters if p != 'self']
    section = cls.__doc__.split('Parameters\n----------', 1)
    assert len(section) == 2, f"{cls.__name__}: no Parameters section in __doc__"
    for p in params:   # '<name> : <type>, default <d>' or '<name>', then an indented, non-empty description
        assert re.search(rf'^\*{{0,2}}{p}( :.*)?\n    \S', section[1], re.M), f"{cls.__name__}.{p} is not documented"
    assert 'Parameters' in text and 'c-bar' in pydoc.render_doc(MR2Loss, renderer=pydoc.plaintext)


def test_show_doc_does_not_repeat_the_parameters():
    """nbdev's show_doc renders the summary of a numpy docstring, the arguments come from the docments once."""
    showdoc = pytest.importorskip('nbdev.showdoc')
    md = showdoc.show_doc(MR2Loss)._repr_markdown_()
    assert 'Parameters' not in md and '----------' not in md
    assert md.count('mean_margin') == 1 and 'c-bar: the mean of the margins gamma' in md


MODULES = ['core', 'stats', 'mr2', 'baselines', 'marc', 'dbm', 'lwr', 'metrics']


def _public_callables():
    import importlib
    for mod in MODULES:
        m = importlib.import_module(f'margin_notes.{mod}')
        for nm in m.__all__:
            obj = getattr(m, nm)
            if inspect.isclass(obj) and obj.__module__ == m.__name__ and inspect.isfunction(obj.__dict__.get('__init__')):
                yield f'{mod}.{nm}', obj, obj.__init__
            elif inspect.isfunction(obj):
                yield f'{mod}.{nm}', obj, obj


@pytest.mark.parametrize('qual,obj,fn', list(_public_callables()), ids=lambda v: v if isinstance(v, str) else '')
def test_help_of_every_public_class_and_function_explains_its_arguments(qual, obj, fn):
    params = [p for p, v in inspect.signature(fn).parameters.items() if p not in ('self', 'cls')]
    if not params: return
    doc = obj.__doc__ or ''
    assert 'Parameters\n----------' in doc, f'{qual}: help() shows no Parameters section'
    section = doc.split('Parameters\n----------', 1)[1]
    for p in params:
        assert re.search(rf'^\*{{0,2}}{p}( :.*)?\n    \S', section, re.M), f'{qual}: argument {p!r} is not explained'
