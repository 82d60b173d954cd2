"""micrograd.nn and micrograd.losses: pinball, MSE, Huber, softmax and binary cross-entropy by
hand (formulas written here) and against finite differences (float64); an Embedding layer; an MLP with pinball loss against finite differences and torch autograd; float32
end to end; one static graph fed batches of any size; parameters flattened into one vector."""
from __future__ import annotations

import numpy as np
import pytest

from gradcheck import float64  # noqa: F401 (a fixture)
from gradcheck import assert_grads_match, assert_graph_dtype, check_grads, torch_grads
from micrograd import Value
from micrograd.losses import binary_cross_entropy_with_logits, cross_entropy, huber, mse, pinball
from micrograd.nn import ACTIVATIONS, MLP, Embedding, Linear, flatten

LEVELS = [0.1, 0.5, 0.9]
FEATURES = 4


def batch(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features (rows, 4) and targets (rows,): float64, continuous, so no pinball ties."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, FEATURES)), rng.standard_normal(rows)


def constant(x) -> Value:
    return Value(x, requires_grad=False)


def model_and_graph(loss_fn=pinball, target_shape=(None,), activation="tanh"):
    """An MLP 4 -> 6 -> 5 -> 3 and its loss over placeholders X (None, 4) and y."""
    model = MLP(FEATURES, [6, 5], len(LEVELS), activation, seed=3)
    X, y = Value.placeholder("X", (None, FEATURES)), Value.placeholder("y", target_shape)
    return model, apply_loss(loss_fn, model(X), y), X


def apply_loss(loss_fn, pred: Value, y) -> Value:
    return pinball(pred, y, LEVELS) if loss_fn is pinball else loss_fn(pred, y)


# ---- pinball ----

def test_pinball_by_hand():
    pred = Value([[1.0, 2.0, 0.0], [0.5, 0.5, 0.5]])
    target = Value([1.5, -0.5])
    # y - pred: [0.5, -0.5, 1.5] and [-1, -1, -1]; slope q or q - 1 by the sign of each:
    # [0.25, -0.5, 0.75] and [-0.75, -0.5, -0.25]; losses 0.125 0.25 1.125 0.75 0.5 0.25
    loss = pinball(pred, target, [0.25, 0.5, 0.75])
    assert loss.data == pytest.approx(3.0 / 6)
    loss.backward()
    np.testing.assert_allclose(pred.grad, -np.array([[0.25, -0.5, 0.75], [-0.75, -0.5, -0.25]]) / 6)
    np.testing.assert_allclose(target.grad, [0.5 / 6, -1.5 / 6])


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("levels", [[0.5], LEVELS, [0.05, 0.3, 0.7, 0.95]], ids=len)
@pytest.mark.parametrize("target_shape", [(6,), (6, 1)], ids=str)
def test_pinball_gradient(levels, target_shape):
    rng = np.random.default_rng(4)
    pred, target = Value(rng.standard_normal((6, len(levels)))), Value(rng.standard_normal(target_shape))
    diff = target.data.reshape(-1, 1) - pred.data
    q = np.array(levels)
    out = check_grads(lambda p, t: pinball(p, t, levels), pred, target)
    np.testing.assert_allclose(out.data, np.maximum(q * diff, (q - 1) * diff).mean(), rtol=1e-12)


@pytest.mark.usefixtures("float64")
def test_pinball_takes_an_array_target_as_a_constant():
    pred, (_, y) = Value(np.random.default_rng(5).standard_normal((7, 3))), batch(7)
    with_array = pinball(pred, y, LEVELS)
    with_array.backward()
    grad = pred.grad.copy()
    with_value = pinball(pred, constant(y), LEVELS)
    with_value.backward()
    assert with_array.data == with_value.data
    np.testing.assert_array_equal(grad, pred.grad)


@pytest.mark.parametrize("pred_shape,target_shape", [((4, 2), (4,)), ((4, 3), (5,)), ((4, 3, 1), (4,))],
                         ids=["levels", "rows", "rank"])
def test_pinball_rejects_mismatched_shapes(pred_shape, target_shape):
    with pytest.raises(ValueError, match="pinball"):
        pinball(Value(np.zeros(pred_shape)), constant(np.zeros(target_shape)), LEVELS)


# ---- mse ----

def test_mse_by_hand():
    pred = Value([[1.0], [3.0]])
    loss = mse(pred, constant([0.0, 1.0]))
    assert loss.data == pytest.approx((1 + 4) / 2)
    loss.backward()
    np.testing.assert_allclose(pred.grad, [[1.0], [2.0]])


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("pred_shape,target_shape", [((5, 1), (5,)), ((5, 3), (5,)), ((5,), (5,)),
                                                     ((5, 1), (5, 1)), ((5, 3), (5, 3))], ids=str)
def test_mse_gradient(pred_shape, target_shape):
    rng = np.random.default_rng(6)
    pred, target = Value(rng.standard_normal(pred_shape)), Value(rng.standard_normal(target_shape))
    aligned = target.data.reshape(-1, *[1] * (len(pred_shape) - 1)) if len(target_shape) == 1 else target.data
    expected = np.mean((pred.data - aligned) ** 2)
    out = check_grads(mse, pred, target)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)


# ---- huber ----

def huber_formula(d: np.ndarray, delta: float) -> np.ndarray:
    return np.where(np.abs(d) <= delta, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))


def test_huber_by_hand():
    pred = Value([[0.5], [3.0], [-2.0]])
    loss = huber(pred, constant([0.0, 1.0, 0.0]), delta=1.0)
    # residuals 0.5, 2, -2: 0.125 (quadratic), 1.5 and 1.5 (linear: 1 * (2 - 0.5))
    assert loss.data == pytest.approx((0.125 + 1.5 + 1.5) / 3)
    loss.backward()
    np.testing.assert_allclose(pred.grad, [[0.5 / 3], [1 / 3], [-1 / 3]])  # the residual clipped to +-delta


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("delta", [0.3, 1.0, 5.0])
@pytest.mark.parametrize("pred_shape,target_shape", [((6, 1), (6,)), ((6, 2), (6,)), ((6, 2), (6, 2))], ids=str)
def test_huber_gradient(pred_shape, target_shape, delta):
    rng = np.random.default_rng(7)  # residuals away from +-delta, where the second derivative jumps
    pred = rng.uniform(0.05, 2.0, pred_shape) * rng.choice([-1, 1], pred_shape)
    pred = np.where(np.abs(np.abs(pred) - delta) < 0.05, pred + 0.1, pred)
    pred, target = Value(pred), Value(np.zeros(target_shape))
    out = check_grads(lambda p, t: huber(p, t, delta), pred, target)
    np.testing.assert_allclose(out.data, huber_formula(pred.data, delta).mean(), rtol=1e-12)


def test_huber_rejects_a_delta_of_zero():
    with pytest.raises(ValueError, match="huber: delta"):
        huber(Value([1.0]), constant([0.0]), 0.0)


# ---- softmax cross-entropy ----

def cross_entropy_formula(z: np.ndarray, labels: np.ndarray) -> float:
    """-mean log(e^z[label] / sum e^z), written the long way (fine for small z)."""
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def test_cross_entropy_by_hand():
    logits = Value([[0.0, np.log(3.0)], [np.log(2.0), np.log(2.0)]])
    loss = cross_entropy(logits, np.array([1, 0]))
    # row 0: p = (1/4, 3/4), label 1; row 1: p = (1/2, 1/2), label 0
    assert loss.data == pytest.approx(-(np.log(0.75) + np.log(0.5)) / 2, rel=1e-6)
    loss.backward()
    np.testing.assert_allclose(logits.grad, [[0.25 / 2, -0.25 / 2], [-0.5 / 2, 0.5 / 2]], rtol=1e-6)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("classes", [2, 5])
def test_cross_entropy_gradient(classes):
    rng = np.random.default_rng(8)
    labels = np.array([0, classes - 1, 1, 1, 0, classes - 1])
    logits = Value(rng.standard_normal((6, classes)) * 2)
    out = check_grads(lambda z: cross_entropy(z, labels), logits)
    np.testing.assert_allclose(out.data, cross_entropy_formula(logits.data, labels), rtol=1e-12)


@pytest.mark.usefixtures("float64")
def test_cross_entropy_through_an_integer_placeholder_and_huge_logits():
    z, labels = Value.placeholder("z", (None, 3)), Value.placeholder("labels", (None,), integer=True)
    loss = cross_entropy(z, labels)
    small, k = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]), np.array([2, 1])
    for shift in (0.0, 1000.0, -1000.0):  # the same loss once the (huge) common shift is taken out
        assert loss.forward(z=small + shift, labels=k) == pytest.approx(cross_entropy_formula(small, k), rel=1e-12)
    assert cross_entropy(Value([[1000.0, -1000.0]]), np.array([1])).data == pytest.approx(2000.0)


@pytest.mark.parametrize("logits,labels,match", [
    (np.zeros((3, 2)), np.array([0, 2, 1]), "label 2 out of range for 2 classes"),
    (np.zeros((3, 2)), np.array([0, -1, 1]), "label -1 out of range"),
    (np.zeros((3, 2)), np.array([0, 1]), r"logits \(3, 2\).*labels \(2,\)"),
    (np.zeros(3), np.array([0, 1, 0]), "logits"),
])
def test_cross_entropy_rejects_bad_labels(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        cross_entropy(Value(logits), labels)


# ---- binary cross-entropy on logits ----

def binary_cross_entropy_formula(z: np.ndarray, y: np.ndarray) -> float:
    p = 1 / (1 + np.exp(-z))
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("logit_shape,target_shape", [((6, 1), (6,)), ((6,), (6,)), ((6, 1), (6, 1))], ids=str)
def test_binary_cross_entropy_gradient(logit_shape, target_shape):
    rng = np.random.default_rng(9)
    z = Value(rng.standard_normal(logit_shape) * 2)
    y = Value(np.array([0.0, 1.0, 1.0, 0.0, 0.3, 1.0]).reshape(target_shape))  # soft labels too
    out = check_grads(binary_cross_entropy_with_logits, z, y)
    np.testing.assert_allclose(out.data, binary_cross_entropy_formula(z.data.ravel(), y.data.ravel()), rtol=1e-12)


@pytest.mark.usefixtures("float64")
def test_binary_cross_entropy_is_stable_for_huge_logits():
    z = Value(np.array([[800.0], [-800.0], [800.0], [-800.0]]))
    loss = binary_cross_entropy_with_logits(z, constant([1.0, 0.0, 0.0, 1.0]))
    assert loss.data == pytest.approx((0 + 0 + 800 + 800) / 4)  # right: ~0; wrong by 800: 800
    loss.backward()
    np.testing.assert_allclose(z.grad.ravel(), [0, 0, 0.25, -0.25], atol=1e-12)  # (sigmoid(z) - y) / n


# ---- Linear, Embedding and MLP ----

@pytest.mark.usefixtures("float64")
def test_embedding_layer_gradient_adds_repeated_codes():
    layer = Embedding(5, 3, np.random.default_rng(0))
    codes = np.array([[4, 4], [0, 4], [2, 0]])
    out = check_grads(lambda t: layer(codes), layer.table)
    np.testing.assert_array_equal(out.data, layer.table.data[codes])
    assert layer.parameters() == [layer.table] and layer.table.data.shape == (5, 3)

def test_mlp_structure():
    model = MLP(FEATURES, [6, 5], 3, "relu", seed=0)
    assert [p.data.shape for p in model.parameters()] == [(4, 6), (6,), (6, 5), (5,), (5, 3), (3,)]
    assert model(constant(batch(7)[0])).data.shape == (7, 3)
    bound = 1 / np.sqrt(FEATURES)
    assert np.all(np.abs(model.parameters()[0].data) <= bound)
    with pytest.raises(ValueError, match="activation"):
        MLP(FEATURES, [6], 3, "gelu")


@pytest.mark.usefixtures("float64")
def test_linear_without_bias():
    layer = Linear(FEATURES, 2, np.random.default_rng(0), bias=False)
    X = batch(3)[0]
    assert layer.parameters() == [layer.W]
    out = check_grads(lambda x, W: layer(x), constant(X), layer.W)
    np.testing.assert_allclose(out.data, X @ layer.W.data, rtol=1e-12)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("target_shape", [(None,), (None, 1)], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_pinball_gradient(activation, target_shape):
    model, loss, _ = model_and_graph(pinball, target_shape, activation)
    X, y = batch(6, seed=1)
    assert_grads_match(loss, model.parameters(), X=X, y=y.reshape(-1, *[1] * (len(target_shape) - 1)))


def torch_mlp_pinball(torch, activation: str, X, y, *params):
    """The same model and loss in torch, written from their definitions."""
    act = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
           "softplus": torch.nn.functional.softplus}[activation]
    layers = list(zip(params[::2], params[1::2]))
    h = X
    for i, (W, b) in enumerate(layers):
        h = h @ W + b
        h = act(h) if i < len(layers) - 1 else h
    diff = y.reshape(-1, 1) - h
    q = torch.tensor(LEVELS, dtype=torch.float64)
    return torch.maximum(q * diff, (q - 1) * diff).mean()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_pinball_matches_torch(activation):
    torch = pytest.importorskip("torch")
    model, loss, _ = model_and_graph(pinball, activation=activation)
    X, y = batch(9, seed=2)
    got = loss.forward(X=X, y=y)
    loss.backward()
    params = model.parameters()
    want, grads = torch_grads(lambda *t: torch_mlp_pinball(torch, activation, *t), X, y, *[p.data for p in params])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for p, grad in zip(params, grads[2:]):
        np.testing.assert_allclose(p.grad, grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("loss_fn", [pinball, mse], ids=["pinball", "mse"])
def test_float32_end_to_end(loss_fn):
    model = MLP(FEATURES, [6, 5], len(LEVELS), "tanh", seed=3)
    X, y = Value.placeholder("X", (None, FEATURES)), Value.placeholder("y", (None,))
    loss = apply_loss(loss_fn, model(X * 0.5 - 1.0).sigmoid() * 2.0, y) + 0.25
    X64, y64 = batch(5)
    assert loss.forward(X=X64, y=y64).dtype == np.float32
    loss.backward()
    assert_graph_dtype(loss, np.float32)
    assert all(p.grad.dtype == np.float32 and np.any(p.grad != 0) for p in model.parameters())


@pytest.mark.parametrize("loss_fn", [pinball, mse], ids=["pinball", "mse"])
def test_one_graph_fed_any_batch_size_matches_eager(loss_fn):
    model, loss, X = model_and_graph(loss_fn)
    params = model.parameters()
    for rows in (5, 1, 8, 5):
        Xb, yb = batch(rows, seed=rows)
        got = loss.forward(X=Xb, y=yb)
        loss.backward()
        grads = [p.grad.copy() for p in params]
        eager = apply_loss(loss_fn, model(constant(Xb)), constant(yb))
        eager.backward()
        np.testing.assert_allclose(got, eager.data, rtol=1e-6)
        for grad, p in zip(grads, params):
            np.testing.assert_allclose(grad, p.grad, rtol=1e-5, atol=1e-7)
    assert X.grad is None


def test_flatten_makes_params_and_grads_views_of_two_vectors():
    model, loss, _ = model_and_graph()
    Xb, yb = batch(6)
    loss.forward(X=Xb, y=yb)
    loss.backward()
    params = model.parameters()
    before = [(p.data.copy(), p.grad.copy()) for p in params]
    data, grads = flatten(params)
    assert data.dtype == grads.dtype == np.float32 and data.size == grads.size == sum(d.size for d, _ in before)
    np.testing.assert_array_equal(data, np.concatenate([d.ravel() for d, _ in before]))
    loss.forward(X=Xb, y=yb)
    loss.backward()
    for p, (d, g) in zip(params, before):
        assert np.shares_memory(p.data, data) and np.shares_memory(p.grad, grads)
        assert p.data.shape == d.shape and p.grad.shape == g.shape
    np.testing.assert_allclose(grads, np.concatenate([g.ravel() for _, g in before]), rtol=1e-6)
    loss_before = loss.forward(X=Xb, y=yb)
    data -= 0.1 * grads  # a gradient step on the flat vector moves every parameter of the graph
    np.testing.assert_allclose(params[0].data, before[0][0] - 0.1 * before[0][1], rtol=1e-6)
    assert loss.forward(X=Xb, y=yb) < loss_before
