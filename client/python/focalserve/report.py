"""An evaluation as one self-contained HTML page: the reliability diagram with ECE, the loss
against γ (the dataset for several α, and the heaviest classes), how the loss mass spreads over
p_t for each γ, and a searchable per-class table. Figures are inline SVG (matplotlib, Agg); the
page fetches nothing.

    python3 -m focalserve.report out.json -o report.html      # out.json from focalctl eval --json
    focalserve.report.write(result, "report.html", loss=...)   # from Client.evaluate's result

The JSON file is {"loss": focal.v1.LossSpec, "evaluation": focal.v1.EvaluateResponse}, both in
protobuf's JSON mapping with the .proto's field names (what focalctl writes; ``to_json`` writes it
from Python).
"""
from __future__ import annotations

import argparse
import html
import io
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ._proto import pb
from .analyses import Calibration, GammaSweep

TOP_CLASSES = 8  # classes drawn in the per-class γ figure: the heaviest by loss share,
WORST_CLASSES = 4  # and, when there are more, the rest's highest mean losses


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.fonttype": "none", "figure.dpi": 100,
                         # The same evaluation gives the same page, byte for byte.
                         "svg.hashsalt": "focalserve"})
    return plt


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    fig.clf()
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG goes inline


def _variant(loss: pb.LossSpec, response: Optional[pb.EvaluateResponse] = None) -> str:
    """The loss's variant; without one, what the answer shows (a sweep with negatives is
    sigmoid_focal's), else softmax_focal."""
    named = loss.WhichOneof("variant")
    if named:
        return named
    if response is not None and response.HasField("sweep") and len(response.sweep.negative_counts):
        return "sigmoid_focal"
    return "softmax_focal"


def _user_alpha(loss: pb.LossSpec, classes: int):
    """The α the evaluation's loss names: sigmoid_focal's scalar (None when disabled), softmax_focal's
    per-class vector (None when absent)."""
    variant = loss.WhichOneof("variant")
    if variant is None:
        return None
    params = getattr(loss, variant)
    if variant == "sigmoid_focal":
        alpha = params.alpha if params.HasField("alpha") else 0.25
        return None if alpha < 0 else float(alpha)
    values = list(params.alpha_f64) or list(params.alpha)
    return np.array(values, np.float64) if len(values) == classes else None


def _user_gamma(loss: pb.LossSpec) -> Optional[float]:
    if loss.WhichOneof("variant") is None:
        return None
    params = getattr(loss, loss.WhichOneof("variant"))
    return float(params.gamma) if params.HasField("gamma") else 2.0


# -- figures --------------------------------------------------------------------------------

def reliability_figure(plt, c: Calibration) -> str:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centers = (c.bin_edges[:-1] + c.bin_edges[1:]) / 2
    width = c.bin_edges[1] - c.bin_edges[0]
    filled = c.bin_counts > 0
    top.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfectly calibrated")
    top.bar(centers[filled], c.bin_accuracy[filled], width=width * 0.92, color="#4c72b0", label="observed")
    gap_bottom = np.minimum(c.bin_accuracy, c.bin_confidence)[filled]
    top.bar(centers[filled], np.abs(c.bin_accuracy - c.bin_confidence)[filled], bottom=gap_bottom, width=width * 0.92,
            fill=False, hatch="///", edgecolor="#c44e52", linewidth=0.8, label="gap to the mean confidence")
    top.set_ylabel("accuracy (observed frequency)")
    top.set_ylim(0, 1)
    top.set_title(f"Reliability: ECE {c.ece:.4f}, MCE {c.mce:.4f}")
    top.legend(loc="upper left", frameon=False, fontsize=9)
    bottom.bar(centers, c.bin_counts, width=width * 0.92, color="#8c8c8c")
    bottom.set_ylabel("items")
    bottom.set_xlabel("confidence")
    bottom.set_xlim(0, 1)
    return _svg(fig)


def dataset_gamma_figure(plt, s: GammaSweep, user_alpha, user_gamma: Optional[float]) -> str:
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    if s.rows:
        curves = [("the loss's α" if user_alpha is not None else "no α (all ones)", user_alpha, True)]
    else:
        if not isinstance(user_alpha, float):  # a sigmoid sweep takes one α (or none)
            user_alpha = None
        alphas = sorted({0.25, 0.5, 0.75} | ({user_alpha} if user_alpha is not None else set()))
        curves = [(f"α = {a:g}" + (" (the loss's)" if a == user_alpha else ""), a, a == user_alpha) for a in alphas]
        curves.append(("no α" + (" (the loss's)" if user_alpha is None else ""), None, user_alpha is None))
    for label, alpha, mine in curves:
        ax.plot(s.gammas, s.mean_loss(alpha), marker="o", markersize=4, linewidth=2.6 if mine else 1.3, label=label,
                zorder=3 if mine else 2)
    if user_gamma is not None:
        ax.axvline(user_gamma, color="#999999", linestyle=":", linewidth=1, label=f"the loss's γ = {user_gamma:g}")
    ax.set_xlabel("γ")
    ax.set_ylabel("mean loss per item")
    ax.set_title("The dataset's loss against γ")
    ax.legend(frameon=False, fontsize=9, loc="best")
    return _svg(fig)


def class_gamma_figure(plt, s: GammaSweep, user_alpha, heaviest: Sequence[int], worst: Sequence[int]) -> str:
    """Per-class mean loss against γ: the classes holding most of the loss (solid) and, when
    there are more classes than fit, the ones with the highest mean loss among the rest (dashed)."""
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    loss = s.class_loss(user_alpha)
    items = s.positive_counts + s.negative_counts
    for classes, style, kind in ((heaviest, "-", "share"), (worst, "--", "mean")):
        for c in classes:
            ax.plot(s.gammas, loss[:, c] / max(int(items[c]), 1), linestyle=style, marker="o", markersize=3.5,
                    label=f"class {c}" + (" (worst mean)" if kind == "mean" else ""))
    ax.set_xlabel("γ")
    ax.set_ylabel("mean loss per item of the class")
    title = f"Heaviest {len(heaviest)} classes against γ"
    ax.set_title(title + (f", and the {len(worst)} worst of the rest" if worst else ""))
    ax.legend(frameon=False, fontsize=8, ncol=2)
    return _svg(fig)


def mass_figure(plt, s: GammaSweep) -> str:
    sides = [("positives", s.positive_mass)] + ([] if s.rows else [("negatives", s.negative_mass)])
    fig, axes = plt.subplots(1, len(sides), figsize=(5.4 * len(sides), 3.9), squeeze=False)
    edges = s.pt_bin_edges
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(s.gammas)))
    for ax, (name, mass) in zip(axes[0], sides):
        for k, g in enumerate(s.gammas):
            total = mass[k].sum()
            cumulative = np.concatenate([[0.0], np.cumsum(mass[k]) / total]) if total > 0 else np.zeros(len(edges))
            ax.plot(edges, cumulative, color=colors[k], linewidth=1.8, label=f"γ = {g:g}")
        ax.set_xlabel("p_t (probability of the true label)")
        ax.set_ylabel("share of the loss from items with smaller p_t")
        ax.set_title(f"Where the loss comes from: {name}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    axes[0][-1].legend(frameon=False, fontsize=8, loc="lower right")
    return _svg(fig)


# -- the page ---------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #24364b; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #c9d4e0; font-size: 14px; }
main { padding: 20px 32px 40px; max-width: 1280px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 20px; }
.card { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 10px 16px; min-width: 120px; }
.card .label { font-size: 12px; color: #666; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 20px; font-weight: 600; margin-top: 2px; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; }
figure { background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; margin: 0; padding: 12px; }
figure svg { width: 100%; height: auto; }
figcaption { font-size: 13px; color: #555; margin-top: 6px; line-height: 1.4; }
h2 { font-size: 17px; margin: 28px 0 10px; }
#class-filter { padding: 6px 10px; font-size: 14px; border: 1px solid #ccc; border-radius: 4px; width: 260px; }
table { border-collapse: collapse; background: #fff; margin-top: 10px; font-size: 13px; }
th, td { padding: 5px 12px; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f0f2f5; cursor: pointer; user-select: none; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tr:hover td { background: #f7f9fc; }
.bar { display: inline-block; height: 8px; background: #4c72b0; border-radius: 2px; vertical-align: middle; }
.muted { color: #888; }
"""

_SCRIPT = """
const filter = document.getElementById('class-filter');
const rows = Array.from(document.querySelectorAll('#classes tbody tr'));
filter.addEventListener('input', () => {
  const q = filter.value.trim().toLowerCase();
  for (const r of rows) r.style.display = !q || r.dataset.search.includes(q) ? '' : 'none';
});
document.querySelectorAll('#classes th').forEach((th, i) => th.addEventListener('click', () => {
  const body = document.querySelector('#classes tbody');
  const dir = th.dataset.dir === 'desc' ? 1 : -1;
  th.dataset.dir = dir === 1 ? 'asc' : 'desc';
  rows.sort((a, b) => dir * (parseFloat(a.children[i].dataset.v) - parseFloat(b.children[i].dataset.v)));
  rows.forEach(r => body.appendChild(r));
}));
"""


def _fmt(v, digits=4) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def render(response: pb.EvaluateResponse, loss: pb.LossSpec, title: str = "FocalServe evaluation") -> str:
    """The report's HTML for an EvaluateResponse and the loss it evaluated."""
    plt = _pyplot()
    variant = _variant(loss, response)
    classes = len(response.class_counts)
    sweep = GammaSweep.from_proto(response.sweep) if response.HasField("sweep") else None
    calibration = Calibration.from_proto(response.calibration) if response.HasField("calibration") else None
    user_alpha = _user_alpha(loss, classes)
    user_gamma = _user_gamma(loss)
    sums = np.array(response.class_loss_sums, np.float64)
    counts = np.array(response.class_counts, np.int64)
    share = sums / sums.sum() if sums.sum() > 0 else np.zeros_like(sums)

    cards = [("variant", variant), ("items", f"{response.count:,}"), ("batches", f"{response.batches:,}"),
             ("mean loss", _fmt(response.mean)), ("backend", response.backend)]
    if calibration is not None:
        cards += [("accuracy", _fmt(calibration.accuracy)), ("ECE", _fmt(calibration.ece)),
                  ("NLL", _fmt(calibration.nll)), ("Brier", _fmt(calibration.brier))]
    figures = []
    if calibration is not None:
        what = ("the top class's probability against how often it is right" if variant == "softmax_focal"
                else "p = σ(x) against the observed frequency of positives")
        figures.append(("reliability", reliability_figure(plt, calibration),
                        f"Reliability diagram over {calibration.count:,} items: {what}, in {len(calibration.bin_counts)} "
                        "bins. Bars under the diagonal are over-confident; the hatched part is each bin's gap, "
                        "whose count-weighted mean is the ECE."))
    if sweep is not None:
        figures.append(("gamma-dataset", dataset_gamma_figure(plt, sweep, user_alpha, user_gamma),
                        "Mean loss per item at each swept γ, recombined exactly for each α from one pass. "
                        "The bold curve is the α of the evaluated loss; the dotted line its γ."))
        heavy = [int(c) for c in np.argsort(-share, kind="stable")[:TOP_CLASSES] if counts[c] > 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)
        worst = [int(c) for c in np.argsort(-mean, kind="stable") if counts[c] > 0 and int(c) not in heavy][:WORST_CLASSES]
        figures.append(("gamma-classes", class_gamma_figure(plt, sweep, user_alpha, heavy, worst),
                        f"The {len(heavy)} classes with the largest share of the loss (solid) "
                        + (f"and the {len(worst)} others with the highest mean loss (dashed), " if worst else "")
                        + "each class's mean loss against γ at the loss's α: a class whose curve stays high keeps "
                        "its weight as γ grows."))
        figures.append(("pt-mass", mass_figure(plt, sweep),
                        "Cumulative share of the loss against p_t, one curve per γ (Lin et al. 2017, Fig. 4): the "
                        "higher γ, the more of the loss comes from hard items (small p_t) and the less from the "
                        "easy ones near 1."))

    recall = precision = None
    if calibration is not None:
        recall, precision = calibration.recall, calibration.precision
    order = np.argsort(-share, kind="stable")
    rows = []
    top_share = float(share.max()) if share.size else 0.0
    for c in order:
        cells = [(f"class {c}", c), (f"{counts[c]:,}", counts[c]), (_fmt(sums[c] / counts[c] if counts[c] else None),
                                                                   sums[c] / counts[c] if counts[c] else -1),
                 (f'<span class="bar" style="width:{60 * share[c] / top_share if top_share else 0:.0f}px"></span> '
                  f"{100 * share[c]:.2f}%", share[c])]
        if recall is not None:
            cells += [(_fmt(float(recall[c]), 3), recall[c] if np.isfinite(recall[c]) else -1),
                      (_fmt(float(precision[c]), 3), precision[c] if np.isfinite(precision[c]) else -1)]
        tds = "".join(f'<td data-v="{float(v) if np.isfinite(v) else -1:.10g}">{text}</td>' for text, v in cells)
        rows.append(f'<tr data-search="class {c}">{tds}</tr>')
    headers = ["class", "items", "mean loss", "loss share"] + (["recall", "precision"] if recall is not None else [])

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<header><h1>{html.escape(title)}</h1><p>{html.escape(variant)} over {response.count:,} items in "
             f"{response.batches:,} batches; {classes} classes</p></header><main>",
             '<div class="cards">' + "".join(f'<div class="card"><div class="label">{html.escape(k)}</div>'
                                           f'<div class="value">{html.escape(str(v))}</div></div>' for k, v in cards)
             + "</div>"]
    if figures:
        parts.append('<div class="figures">')
        for name, svg, caption in figures:
            parts.append(f'<figure id="fig-{name}" class="figure">{svg}<figcaption>{html.escape(caption)}'
                         "</figcaption></figure>")
        parts.append("</div>")
    else:
        parts.append('<p class="muted">No sweep or calibration was asked for: evaluate with gamma_sweep and '
                     "calibration_bins (focalctl eval --gamma-sweep ... --calibration-bins 15) for the figures.</p>")
    parts.append(f"<h2>Classes</h2><input id='class-filter' type='search' placeholder='Filter classes, e.g. class 12'>"
                 f"<table id='classes'><thead><tr>{''.join(f'<th>{h}</th>' for h in headers)}</tr></thead>"
                 f"<tbody>{''.join(rows)}</tbody></table>")
    parts.append(f"</main><script>{_SCRIPT}</script></body></html>")
    return "".join(parts)


def to_json(result, loss: pb.LossSpec) -> str:
    """The report's input file for an EvaluateResult and the LossSpec it evaluated."""
    from google.protobuf import json_format
    return json.dumps({"loss": json_format.MessageToDict(loss, preserving_proto_field_name=True),
                       "evaluation": json_format.MessageToDict(result.response, preserving_proto_field_name=True)})


def load(path) -> "tuple[pb.EvaluateResponse, pb.LossSpec]":
    """The (EvaluateResponse, LossSpec) of a report input file."""
    from google.protobuf import json_format
    data = json.loads(Path(path).read_text())
    return (json_format.ParseDict(data["evaluation"], pb.EvaluateResponse()),
            json_format.ParseDict(data.get("loss", {}), pb.LossSpec()))


def write(result, path, loss: Optional[pb.LossSpec] = None, title: str = "FocalServe evaluation") -> Path:
    """Writes the report of an EvaluateResult (or an EvaluateResponse) to `path`. `loss` is the
    LossSpec evaluated (focalserve._codec.loss_spec(variant, 'none', **params)); without it the
    variant is taken as softmax_focal with its defaults."""
    response = result.response if hasattr(result, "response") else result
    path = Path(path)
    path.write_text(render(response, loss if loss is not None else pb.LossSpec(), title))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m focalserve.report", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="JSON from focalctl eval --json (or focalserve.report.to_json)")
    parser.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--title", default="FocalServe evaluation")
    args = parser.parse_args(argv)
    response, loss = load(args.input)
    Path(args.output).write_text(render(response, loss, args.title))
    print(f"focalserve.report: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
