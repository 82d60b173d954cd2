"""Each built-in workload reaches a quality bar on synthetic data whose optimum is known.

The oracle figures are the true distribution's on the same held-out rows (synthetic.py): for
MSE the noise variance, for Huber the true mean's Huber loss, for classification the Bayes
rate and the true class probabilities' log loss, for quantiles the true quantiles' pinball.
"""
import numpy as np
import pytest

import mgdist
from mgdist.workloads import synthetic
from mgdist.workloads.classification import Classifier
from mgdist.workloads.quantile import JOB_DEFAULTS, QuantileMLP, default_dataset, parse_args
from mgdist.workloads.regression import Regressor

COMMON = dict(workers=2, batch_size=4096, epochs=12, lr=0.01, log_every=1000, val_fraction=0.2, features="f*")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict[str, str]:
    """150,000 rows x 6 features: y, and labels of 2 classes (y > 0) and of 4 (cut at -1, 0, 1)."""
    root = tmp_path_factory.mktemp("workloads")
    paths = {}
    for name, thresholds in [("two", (0.0,)), ("four", (-1.0, 0.0, 1.0))]:
        paths[name] = str(root / name)
        synthetic.write(paths[name], rows=150_000, features=6, files=2, row_group_rows=10_000, seed=11,
                        thresholds=thresholds, progress=False)
    return paths


def test_synthetic_class_probabilities_match_the_labels(labelled):
    X, y = synthetic.sample(200_000, 6, seed=3)
    p = synthetic.class_probabilities(X, (-1.0, 0.0, 1.0))
    labels = np.searchsorted((-1.0, 0.0, 1.0), y)
    assert np.allclose(p.sum(axis=1), 1)
    assert np.allclose(np.bincount(labels, minlength=4) / len(y), p.mean(axis=0), atol=0.005)
    # rows whose class 3 probability is high are mostly class 3, by about that probability
    sure = p[:, 3] > 0.8
    assert (labels[sure] == 3).mean() == pytest.approx(p[sure, 3].mean(), abs=0.02)


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_regression_within_3_percent_of_the_true_mean(ray_local, labelled, loss):
    result = mgdist.train(Regressor, labelled["two"], model_args={"loss": loss, "hidden": [64, 64]}, **COMMON)
    s = result.summary  # the figures in y's units (the model learns the standardized target)
    assert s["oracle_loss"] < s[loss] < 1.03 * s["oracle_loss"], s
    if loss == "mse":  # the true mean's MSE is the noise variance, E[scale(x)^2] (about 1.08 here)
        X, _ = synthetic.sample(100_000, 6, seed=1)
        noise = np.mean((0.5 + 1 / (1 + np.exp(-2 * X[:, 1].astype(np.float64)))) ** 2)
        assert s["oracle_mse"] == pytest.approx(noise, rel=0.03)


@pytest.mark.parametrize("data, classes", [("two", 2), ("four", 4)])
def test_classification_near_the_bayes_rate(ray_local, labelled, data, classes):
    result = mgdist.train(Classifier, labelled[data], target="label",
                          model_args={"classes": classes, "hidden": [64, 64]}, **COMMON)
    s = result.summary
    assert s["oracle_accuracy"] - 0.01 < s["accuracy"], s
    assert s["oracle_loss"] < s["log_loss"] < 1.03 * s["oracle_loss"], s
    assert s["val_loss"] == pytest.approx(s["log_loss"], rel=1e-4)  # the training loss is the log loss
    X = np.zeros((3, 6), np.float32)
    p = result.predict(X).reshape(3, -1)
    assert p.shape == (3, 1 if classes == 2 else classes) and np.all((0 <= p) & (p <= 1))


def test_quantile_default_job_within_1_percent_of_the_oracle(ray_local):
    spec, config = parse_args([])
    assert (config.batch_size, config.epochs, spec.args["activation"]) == (JOB_DEFAULTS["batch_size"],
                                                                         JOB_DEFAULTS["epochs"], "relu")
    result = mgdist.train(QuantileMLP, default_dataset(), log_every=1000, **JOB_DEFAULTS)  # jobs/quantile.py's defaults
    s = result.summary  # pinball in y's units (val_loss: the standardized target's)
    assert s["oracle_loss"] < s["pinball"] < 1.01 * s["oracle_loss"], s
    assert all(abs(s["coverage"][f"{q:g}"] - q) < 0.01 for q in (0.1, 0.5, 0.9)), s
