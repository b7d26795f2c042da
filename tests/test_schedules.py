"""Tests of margin_notes.schedules (the schedules chapter, nbs/*_schedules.ipynb): `cosine_lr`, `warmup_step_lr`, `warmup_cosine_lr`, `lr_at_step` and `SCHEDULES`,
and the engine's `lr_at` that feeds a config into `lr_at_step`.

Each schedule is checked against a naive reference written here from the chapter's formulas, in float64 and in a
different form from the library's (step counts instead of epoch fractions, milestone boundaries instead of
`epoch >= m`), at every step of a small run."""
import math

import numpy as np
import pytest

from margin_notes.schedules import SCHEDULES, cosine_lr, lr_at_step, warmup_cosine_lr, warmup_step_lr
from margin_notes.config import Config
from margin_notes.engine import lr_at
from margin_notes.presets import PRESETS

REL = 1e-12


# ---------------------------------------------------------------- naive references (float64, per step)
def _ref_warmup(s, lr, ws, wf):
    "Iteration s < ws of the linear warm-up: from wf*lr, reaching lr at the last warm-up iteration."
    return np.float64(lr) * (np.float64(wf) + (1 - np.float64(wf)) * np.float64(s + 1) / np.float64(ws))


def _ref_cosine_steps(s, spe, lr, epochs, ws=0, wf=0.0, min_lr=0.0):
    "Cosine after a warm-up, written in iterations: the decay runs from iteration ws (peak) to epochs*spe (floor)."
    if s < ws: return _ref_warmup(s, lr, ws, wf)
    n = np.float64(epochs) * spe - ws                      # iterations of the decay
    p = np.clip(np.float64(s - ws) / n, 0.0, 1.0)
    return np.float64(min_lr) + (np.float64(lr) - min_lr) * (np.cos(np.pi * p) + 1) / 2


def _ref_step_steps(s, spe, lr, milestones, gamma, ws=0, wf=0.0):
    "Step drops at milestone epochs (integer or not), written as iteration boundaries: the drop at m starts at iteration m*spe."
    if s < ws: return _ref_warmup(s, lr, ws, wf)
    drops = sum(1 for m in milestones if s >= m * spe)
    return np.float64(lr) * np.float64(gamma) ** drops


def _naive_ldam_lr(epoch, base=0.1):
    "The LDAM-DRW release schedule, per epoch (epoch 0-based)."
    e = epoch + 1
    if e <= 5: return base * e / 5
    if e > 180: return base * 1e-4
    if e > 160: return base * 1e-2
    return base


# ---------------------------------------------------------------- lr_at_step against the references, every step
@pytest.mark.parametrize('spe,epochs,ws,wf,min_lr', [(7, 5, 10, 0.5, 0.0), (4, 6, 0, 0.0, 0.0), (5, 4, 3, 0.0, 0.01),
                                                     (1, 12, 2, 0.1, 0.001), (10, 3, 4, 0.5, 0.0)])
def test_cosine_matches_naive_reference_at_every_step(spe, epochs, ws, wf, min_lr):
    lr = 0.2
    for s in range(spe * epochs + 3 * spe):            # and past the end of the run
        got = lr_at_step(s, spe, lr, epochs, 'cosine', ws, wf, (), 0.1, min_lr)
        assert got == pytest.approx(float(_ref_cosine_steps(s, spe, lr, epochs, ws, wf, min_lr)), rel=REL, abs=1e-15), s


@pytest.mark.parametrize('spe,epochs,ws,wf,milestones,gamma', [(3, 10, 0, 0.0, (6, 8), 0.1), (4, 10, 5, 0.2, (2, 7), 0.01),
                                                               (1, 200, 5, 0.0, (160, 180), 0.01), (5, 6, 0, 0.0, (), 0.1),
                                                               (2, 9, 0, 0.0, (7, 3), 0.5),   # unsorted milestones
                                                               (4, 6, 0, 0.0, (2.5, 4.25), 0.1)])  # fractional: drop mid-epoch
def test_step_matches_naive_reference_at_every_step(spe, epochs, ws, wf, milestones, gamma):
    lr = 0.1
    for s in range(spe * epochs):
        got = lr_at_step(s, spe, lr, epochs, 'step', ws, wf, milestones, gamma)
        assert got == pytest.approx(float(_ref_step_steps(s, spe, lr, milestones, gamma, ws, wf)), rel=REL), s


@pytest.mark.parametrize('schedule', SCHEDULES)
@pytest.mark.parametrize('ws,wf', [(1, 0.0), (6, 0.0), (6, 0.25), (13, 0.5)])
def test_warmup_matches_naive_reference_for_every_schedule(schedule, ws, wf):
    "The warm-up is the same for every schedule: linear from wf*lr (exclusive) to lr at iteration ws-1, then the schedule takes over."
    spe, epochs, lr = 5, 8, 0.3
    lrs = [lr_at_step(s, spe, lr, epochs, schedule, ws, wf, (4,), 0.1, 0.0) for s in range(spe * epochs)]
    for s in range(ws):
        assert lrs[s] == pytest.approx(float(_ref_warmup(s, lr, ws, wf)), rel=REL), s
    assert lrs[ws - 1] == pytest.approx(lr, rel=REL)                      # the warm-up ends at the peak
    assert lrs[0] == pytest.approx(lr * (wf + (1 - wf) / ws), rel=REL)    # and starts one step above wf*lr
    assert all(b > a for a, b in zip(lrs[:ws - 1], lrs[1:ws]))            # strictly increasing
    assert lrs[ws] == pytest.approx(lr, rel=REL)                          # the first step after it: the peak, for all three


def test_constant_is_constant_after_warmup():
    lrs = [lr_at_step(s, 4, 0.05, 3, 'constant', 3, 0.0, (1, 2), 0.1, 0.04) for s in range(12)]
    assert lrs[3:] == [0.05] * 9                   # milestones and min_lr do not apply
    assert lr_at_step(0, 4, 0.05, 3, 'constant') == 0.05


def test_no_warmup_when_warmup_steps_is_zero():
    for sched in SCHEDULES:
        assert lr_at_step(0, 10, 0.1, 5, sched, 0, 0.5) == pytest.approx(0.1, rel=REL)


# ---------------------------------------------------------------- milestone boundaries
@pytest.mark.parametrize('spe', [1, 3, 8])
def test_step_milestone_boundaries(spe):
    "The drop at milestone m happens at the first iteration of epoch m, not one iteration earlier or later; drops compound."
    lr, g, ms = 0.1, 0.1, (3, 5)
    f = lambda s: lr_at_step(s, spe, lr, 8, 'step', 0, 0.0, ms, g)
    for m, before, after in ((3, lr, lr * g), (5, lr * g, lr * g * g)):
        assert f(m * spe - 1) == pytest.approx(before, rel=REL), (m, 'last iteration before the milestone')
        assert f(m * spe) == pytest.approx(after, rel=REL), (m, 'first iteration of the milestone epoch')
    assert f(8 * spe - 1) == pytest.approx(lr * g ** 2, rel=REL)


def test_step_milestone_inside_the_warmup_applies_after_it():
    "A milestone reached during the warm-up: the warm-up ignores it, the first step after the warm-up is already dropped."
    spe, ws = 2, 6                                         # warm-up: epochs 0-2; milestone at epoch 1
    lrs = [lr_at_step(s, spe, 0.1, 6, 'step', ws, 0.0, (1,), 0.1) for s in range(12)]
    assert lrs[ws - 1] == pytest.approx(0.1, rel=REL) and lrs[ws] == pytest.approx(0.01, rel=REL)


def test_step_schedule_matches_ldam_release_at_epoch_ends():
    c = PRESETS['cifar10lt100-r32-ldam-drw']
    spe = 10
    for ep in range(200):
        assert math.isclose(lr_at(c, ep * spe + spe - 1, spe), _naive_ldam_lr(ep), rel_tol=1e-9), ep


def test_per_step_with_one_step_per_epoch_is_the_per_epoch_ldam_schedule():
    for e in range(200):
        assert lr_at_step(e, 1, 0.1, 200, 'step', 5, 0.0, (160, 180), 0.01) == pytest.approx(_naive_ldam_lr(e), rel=REL), e
        assert warmup_step_lr(e) == pytest.approx(_naive_ldam_lr(e), rel=REL), e


# ---------------------------------------------------------------- the cosine's floor
@pytest.mark.parametrize('min_lr', [0.0, 1e-4, 0.02])
def test_cosine_min_lr_floor(min_lr):
    "After the warm-up the cosine never goes below min_lr, ends near it, and stays at it past the end of the run."
    spe, epochs, lr, ws = 6, 5, 0.1, 4
    n = spe * epochs
    lrs = np.array([lr_at_step(s, spe, lr, epochs, 'cosine', ws, 0.0, (), 0.1, min_lr) for s in range(3 * n)])
    after = lrs[ws:]
    assert (after >= min_lr - 1e-15).all() and (after <= lr + 1e-15).all()
    assert (np.diff(lrs[ws:n + 1]) < 0).all()                              # strictly decreasing through the decay
    assert lrs[n] == pytest.approx(min_lr, abs=1e-15) and (np.abs(lrs[n:] - min_lr) <= 1e-15).all()
    last = float(_ref_cosine_steps(n - 1, spe, lr, epochs, ws, 0.0, min_lr))   # the last step of the run is just above the floor
    assert lrs[n - 1] == pytest.approx(last, rel=REL) and (lrs[n - 1] > min_lr)
    mid = ws + (n - ws) / 2                                                # half-way through the decay: half-way between peak and floor
    if mid == int(mid): assert lrs[int(mid)] == pytest.approx((lr + min_lr) / 2, rel=REL)


def test_min_lr_does_not_floor_the_warmup_or_the_steps():
    "min_lr belongs to the cosine only: the warm-up starts below it and the step schedule drops below it."
    assert lr_at_step(0, 10, 0.1, 5, 'cosine', 10, 0.0, (), 0.1, 0.05) == pytest.approx(0.01, rel=REL)
    assert lr_at_step(45, 10, 0.1, 5, 'step', 0, 0.0, (2,), 0.1, 0.05) == pytest.approx(0.01, rel=REL)


# ---------------------------------------------------------------- the per-epoch functions
def test_cosine_lr_against_the_formula():
    for base, total, mn in ((0.1, 10, 0.0), (0.5, 7.5, 0.02)):
        for it in np.linspace(-2, total + 3, 41):
            p = min(max(it / total, 0.0), 1.0)
            want = mn + (base - mn) * (1 + math.cos(math.pi * p)) / 2
            assert cosine_lr(base, it, total, mn) == pytest.approx(want, rel=REL, abs=1e-15), it
    assert cosine_lr(0.1, 5, 10, 0.02) == pytest.approx(0.06, rel=REL)       # half-way: the mean of peak and floor


def test_warmup_step_lr_fractional_epochs_never_overshoot():
    w = [warmup_step_lr(k / 100) for k in range(0, 1000)]
    assert max(w) == 0.1 and all(b >= a for a, b in zip(w, w[1:]))
    assert warmup_step_lr(4.75) == pytest.approx(0.1, rel=REL)
    assert [warmup_step_lr(e) for e in (159.99, 160, 179.99, 180)] == pytest.approx([0.1, 1e-3, 1e-3, 1e-5], rel=REL)
    with pytest.raises(ValueError, match='same length'): warmup_step_lr(3, milestones=(1, 2), factors=(0.1,))


def test_warmup_cosine_lr_against_the_formula():
    base, total, w, sf, mn = 0.1, 20, 4, 0.25, 0.001
    for e in np.linspace(0, total + 2, 89):
        if e < w: want = base * (sf + (1 - sf) * e / w)
        else:
            p = min((e - w) / (total - w), 1.0)
            want = mn + (base - mn) * (1 + math.cos(math.pi * p)) / 2
        assert warmup_cosine_lr(e, total, base, w, sf, mn) == pytest.approx(want, rel=REL, abs=1e-15), e
    assert warmup_cosine_lr(7.5, 10, 1.0, 5) == pytest.approx(cosine_lr(1.0, 2.5, 5))
    with pytest.raises(ValueError, match='must exceed'): warmup_cosine_lr(0, 5, warmup_epochs=5)


# ---------------------------------------------------------------- the engine's config -> lr_at_step
def test_cosine_with_warmup():
    c = Config(lr=0.2, schedule='cosine', warmup_epochs=0, warmup_steps=4, warmup_from=0.5, epochs=3, min_lr=0.0)
    spe = 10
    lrs = [lr_at(c, s, spe) for s in range(30)]
    assert lrs[:4] == pytest.approx([0.2 * (0.5 + 0.5 * (s + 1) / 4) for s in range(4)])
    tw = 0.4
    for s in range(4, 30):
        p = (s / spe - tw) / (3 - tw)
        assert lrs[s] == pytest.approx(0.1 * (1 + math.cos(math.pi * p)))
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_lr_at_warmup_epochs_become_steps():
    "warmup_steps unset: warmup_epochs * steps_per_epoch iterations, rounded."
    c = Config(lr=0.1, schedule='cosine', warmup_epochs=1.5, warmup_steps=None, warmup_from=0.0, epochs=4, min_lr=0.0)
    spe = 4                                                                 # 1.5 epochs: 6 iterations
    for s in range(16):
        assert lr_at(c, s, spe) == pytest.approx(float(_ref_cosine_steps(s, spe, 0.1, 4, 6, 0.0, 0.0)), rel=REL, abs=1e-15), s


# ---------------------------------------------------------------- a bad schedule name
@pytest.mark.parametrize('bad', ['linear', 'Cosine', '', 'steps'])
def test_bad_schedule_name_is_a_clear_error(bad):
    with pytest.raises(ValueError) as e: lr_at_step(0, 1, 0.1, 10, bad)
    msg = str(e.value)
    assert '\n' not in msg and repr(bad) in msg and all(repr(s) in msg for s in SCHEDULES), msg


def test_schedules_constant_lists_what_lr_at_step_takes():
    assert SCHEDULES == ('cosine', 'step', 'constant')
    for s in SCHEDULES: assert lr_at_step(3, 2, 0.1, 5, s) > 0


def test_schedules_against_naive_loops():
    from margin_notes.schedules import lr_at_step, warmup_cosine_lr, cosine_lr
    # naive per-step cosine after a linear warm-up from 0.5x, written from the formula
    lr, spe, E, ws = 0.2, 7, 5, 10
    for s in range(spe * E):
        if s < ws: want = lr * (0.5 + 0.5 * (s + 1) / ws)
        else:
            p = (s / spe - ws / spe) / (E - ws / spe)
            want = 0.5 * lr * (1 + math.cos(math.pi * p))
        assert lr_at_step(s, spe, lr, E, 'cosine', ws, 0.5) == pytest.approx(want, rel=1e-12)
    assert warmup_cosine_lr(7.5, 10, 1.0, 5) == pytest.approx(cosine_lr(1.0, 2.5, 5))


def test_fractional_milestone_drops_at_the_same_time_in_both_step_schedules():
    "`lr_at_step` and `warmup_step_lr` agree on when a drop at a fractional epoch happens (once differed: epoch 3 against 2.5)."
    spe, ms = 8, (2.5, 3.75)
    for s in range(6 * spe):
        a = lr_at_step(s, spe, 1.0, 6, 'step', 0, 0.0, ms, 0.1)
        b = warmup_step_lr(s / spe, 1.0, 0, ms, (0.1, 0.01))
        assert a == pytest.approx(b, rel=REL), s
    assert lr_at_step(20, spe, 1.0, 6, 'step', 0, 0.0, ms, 0.1) == pytest.approx(0.1) and lr_at_step(19, spe, 1.0, 6, 'step', 0, 0.0, ms, 0.1) == 1.0
