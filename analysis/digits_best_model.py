"""Where the best model of a digits study goes wrong: its test-set errors and what its last hidden layer learned.

Run it on any study that uses ``studies/digits.py`` (a study file or its results directory)::

    python analysis/digits_best_model.py runs/digits
    python analysis/digits_best_model.py studies/digits.yaml --out /tmp/digits-analysis

It loads the best trial's checkpoint, rebuilds the test split exactly as the study's data module builds it (the
study's fixed ``data.args`` from ``spec.json`` plus the trial's data parameters), predicts the test set, and writes
two self-contained HTML files (plotly.js inline, so they open on machines without internet):

- ``errors.html``: the confusion matrix (counts), the error rate of each true digit, and the most confident mistakes
  as 8x8 images with their true and predicted labels.
- ``hidden_pca.html``: a 2-D PCA of the activations of the last hidden layer on the test set, one point per test
  image, coloured by true digit, mistakes drawn as crosses.

The accuracy it computes is checked against scikit-learn's ``accuracy_score`` and against the ``test_acc`` the study
recorded for that trial. A disagreement means the split was not rebuilt identically or the recorded metric did not
come from this checkpoint; ``--strict`` turns it into exit status 1.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, confusion_matrix

from sweeplight import SweeplightError
from sweeplight.analysis import best_trial, load_best_model, load_results, write_html

CLASSES = list(range(10))
# Recorded test_acc is a float32 mean over the test set; the exact fraction differs from it by ~1e-8, one sample of
# 269 by ~4e-3, so 1e-6 separates "the same predictions" from "different predictions" without ambiguity.
TOLERANCE = 1e-6


@dataclass
class TestPredictions:
    """Everything the figures need, computed in one pass over the test loader."""

    inputs: np.ndarray  # (n, 64) the standardised pixels the model saw
    labels: np.ndarray  # (n,) true digits
    predicted: np.ndarray  # (n,) argmax of the logits
    confidence: np.ndarray  # (n,) softmax probability of the predicted digit
    hidden: np.ndarray  # (n, width) output of the layer before the output layer
    hidden_layer: str  # that layer's name inside the model, e.g. "net.5"
    loss: float  # mean cross-entropy over the test set, comparable to the recorded test_loss

    @property
    def accuracy(self) -> float:
        return float(accuracy_score(self.labels, self.predicted))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="a digits study: its study file, or its results directory runs/<name>")
    parser.add_argument("--out", type=Path, help="directory for the HTML files (default: <study dir>/analysis)")
    parser.add_argument("--mistakes", type=int, default=12, help="how many confident mistakes to show (default 12)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when the accuracy disagrees with the recorded test_acc")
    args = parser.parse_args(argv)

    try:
        best = best_trial(args.study, write_rerun=False)  # no side effects: nothing is written into the study
        model = load_best_model(args.study)
        study = load_results(args.study)[0]  # a storage URL: its first study, as best_trial picks
    except SweeplightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or (study.directory / "analysis" if study.directory is not None else None)
    if out is None:
        parser.error("the study has no results directory (a storage URL); give --out")

    try:
        datamodule = rebuild_datamodule(model, best.params, study.directory)
        predictions = predict(model, datamodule)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"study {best.study}: best trial {best.number} ({best.metric} = {best.value:.6g}), "
          f"checkpoint {best.checkpoint}")
    print(f"test split rebuilt with {type(datamodule).__name__}({format_kwargs(data_kwargs(datamodule))}): "
          f"{len(predictions.labels)} samples")

    matrix = confusion_matrix(predictions.labels, predictions.predicted, labels=CLASSES)
    correct, total = int(np.trace(matrix)), int(matrix.sum())
    print(f"test accuracy {correct / total:.6f} ({correct}/{total}); sklearn accuracy_score "
          f"{predictions.accuracy:.6f}")
    agrees = report_agreement(predictions, best.test_metrics)
    confused = most_confused(matrix, 5)
    if confused:
        print("most frequent confusions:")
    for true, pred, count in confused:
        print(f"  true {true} predicted as {pred}: {count} time{'s' if count > 1 else ''}")

    title = f"trial {best.number} of {best.study}"
    errors = write_html([confusion_figure(matrix, title), mistakes_figure(predictions, datamodule, args.mistakes)],
                        Path(out) / "errors.html", f"Test errors of {title}")
    pca = write_html([pca_figure(predictions, title)], Path(out) / "hidden_pca.html",
                     f"Hidden activations of {title}")
    print(f"wrote {errors}")
    print(f"wrote {pca}")
    return 1 if args.strict and not agrees else 0


# --------------------------------------------------------------------------------------------------------- the data


def rebuild_datamodule(model: torch.nn.Module, params: dict[str, Any], directory: Path | None) -> Any:
    """The study's data module, built as the trial built it, with its test split set up.

    The class comes from the file the model was loaded from (digits.py holds both), so an edited copy of the
    study's digits.py is used rather than the repository's. The arguments follow the study's routing rules: the
    fixed ``data.args`` first, then ``data.<name>`` parameters, then unprefixed parameters the constructor accepts.
    """
    module = inspect.getmodule(type(model))
    data_class = getattr(module, "DigitsDataModule", None)
    if data_class is None:
        raise ValueError(f"{type(model).__name__} does not come from a digits.py with a DigitsDataModule")
    accepted = set(inspect.signature(data_class.__init__).parameters) - {"self"}
    kwargs = dict(fixed_data_args(directory))
    for name, value in params.items():
        head, _, rest = name.partition(".")
        if rest and head == "data":
            kwargs[rest] = value
        elif not (rest and head in ("model", "trainer")) and name in accepted:
            kwargs[name] = value
    datamodule = data_class(**kwargs)
    datamodule.setup("test")
    return datamodule


def fixed_data_args(directory: Path | None) -> dict[str, Any]:
    """``data.args`` of the study as launched (overrides applied), from ``runs/<name>/spec.json``.

    The best trial's parameters hold only the search space; a study that fixes ``test_fraction`` in ``data.args``
    would otherwise be rebuilt with the default split and silently disagree.
    """
    spec_file = directory / "spec.json" if directory is not None else None
    if spec_file is None or not spec_file.is_file():
        return {}
    data = (json.loads(spec_file.read_text()).get("raw") or {}).get("data")
    return dict(data.get("args") or {}) if isinstance(data, dict) else {}


def data_kwargs(datamodule: Any) -> dict[str, Any]:
    """The constructor arguments as the data module stored them, to print what split was rebuilt."""
    names = inspect.signature(type(datamodule).__init__).parameters
    return {name: getattr(datamodule, name) for name in names if hasattr(datamodule, name)}


def format_kwargs(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def predict(model: torch.nn.Module, datamodule: Any) -> TestPredictions:
    """One pass over ``test_dataloader()`` in eval mode, capturing the last hidden layer with a forward hook."""
    name, layer = last_hidden_layer(model)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output.detach()))
    inputs, labels, logits = [], [], []
    model.eval()
    try:
        with torch.no_grad():
            for x, y in datamodule.test_dataloader():
                logits.append(model(x.to(model.device)).cpu())
                inputs.append(x)
                labels.append(y)
    finally:
        handle.remove()
    logit = torch.cat(logits)
    label = torch.cat(labels)
    probabilities = logit.softmax(-1)
    return TestPredictions(
        inputs=torch.cat(inputs).numpy(), labels=label.numpy(), predicted=logit.argmax(-1).numpy(),
        confidence=probabilities.max(-1).values.numpy(), hidden=torch.cat(captured).cpu().numpy(),
        hidden_layer=name, loss=float(torch.nn.functional.cross_entropy(logit, label)))


def last_hidden_layer(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The module just before the output ``Linear`` in ``model.net``.

    In DigitsMLP that is the last block's Dropout; in eval mode Dropout is the identity, so its output is the
    post-ReLU activation of the last hidden Linear, the representation the output layer classifies.
    """
    net = getattr(model, "net", None)
    if not isinstance(net, torch.nn.Sequential) or len(net) < 2 or not isinstance(net[-1], torch.nn.Linear):
        raise ValueError("expected DigitsMLP's net = Sequential(..., Linear) with at least one hidden layer")
    return f"net.{len(net) - 2}", net[-2]


def report_agreement(predictions: TestPredictions, recorded: dict[str, float]) -> bool:
    """Print the computed and recorded test metrics side by side; True when the accuracies agree."""
    if "test_acc" not in recorded:
        print("recorded test_acc: none (the trial ran no test); nothing to compare")
        return True
    difference = abs(predictions.accuracy - recorded["test_acc"])
    agrees = difference <= TOLERANCE
    verdict = "agrees" if agrees else "DISAGREES: the split or the checkpoint differs from the trial's test run"
    print(f"recorded test_acc {recorded['test_acc']:.6f}: {verdict} (|difference| {difference:.2g}, "
          f"tolerance {TOLERANCE:g})")
    if "test_loss" in recorded:
        print(f"test loss {predictions.loss:.6f}; recorded test_loss {recorded['test_loss']:.6f}")
    return agrees


def most_confused(matrix: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """The largest off-diagonal cells: (true, predicted, how often), largest first."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    cells = [(int(t), int(p), int(off[t, p])) for t, p in zip(*np.nonzero(off), strict=True)]
    return sorted(cells, key=lambda cell: (-cell[2], cell[0], cell[1]))[:count]


def pixels_for_display(predictions: TestPredictions, datamodule: Any) -> tuple[np.ndarray, str]:
    """The test images as raw 0..16 pixels when the standardisation can be undone exactly, else as the model saw them.

    DigitsDataModule standardises all 1,797 images with one per-pixel affine map, so each pixel column of the three
    splits together is the raw column shifted and scaled; matching the columns' means and standard deviations with
    scikit-learn's raw digits recovers the map. The result is checked: raw pixels are integers in 0..16.
    """
    from sklearn.datasets import load_digits

    try:
        splits = [datamodule.train_set, datamodule.val_set, datamodule.test_set]
        standard = torch.cat([split.tensors[0] for split in splits]).double().numpy()
        raw = load_digits().data
        if standard.shape != raw.shape:
            raise ValueError("the splits do not cover the whole dataset")
        spread = standard.std(0)
        scale = np.where(spread > 0, raw.std(0) / np.where(spread > 0, spread, 1), 1.0)
        shift = raw.mean(0) - scale * standard.mean(0)
        images = predictions.inputs * scale + shift
        if np.abs(images - images.round()).max() < 1e-3 and images.min() > -1e-3 and images.max() < 16 + 1e-3:
            return images.round(), "raw pixels (0-16)"
    except (AttributeError, ValueError):
        pass
    return predictions.inputs, "standardised pixels, as the model saw them"


# ------------------------------------------------------------------------------------------------------ the figures


def confusion_figure(matrix: np.ndarray, title: str) -> go.Figure:
    """Counts of true (rows) against predicted (columns) digits, next to each digit's error rate."""
    correct, total = int(np.trace(matrix)), int(matrix.sum())
    support = matrix.sum(1)
    wrong = support - np.diag(matrix)
    rate = np.divide(wrong, support, out=np.zeros(len(support)), where=support > 0)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    hover = [f"true {d}: {wrong[d]} of {support[d]} wrong" + (f", most often as {off[d].argmax()} "
                                                               f"({off[d].max()}x)" if wrong[d] else "")
             for d in CLASSES]
    labels = [str(d) for d in CLASSES]
    figure = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.12,
                           subplot_titles=("confusion matrix (counts)", "error rate per true digit"))
    figure.add_trace(go.Heatmap(z=matrix, x=labels, y=labels, colorscale="Blues", texttemplate="%{z}",
                                showscale=False, name="confusion",
                                hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"), row=1, col=1)
    figure.add_trace(go.Bar(x=labels, y=rate, text=[f"{w}/{s}" for w, s in zip(wrong, support, strict=True)],
                            hovertext=hover, hoverinfo="text", name="error rate", marker_color="indianred"),
                     row=1, col=2)
    figure.update_xaxes(title_text="predicted digit", type="category", row=1, col=1)
    figure.update_yaxes(title_text="true digit", type="category", autorange="reversed", row=1, col=1)
    figure.update_xaxes(title_text="true digit", type="category", row=1, col=2)
    figure.update_yaxes(title_text="fraction misclassified", tickformat=".0%", row=1, col=2)
    figure.update_layout(title=f"{title}: test accuracy {correct / total:.4f} ({correct}/{total})",
                         height=520, showlegend=False)
    return figure


def mistakes_figure(predictions: TestPredictions, datamodule: Any, count: int) -> go.Figure:
    """The misclassified test images the model was most sure about, most confident first."""
    wrong = np.flatnonzero(predictions.labels != predictions.predicted)
    chosen = wrong[np.argsort(-predictions.confidence[wrong], kind="stable")][:max(count, 0)]
    if len(chosen) == 0:
        figure = go.Figure()
        figure.update_layout(title="no misclassified test images")
        return figure
    images, kind = pixels_for_display(predictions, datamodule)
    columns = min(6, len(chosen))
    rows = -(-len(chosen) // columns)
    titles = [f"true {predictions.labels[i]} → {predictions.predicted[i]} (p={predictions.confidence[i]:.2f})"
              for i in chosen]
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.02,
                           vertical_spacing=0.08)
    for position, index in enumerate(chosen):
        row, col = position // columns + 1, position % columns + 1
        figure.add_trace(go.Heatmap(z=images[index].reshape(8, 8), coloraxis="coloraxis",
                                    hovertemplate="row %{y}, column %{x}: %{z:.2f}<extra></extra>"), row=row, col=col)
        figure.update_yaxes(scaleanchor=f"x{position + 1 if position else ''}", row=row, col=col)  # square pixels
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False, autorange="reversed")
    figure.update_layout(title=f"the {len(chosen)} most confident of {len(wrong)} mistakes ({kind})",
                         coloraxis={"colorscale": "Greys", "showscale": False}, height=190 * rows + 80,
                         plot_bgcolor="white")
    return figure


def pca_figure(predictions: TestPredictions, title: str) -> go.Figure:
    """Each test image placed by the first two principal components of its last-hidden-layer activations."""
    pca = PCA(n_components=2)
    points = pca.fit_transform(predictions.hidden)
    explained = pca.explained_variance_ratio_
    wrong = predictions.labels != predictions.predicted
    figure = go.Figure()
    for digit in CLASSES:
        # Correct points first: the legend shows a trace's first marker, and mistakes are drawn on top.
        index = np.flatnonzero(predictions.labels == digit)
        index = index[np.argsort(wrong[index], kind="stable")]
        if len(index) == 0:
            continue
        figure.add_trace(go.Scatter(
            x=points[index, 0], y=points[index, 1], mode="markers", name=str(digit),
            marker={"symbol": np.where(wrong[index], "x", "circle"), "size": np.where(wrong[index], 11, 6),
                    "line": {"width": 0}},
            customdata=np.stack([predictions.predicted[index], predictions.confidence[index]], axis=1),
            hovertemplate=f"true {digit}, predicted %{{customdata[0]}} (p=%{{customdata[1]:.2f}})<extra></extra>"))
    figure.update_layout(
        title=f"{title}: PCA of {predictions.hidden_layer} activations ({predictions.hidden.shape[1]} units), "
              f"{len(points)} test images; crosses = misclassified ({int(wrong.sum())})",
        xaxis_title=f"PC1 ({explained[0]:.0%} of variance)", yaxis_title=f"PC2 ({explained[1]:.0%} of variance)",
        legend_title="true digit", height=650)
    return figure


if __name__ == "__main__":
    sys.exit(main())
