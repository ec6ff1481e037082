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
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from focalserve.torch import RemoteFocalLoss

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
