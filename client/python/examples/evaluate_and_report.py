#!/usr/bin/python3
"""docs/evaluation.md's worked example: a small model trained here, its held-out predictions
stored as .npy batches, one Evaluate pass with a γ sweep and calibration, and the report.

    /usr/bin/python3 client/python/examples/evaluate_and_report.py --target 127.0.0.1:50051 --out /tmp/eval

The model is the training test's (tests/python/test_training.py): a 2-layer MLP on 20-D
synthetic data with five heavily imbalanced classes (90/4/3/2/1 %), trained here with plain
cross-entropy in torch for 300 SGD steps. Its predictions on 6,000 held-out rows go to
OUT/batches/ as 6 pairs of .npy files, the form `focalctl eval` reads; the evaluation's JSON and
the report go to OUT/. Everything is seeded: the same numbers on every run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import focalserve  # noqa: E402
from focalserve import _codec, report  # noqa: E402

PRIORS = [0.90, 0.04, 0.03, 0.02, 0.01]
DIM, CLASSES, HIDDEN = 20, 5, 64
GAMMAS = [0, 0.5, 1, 2, 3, 5]


def data(n, rng, means):
    y = rng.choice(CLASSES, size=n, p=PRIORS)
    return torch.tensor(means[y] + rng.standard_normal((n, DIM)), dtype=torch.float32), torch.tensor(y)


def train(x, y, steps=300, batch=256, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    order = np.random.default_rng(seed).integers(0, len(y), (steps, batch))
    for idx in order:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--out", type=Path, default=Path("evaluation-example"))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(20261201)
    means = rng.standard_normal((CLASSES, DIM)) * 0.6
    model = train(*data(20000, rng, means))
    x, y = data(6000, rng, means)
    with torch.no_grad():
        logits = model(x).numpy()
    stored = args.out / "batches"
    stored.mkdir(parents=True, exist_ok=True)
    batches = []
    for b in range(6):
        rows = slice(b * 1000, (b + 1) * 1000)
        np.save(stored / f"{b:02d}_logits.npy", logits[rows])
        np.save(stored / f"{b:02d}_targets.npy", y[rows].numpy())
        batches.append((logits[rows], y[rows].numpy()))

    params = {"gamma": 2.0}
    with focalserve.Client(args.target, timeout=60) as client:
        result = client.evaluate(batches, "softmax_focal", gamma_sweep=GAMMAS, calibration_bins=15, **params)
    loss = _codec.loss_spec("softmax_focal", "none", **params)
    (args.out / "evaluation.json").write_text(report.to_json(result, loss))
    page = report.write(result, args.out / "report.html", loss=loss, title="Worked example: a 5-class MLP")

    s, c = result.sweep, result.calibration
    print(f"rows {result.count}, batches {result.batches}; accuracy {c.accuracy:.4f}, ECE {c.ece:.4f}, "
          f"MCE {c.mce:.4f}, NLL {c.nll:.4f}, Brier {c.brier:.4f}")
    print("gamma  mean loss (no alpha)  mean loss (alpha = 1/prior, normalised)")
    inverse = 1 / np.array(PRIORS)
    inverse *= CLASSES / inverse.sum()
    for g, plain, weighted in zip(s.gammas, s.mean_loss(), s.mean_loss(inverse)):
        print(f"{g:<6g} {plain:<21.6f} {weighted:.6f}")
    share = s.mass_fraction()
    easy = share[:, -2:].sum(axis=1)  # p_t in [0.9, 1]
    print("share of the loss from items with p_t >= 0.9: " +
          ", ".join(f"γ={g:g}: {100 * e:.1f}%" for g, e in zip(s.gammas, easy)))
    print("per class: targets, recall, precision")
    for k in range(CLASSES):
        print(f"  class {k}: {c.class_targets[k]:5d}  {c.recall[k]:.3f}  {c.precision[k]:.3f}")
    print(f"wrote {stored}/, {args.out / 'evaluation.json'} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
