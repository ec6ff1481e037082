"""Training through RemoteFocalLoss follows local torch training step for step.

A 2-layer MLP on 20-D synthetic data, 5 heavily imbalanced classes (90/4/3/2/1 %), trained
for 300 SGD steps twice from the same initial weights on the same batches: once with a local
float32 torch softmax focal loss (gamma = 2), once with RemoteFocalLoss. The losses and every
weight are compared at every step.

Tolerance (asserted): max |loss difference| <= 1e-5 and max |weight difference| <= 1e-5 at
every one of the 300 steps. Both sides do float32 math, but not the same operations (the
server fuses the log-softmax, the focal factor and its gradient; torch autograd composes them),
so each step's gradient differs in the last float32 bits (~1e-7 relative); SGD with momentum
carries those differences forward and could compound them. Measured (printed): ~6e-8 on the
loss and ~1.5e-7 on the weights, i.e. about one float32 ulp of O(1) values, not growing; 1e-5
leaves ~60x margin (for another backend's rounding) and is still far below anything that
changes what the model learns (weights are O(0.1..1)).

Also printed, not asserted: minority-class recall of the focal model against the same MLP
trained with plain cross-entropy on the same data.

The catalogue variants (asymmetric, quality_focal, varifocal, focal_star, distribution_focal)
get the same local-vs-remote comparison on small models, one test each (below).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import refs
from focalserve.torch import RemoteFocalLoss
from helpers import stable_seed

PRIORS = [0.90, 0.04, 0.03, 0.02, 0.01]
DIM, CLASSES, HIDDEN = 20, 5, 64
STEPS, BATCH, LR, MOMENTUM = 300, 256, 0.1, 0.9
LOSS_TOL = WEIGHT_TOL = 1e-5


def make_data(n, rng, means):
    y = rng.choice(CLASSES, size=n, p=PRIORS)
    x = means[y] + rng.standard_normal((n, DIM))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def local_softmax_focal(logits, y, gamma=2.0):
    """Softmax focal loss in plain float32 torch (docs/variants.md §1, alpha = 1), mean over rows."""
    log_pt = F.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    return (-(1 - log_pt.exp()) ** gamma * log_pt).mean()


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))


def train(loss_fn, x, y, order, seed=0, trace=None):
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    losses = []
    for step in range(STEPS):
        idx = order[step]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if trace is not None:
            trace.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
    return model, np.array(losses)


def recall(model, x, y):
    with torch.no_grad():
        pred = model(x).argmax(1)
    per_class = [float((pred[y == c] == c).float().mean()) for c in range(CLASSES)]
    minority = y != 0
    return per_class, float((pred[minority] == y[minority]).float().mean())


def test_remote_training_tracks_local_training(client):
    torch.set_num_threads(2)
    rng = np.random.default_rng(2024)
    means = rng.standard_normal((CLASSES, DIM)) * 0.6  # overlapping clusters: minority classes are hard
    x, y = make_data(20000, rng, means)
    x_test, y_test = make_data(20000, rng, means)
    order = [torch.from_numpy(rng.choice(len(x), BATCH, replace=False)) for _ in range(STEPS)]

    t0 = time.perf_counter()
    local_trace, remote_trace = [], []
    local_model, local_losses = train(local_softmax_focal, x, y, order, trace=local_trace)
    t1 = time.perf_counter()
    remote_model, remote_losses = train(RemoteFocalLoss(client, "softmax_focal", gamma=2.0), x, y, order,
                                        trace=remote_trace)
    t2 = time.perf_counter()
    ce_model, _ = train(lambda logits, target: F.cross_entropy(logits, target), x, y, order)

    loss_diff = np.abs(local_losses - remote_losses)
    weight_diff = torch.stack([(a - b).abs().max() for a, b in zip(local_trace, remote_trace)]).numpy()
    print(f"\n[training] {STEPS} steps, batch {BATCH}: local {t1 - t0:.2f} s, remote {t2 - t1:.2f} s")
    print(f"[training] loss: first {local_losses[0]:.6f}, last {local_losses[-1]:.6f}; "
          f"max |local - remote| {loss_diff.max():.3e} (relative {np.max(loss_diff / local_losses):.3e}), "
          f"at step 300 {loss_diff[-1]:.3e}")
    print(f"[training] weights: max |local - remote| over all steps {weight_diff.max():.3e} "
          f"(step 1: {weight_diff[0]:.3e}, step 100: {weight_diff[99]:.3e}, step 300: {weight_diff[-1]:.3e}); "
          f"largest weight {local_trace[-1].abs().max():.3f}")

    focal_cls, focal_minority = recall(remote_model, x_test, y_test)
    ce_cls, ce_minority = recall(ce_model, x_test, y_test)
    counts = np.bincount(y_test.numpy(), minlength=CLASSES)
    print(f"[training] test set class counts {counts.tolist()}")
    print(f"[training] recall per class  focal(γ=2, remote): {[round(r, 3) for r in focal_cls]}  "
          f"cross-entropy: {[round(r, 3) for r in ce_cls]}")
    print(f"[training] minority-class (1-4) recall: focal {focal_minority:.3f}  cross-entropy {ce_minority:.3f}")

    assert loss_diff.max() <= LOSS_TOL
    assert weight_diff.max() <= WEIGHT_TOL
    # the same weights to ~1e-7 make the same predictions (a borderline test point may flip)
    assert abs(recall(local_model, x_test, y_test)[1] - focal_minority) <= 2e-3


# -- the catalogue (docs/variants.md §5) -----------------------------------------------------------
#
# Each §5 variant trains a 16-32-K MLP for 300 SGD steps (batch 128, lr 0.1, momentum 0.9) twice,
# from the same initial weights on the same batches: once through RemoteFocalLoss, once with a
# local float32 torch version of the loss (refs.py's expression of the contract's forward formula,
# evaluated in float32; autograd gives its gradient). The inputs exercise each variant's forms:
# asymmetric multi-label float targets; quality_focal class-index targets with `scores`;
# varifocal IoU targets with per-item `weights` (some 0); focal_star class indices with
# background and alpha; distribution_focal [N, B=8, 4 sides] logits.
#
# Tolerance (asserted): the same LOSS_TOL = WEIGHT_TOL = 1e-5 as above, at every step, derived so:
# each step both sides compute the gradient in float32 through different operations (the
# server's closed-form gradient and float64 reduction; autograd through refs' expression and a
# float32 sum), so an element differs by a few tens of float32 roundings at most, <= 30 u |g|
# with u = 2^-24 (1.8e-6 |g|). SGD with momentum turns a gradient difference dg into weight
# differences summing to lr / (1 - momentum) * dg = 1.0 * dg, and the rounding differences of
# successive steps have independent signs, so over T = 300 steps they add like a random walk:
# sqrt(300) * 1.8e-6 * |g| = 3.1e-5 |g|; the gradient elements here are <= 0.07 (0.36 in
# quality_focal's first step; measured), so about 2e-6, plus each weight's own rounding to
# float32 (an ulp of the largest weight, <= 2.4: 2.4e-7). The loss follows the weights: an O(1)
# loss of weights that differ by dw differs by |dl/dw| dw plus its own roundings, the same order.
# Measured (printed): <= 2.4e-7 on the loss and <= 4.8e-7 on the weights (distribution_focal,
# whose weights are the largest); 1e-5 is 5x the estimate and 20x the worst measured, and far
# below anything that changes what the model learns.

CAT_DIM, CAT_HIDDEN, CAT_CLASSES, CAT_BINS, CAT_SIDES = 16, 32, 5, 8, 4
CAT_STEPS, CAT_BATCH, CAT_N = 300, 128, 4096


def _catalogue_data(variant, rng):
    """(x [N, 16], targets, {per-item extras}, model output shape after the batch dim, params)."""
    x = rng.standard_normal((CAT_N, CAT_DIM))
    proj = rng.standard_normal((CAT_DIM, CAT_CLASSES)) / np.sqrt(CAT_DIM)
    score = x @ proj + 0.5 * rng.standard_normal((CAT_N, CAT_CLASSES))
    extras = {}
    # a class per row from the projection, background (C) for a low winning score: ~40% background
    cls = np.where(score.max(1) > 0.6, score.argmax(1), CAT_CLASSES)
    quality = 1.0 / (1.0 + np.exp(-(x @ rng.standard_normal(CAT_DIM) / np.sqrt(CAT_DIM))))  # in (0, 1)
    if variant == "asymmetric":  # multi-label, 12-30 % positives per label
        targets = (score > np.array([0.5, 0.7, 0.9, 1.0, 1.2])).astype(np.float32)
        params, out = {"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05}, (CAT_CLASSES,)
    elif variant == "quality_focal":  # mmdetection's (label, score) form
        targets, extras["scores"] = cls.astype(np.int64), quality.astype(np.float32)
        params, out = {"beta": 2.0}, (CAT_CLASSES,)
    elif variant == "varifocal":  # IoU-aware targets, positives weighted 2x, a few items weighted 0
        q = np.zeros((CAT_N, CAT_CLASSES + 1))
        q[np.arange(CAT_N), cls] = quality
        targets = q[:, :CAT_CLASSES].astype(np.float32)
        weights = np.where(targets > 0, 2.0, 1.0)
        weights[rng.random(weights.shape) < 0.1] = 0.0
        extras["weights"] = weights.astype(np.float32)
        params, out = {"alpha": 0.75, "gamma": 2.0}, (CAT_CLASSES,)
    elif variant == "focal_star":  # class-index targets, background C
        targets = cls.astype(np.int64)
        params, out = {"gamma": 2.0, "beta": 1.0, "alpha": 0.25}, (CAT_CLASSES,)
    else:  # distribution_focal: 4 box sides' distances, each in [0, B-1], logits [N, B, 4]
        sides = x @ rng.standard_normal((CAT_DIM, CAT_SIDES)) / np.sqrt(CAT_DIM)
        targets = ((CAT_BINS - 1) / 2 * (1 + np.tanh(sides))).astype(np.float32)
        params, out = {}, (CAT_BINS, CAT_SIDES)
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return (torch.tensor(x, dtype=torch.float32), to_torch(targets), {k: to_torch(v) for k, v in extras.items()},
            out, params)


def _local_catalogue_loss(variant, params):
    """The float32 torch reference with MEAN's reduction, as the server reduces."""
    def loss(logits, targets, **extras):
        losses, count = refs.per_item(variant, logits, targets, **extras, **params)
        return refs.reduce(losses, count, "mean", variant=variant)
    return loss


def _train_catalogue(loss_fn, x, targets, extras, out_shape, order, seed=0):
    torch.manual_seed(seed)
    width = int(np.prod(out_shape))
    model = torch.nn.Sequential(torch.nn.Linear(CAT_DIM, CAT_HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(CAT_HIDDEN, width))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    losses, trace = [], []
    for idx in order:
        opt.zero_grad()
        logits = model(x[idx]).view(len(idx), *out_shape)
        loss = loss_fn(logits, targets[idx], **{k: v[idx] for k, v in extras.items()})
        loss.backward()
        opt.step()
        losses.append(loss.item())
        trace.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
    return np.array(losses), trace


@pytest.fixture
def one_torch_thread():
    """A model this small runs fastest on one thread; two spin against the server for the same two
    cores (torch's dim-1 log_softmax of [128, 8, 4] took 16 ms per step instead of 0.3 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CATALOGUE = ["asymmetric", "quality_focal", "varifocal", "focal_star", "distribution_focal"]


@pytest.mark.parametrize("variant", CATALOGUE)
def test_catalogue_training_tracks_local_training(client, one_torch_thread, variant):
    rng = np.random.default_rng(2024 + CATALOGUE.index(variant))
    x, targets, extras, out_shape, params = _catalogue_data(variant, rng)
    order = [torch.from_numpy(rng.choice(CAT_N, CAT_BATCH, replace=False)) for _ in range(CAT_STEPS)]
    t0 = time.perf_counter()
    local_losses, local_trace = _train_catalogue(_local_catalogue_loss(variant, params), x, targets, extras,
                                                 out_shape, order)
    t1 = time.perf_counter()
    remote_losses, remote_trace = _train_catalogue(RemoteFocalLoss(client, variant, **params), x, targets, extras,
                                                   out_shape, order)
    t2 = time.perf_counter()
    loss_diff = np.abs(local_losses - remote_losses)
    weight_diff = torch.stack([(a - b).abs().max() for a, b in zip(local_trace, remote_trace)]).numpy()
    print(f"\n[training {variant}] {CAT_STEPS} steps, batch {CAT_BATCH}: local {t1 - t0:.2f} s, "
          f"remote {t2 - t1:.2f} s; "
          f"loss first {local_losses[0]:.5f} last {local_losses[-1]:.5f}; max |local - remote| loss "
          f"{loss_diff.max():.3e} (relative {np.max(loss_diff / np.abs(local_losses)):.3e}), weights "
          f"{weight_diff.max():.3e} (step 1 {weight_diff[0]:.3e}, last {weight_diff[-1]:.3e}); "
          f"largest weight {local_trace[-1].abs().max():.3f}")
    assert local_losses[-1] < 0.8 * local_losses[0], "the model should learn something"
    assert loss_diff.max() <= LOSS_TOL
    assert weight_diff.max() <= WEIGHT_TOL


# -- §5.0's options: FLSD-53 and Poly-1 ------------------------------------------------------------
#
# The same local-vs-remote comparison (the catalogue's 16-32-K MLP, CAT_STEPS SGD steps, batch
# CAT_BATCH, the tolerances above and their derivation) for FLSD-53 (Mukhoti et al.: γ 5 for rows
# with p_y < 0.2, else 3), Poly-1 cross-entropy (ε 2, the paper's ImageNet setting) and a sigmoid
# Poly-1 focal loss (ε -1, the paper's detection setting). The local side is refs.py's expression
# in float32 torch, so its γ choice reads its own float32 p_y; a row within a few float32 ulps of
# 0.2 could pick the other γ on one side only and the runs would part (the loss jumps there), so
# the test prints how close the local rows came to 0.2 and asserts that both γs were used.

OPTION_CASES = {
    "flsd53": ("softmax_focal", {"gamma": 3.0, "gamma_schedule": [(0.2, 5.0)]}),
    "poly1_ce_eps2": ("softmax_focal", {"gamma": 0.0, "poly_epsilon": 2.0}),
    "poly1_sigmoid_epsm1": ("sigmoid_focal", {"gamma": 2.0, "alpha": 0.25, "poly_epsilon": -1.0}),
}


def _option_data(variant, rng):
    """(x [N, 16], targets): 5 imbalanced classes from a noisy projection for softmax_focal,
    multi-label targets (12-30 % positives per label) for sigmoid_focal."""
    x = rng.standard_normal((CAT_N, CAT_DIM))
    proj = rng.standard_normal((CAT_DIM, CAT_CLASSES)) / np.sqrt(CAT_DIM)
    score = x @ proj + 0.8 * rng.standard_normal((CAT_N, CAT_CLASSES)) + np.array([1.0, 0.3, 0.0, -0.2, -0.4])
    if variant == "softmax_focal":
        targets = torch.from_numpy(score.argmax(1).astype(np.int64))
    else:
        targets = torch.from_numpy((score > np.array([1.4, 1.0, 0.9, 0.8, 0.6])).astype(np.float32))
    return torch.tensor(x, dtype=torch.float32), targets


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_option_training_tracks_local_training(client, one_torch_thread, case):
    variant, params = OPTION_CASES[case]
    rng = np.random.default_rng(stable_seed("option-training", case))
    x, targets = _option_data(variant, rng)
    order = [torch.from_numpy(rng.choice(CAT_N, CAT_BATCH, replace=False)) for _ in range(CAT_STEPS)]
    local_p_y = []

    def local(logits, t):
        if variant == "softmax_focal":
            with torch.no_grad():
                local_p_y.append(torch.softmax(logits, 1).gather(1, t.unsqueeze(1)).squeeze(1).clone())
        losses, count = refs.per_item(variant, logits, t, **params)
        return refs.reduce(losses, count, "mean", variant=variant)

    t0 = time.perf_counter()
    local_losses, local_trace = _train_catalogue(local, x, targets, {}, (CAT_CLASSES,), order)
    t1 = time.perf_counter()
    remote_losses, remote_trace = _train_catalogue(RemoteFocalLoss(client, variant, **params), x, targets, {},
                                                   (CAT_CLASSES,), order)
    t2 = time.perf_counter()
    loss_diff = np.abs(local_losses - remote_losses)
    weight_diff = torch.stack([(a - b).abs().max() for a, b in zip(local_trace, remote_trace)]).numpy()
    extra = ""
    if "gamma_schedule" in params:
        p_y = torch.cat(local_p_y).double().numpy()
        below = float((p_y < 0.2).mean())
        extra = (f"; rows with p_y < 0.2 (γ 5): {below:.1%} of {p_y.size}, closest to 0.2: "
                 f"{np.abs(p_y - 0.2).min():.2e}")
        assert 0 < below < 1, "both of FLSD-53's γs should be used"
    print(f"\n[training {case}] {CAT_STEPS} steps, batch {CAT_BATCH}: local {t1 - t0:.2f} s, remote {t2 - t1:.2f} s; "
          f"loss first {local_losses[0]:.5f} last {local_losses[-1]:.5f}; max |local - remote| loss "
          f"{loss_diff.max():.3e}, weights {weight_diff.max():.3e} (last {weight_diff[-1]:.3e}){extra}")
    # Poly-1 with ε < 0 can go below 0 (the term subtracts): "lower by a fifth of its size"
    assert local_losses[-1] < local_losses[0] - 0.2 * abs(local_losses[0]), "the model should learn something"
    assert loss_diff.max() <= LOSS_TOL
    assert weight_diff.max() <= WEIGHT_TOL
