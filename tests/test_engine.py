"""micrograd.engine: every op's forward against NumPy and its gradient against central
differences (float64) over many broadcasting cases; against torch autograd where installed;
float32 kept end to end; static graphs over placeholders, integer placeholders included."""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays, mutually_broadcastable_shapes

from gradcheck import float64  # noqa: F401 (a fixture)
from gradcheck import assert_grads_match, assert_graph_dtype, check_grads, output_weights, torch_grads
from micrograd import Value, concat, embedding, maximum, minimum, tensordot, where
from micrograd.losses import mse, pinball

LEVELS = [0.1, 0.5, 0.9]


@dataclass(frozen=True)
class Uniform:
    """Inputs drawn uniformly from [low, high], and from [-high, -low] too when signed."""
    low: float
    high: float
    signed: bool = False

    def sample(self, rng: np.random.Generator, shape: tuple) -> np.ndarray:
        x = rng.uniform(self.low, self.high, shape)
        return x * rng.choice([-1.0, 1.0], shape) if self.signed else x

    def strategy(self, shape: tuple):
        elements = st.floats(self.low, self.high)
        if self.signed:
            elements = elements | st.floats(-self.high, -self.low)
        return arrays(np.float64, shape, elements=elements)


class Distinct:
    """Inputs with no two elements within 0.1 of each other (no ties for max)."""

    def sample(self, rng: np.random.Generator, shape: tuple) -> np.ndarray:
        n = int(np.prod(shape))
        return (rng.permutation(n) * 0.3 - 0.1 * n + rng.uniform(0, 0.1, n)).reshape(shape)


ANY = Uniform(0.0, 2.0, signed=True)
NONZERO = Uniform(0.2, 2.0, signed=True)   # away from the kinks of relu and abs, and from 1/0
POSITIVE = Uniform(0.2, 2.0)
UNIT = Uniform(0.0, 0.9, signed=True)      # inside the domains of arctanh and arcsin
ABOVE_MINUS_ONE = Uniform(-0.8, 2.0)       # log1p
LARGE = Uniform(1.0, 2.0, signed=True)     # with SMALL: |a - b| >= 0.5, so maximum never ties
SMALL = Uniform(0.0, 0.5, signed=True)


def leaves(domain, *shapes, seed: int = 0) -> list[Value]:
    rng = np.random.default_rng(seed)
    return [Value(domain.sample(rng, shape)) for shape in shapes]


# ---- elementwise unary ops ----

UNARY = {  # name: (op, NumPy reference, input domain)
    "neg": (operator.neg, np.negative, ANY),
    "relu": (Value.relu, lambda x: np.maximum(x, 0), NONZERO),
    "exp": (Value.exp, np.exp, ANY),
    "log": (Value.log, np.log, POSITIVE),
    "log1p": (Value.log1p, np.log1p, ABOVE_MINUS_ONE),
    "sqrt": (Value.sqrt, np.sqrt, POSITIVE),
    "abs": (Value.abs, np.abs, NONZERO),
    "tanh": (Value.tanh, np.tanh, ANY),
    "sigmoid": (Value.sigmoid, lambda x: 1 / (1 + np.exp(-x)), ANY),
    "softplus": (Value.softplus, lambda x: np.log(1 + np.exp(x)), ANY),
    "arctanh": (Value.arctanh, np.arctanh, UNIT),
    "arcsinh": (Value.arcsinh, np.arcsinh, ANY),
    "arcsin": (Value.arcsin, np.arcsin, UNIT),
    "pow2": (lambda v: v ** 2, lambda x: x ** 2, ANY),
    "pow3": (lambda v: v ** 3, lambda x: x ** 3, ANY),
    "pow-1": (lambda v: v ** -1, lambda x: 1 / x, POSITIVE),
    "pow-2.5": (lambda v: v ** -2.5, lambda x: x ** -2.5, POSITIVE),
    "pow0.5": (lambda v: v ** 0.5, np.sqrt, POSITIVE),
    "pow1.5": (lambda v: v ** 1.5, lambda x: x ** 1.5, POSITIVE),
}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("shape", [(), (5,), (2, 3)], ids=str)
@pytest.mark.parametrize("name", UNARY)
def test_unary_op(name, shape):
    op, reference, domain = UNARY[name]
    (x,) = leaves(domain, shape)
    expected = reference(x.data.copy())
    out = check_grads(op, x)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)
    assert out.data.shape == shape


# ---- elementwise binary ops, broadcasting ----

BINARY = {  # name: (op, NumPy reference, domain of left operand, domain of right operand)
    "add": (operator.add, np.add, ANY, ANY),
    "sub": (operator.sub, np.subtract, ANY, ANY),
    "mul": (operator.mul, np.multiply, ANY, ANY),
    "div": (operator.truediv, np.divide, ANY, NONZERO),
    "maximum": (maximum, np.maximum, LARGE, SMALL),
    "minimum": (minimum, np.minimum, SMALL, LARGE),
}


def as_operand(x: np.ndarray, kind: str):
    """x as a trainable Value, a constant array, or a Python float."""
    return {"value": Value, "array": np.array, "scalar": float}[kind](x)


def check_binary(name: str, a: np.ndarray, b: np.ndarray, kinds=("value", "value")) -> None:
    op, reference, _, _ = BINARY[name]
    out = check_grads(op, as_operand(a, kinds[0]), as_operand(b, kinds[1]))
    np.testing.assert_allclose(out.data, reference(a, b), rtol=1e-12)


BROADCASTS = [  # shapes of the two operands
    ((2, 3), (2, 3)),
    ((3, 1), (1, 4)),     # both stretched on a size-1 axis
    ((3, 4), (4,)),       # leading axis added to the right operand
    ((4,), (3, 4)),
    ((2, 1, 3), (4, 1)),  # leading and size-1 axes at once
    ((1,), (3, 1)),
    ((), (2, 3)),         # 0-d against an array
    ((2, 3), ()),
    ((), ()),
]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("name", BINARY)
def test_binary_op_broadcasts(name, shapes):
    _, _, left, right = BINARY[name]
    rng = np.random.default_rng(1)
    check_binary(name, left.sample(rng, shapes[0]), right.sample(rng, shapes[1]))


OPERAND_KINDS = [  # (left, right); shapes (2, 3) and (3,), or () where a scalar
    ("value", "array"), ("array", "value"), ("value", "scalar"), ("scalar", "value"),
]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("kinds", OPERAND_KINDS, ids="-".join)
@pytest.mark.parametrize("name", BINARY)
def test_binary_op_with_constant_operand(name, kinds):
    _, _, left, right = BINARY[name]
    rng = np.random.default_rng(2)
    shapes = [() if kind == "scalar" else shape for kind, shape in zip(kinds, [(2, 3), (3,)])]
    check_binary(name, left.sample(rng, shapes[0]), right.sample(rng, shapes[1]), kinds)


@st.composite
def binary_cases(draw):
    name = draw(st.sampled_from(sorted(BINARY)))
    shapes = draw(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)).input_shapes
    _, _, left, right = BINARY[name]
    a, b = draw(left.strategy(shapes[0])), draw(right.strategy(shapes[1]))
    choices = [["value", "array", "scalar"] if s == () else ["value", "array"] for s in shapes]
    pairs = [(k, m) for k in choices[0] for m in choices[1] if "value" in (k, m)]
    return name, a, b, draw(st.sampled_from(pairs))


@pytest.mark.usefixtures("float64")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(binary_cases())
def test_binary_op_any_broadcast(case):
    check_binary(*case)


# ---- products, shape ops, reductions, selections ----

@dataclass(frozen=True)
class Case:
    """fn over args: a shape tuple is a trainable Value drawn from `domain` (one for all, or a
    tuple of one per arg), anything else a constant passed as is. `reference` computes the
    same on NumPy arrays (default: fn itself)."""
    fn: object
    args: tuple
    reference: object = None
    domain: object = ANY

    def arrays(self, seed: int = 3) -> list:
        rng = np.random.default_rng(seed)
        domains = self.domain if isinstance(self.domain, tuple) else [self.domain] * len(self.args)
        return [d.sample(rng, a) if isinstance(a, tuple) else a for d, a in zip(domains, self.args)]

    def values(self, arrays: list) -> list:
        return [Value(x) if isinstance(a, tuple) else x for x, a in zip(arrays, self.args)]


def contract(axes, shapes) -> Case:
    return Case(lambda a, b: tensordot(a, b, axes), shapes, lambda a, b: np.tensordot(a, b, axes))


MASK = np.array([[True], [False], [True]])
CODES = np.array([3, 0, 3, 1, 3])            # repeated codes: their gradients must add up
CODES_2D = np.array([[1, 1], [0, 4], [1, 2]])


def logsumexp_reference(x, axis=None, keepdims=False):
    """log(sum(exp(x))) as the formula says (fine for the small inputs of these cases)."""
    return np.log(np.exp(x).sum(axis=axis, keepdims=keepdims))


CASES = {
    "matmul 2d": Case(operator.matmul, ((3, 4), (4, 2))),
    "matmul batched": Case(operator.matmul, ((2, 3, 4), (2, 4, 5))),
    "matmul broadcast batch": Case(operator.matmul, ((2, 1, 3, 4), (5, 4, 2))),
    "matmul batched @ 2d": Case(operator.matmul, ((2, 3, 4), (4, 2))),
    "matmul 1d @ 2d": Case(operator.matmul, ((4,), (4, 3))),
    "matmul 2d @ 1d": Case(operator.matmul, ((3, 4), (4,))),
    "matmul 1d @ batched": Case(operator.matmul, ((4,), (2, 4, 3))),
    "matmul batched @ 1d": Case(operator.matmul, ((2, 3, 4), (4,))),
    "matmul 1d @ 1d": Case(operator.matmul, ((4,), (4,))),
    "matmul array @ value": Case(operator.matmul, (np.arange(6.0).reshape(2, 3) / 6, (3, 4))),
    "matmul value @ array": Case(operator.matmul, ((2, 3), np.arange(12.0).reshape(3, 4) / 12)),
    "tensordot 0": contract(0, ((2, 3), (4,))),
    "tensordot 1": contract(1, ((3, 4), (4, 5))),
    "tensordot 2": contract(2, ((2, 3, 4), (3, 4, 2))),
    "tensordot ([2,0],[0,1])": contract(([2, 0], [0, 1]), ((3, 4, 5), (5, 3, 2))),
    "tensordot ([0,2],[1,0])": contract(([0, 2], [1, 0]), ((2, 3, 4), (4, 2))),
    "tensordot ([1,0],[0,1])": contract(([1, 0], [0, 1]), ((3, 4), (4, 3))),
    "tensordot (-1,0)": contract((-1, 0), ((2, 3), (3, 2))),
    "tensordot array, value": contract(([1], [0]), (np.arange(6.0).reshape(2, 3) / 6, (3, 2))),
    "T 2d": Case(lambda a: a.T, ((2, 3),)),
    "T 3d": Case(lambda a: a.T, ((2, 3, 4),)),
    "transpose (1,0,2)": Case(lambda a: a.transpose((1, 0, 2)), ((2, 3, 4),)),
    "transpose (2,0,1)": Case(lambda a: a.transpose((2, 0, 1)), ((2, 3, 4),)),
    "transpose (-1,0,1)": Case(lambda a: a.transpose((-1, 0, 1)), ((2, 3, 4),)),
    "transpose (-1,1,-3)": Case(lambda a: a.transpose((-1, 1, -3)), ((2, 3, 4),)),
    "reshape tuple": Case(lambda a: a.reshape((3, 4)), ((2, 6),)),
    "reshape args": Case(lambda a: a.reshape(2, 3, 2), ((3, 4),)),
    "reshape -1": Case(lambda a: a.reshape(-1), ((3, 4),)),
    "index int": Case(lambda a: a[1], ((3, 4),)),
    "index negative ints": Case(lambda a: a[-1, 2], ((3, 4),)),
    "slice [:, 1:3]": Case(lambda a: a[:, 1:3], ((3, 4),)),
    "slice [::-1]": Case(lambda a: a[::-1], ((5,),)),
    "slice [1, ::-2]": Case(lambda a: a[1, ::-2], ((3, 5),)),
    "slice [..., 0]": Case(lambda a: a[..., 0], ((2, 3, 4),)),
    "index repeated": Case(lambda a: a[[0, 2, 0]], ((3, 2),)),
    "sum": Case(lambda a: a.sum(), ((2, 3, 4),)),
    "sum axis 0": Case(lambda a: a.sum(axis=0), ((2, 3, 4),)),
    "sum axis -1 keepdims": Case(lambda a: a.sum(axis=-1, keepdims=True), ((2, 3, 4),)),
    "sum axes (0,2)": Case(lambda a: a.sum(axis=(0, 2)), ((2, 3, 4),)),
    "sum 0-d": Case(lambda a: a.sum(), ((),)),
    "mean": Case(lambda a: a.mean(), ((2, 3, 4),)),
    "mean axis 1": Case(lambda a: a.mean(axis=1), ((2, 3, 4),)),
    "mean axis -1 keepdims": Case(lambda a: a.mean(axis=-1, keepdims=True), ((2, 3, 4),)),
    "mean axes (0,-1) keepdims": Case(lambda a: a.mean(axis=(0, -1), keepdims=True), ((2, 3, 4),)),
    "max": Case(lambda a: a.max(), ((3, 4),), domain=Distinct()),
    "max axis 0": Case(lambda a: a.max(axis=0), ((3, 4),), domain=Distinct()),
    "max axis -1": Case(lambda a: a.max(axis=-1), ((2, 3, 4),), domain=Distinct()),
    "max axes (0,1) keepdims": Case(lambda a: a.max(axis=(0, 1), keepdims=True), ((2, 3, 4),), domain=Distinct()),
    "cumsum": Case(lambda a: a.cumsum(), ((3, 4),)),
    "cumsum axis 0": Case(lambda a: a.cumsum(axis=0), ((3, 4),)),
    "cumsum axis -1": Case(lambda a: a.cumsum(axis=-1), ((2, 3, 4),)),
    "maximum method": Case(Value.maximum, ((3, 1), (4,)), np.maximum, (LARGE, SMALL)),
    "minimum method": Case(Value.minimum, ((3, 4), (3, 1)), np.minimum, (SMALL, LARGE)),
    "where": Case(where, (MASK, (3, 4), (3, 4)), np.where),
    "where broadcast": Case(where, (MASK, (1, 4), (3, 1)), np.where),
    "where scalar branch": Case(where, (MASK, 2.5, (4,)), np.where),
    "where value cond": Case(lambda a, b: where(Value(MASK, requires_grad=False), a, b), ((3, 4), (4,)),
                             lambda a, b: np.where(MASK, a, b)),
    "concat axis 0": Case(lambda a, b: concat([a, b], axis=0), ((2, 3), (4, 3)),
                          lambda a, b: np.concatenate([a, b], axis=0)),
    "concat axis -1": Case(lambda a, b, c: concat([a, b, c], axis=-1), ((2, 1), (2, 3), (2, 2)),
                           lambda a, b, c: np.concatenate([a, b, c], axis=-1)),
    "concat with constant": Case(lambda a, b: concat([a, b, a], axis=1), ((3, 2), np.ones((3, 1))),
                                 lambda a, b: np.concatenate([a, b, a], axis=1)),
    "logsumexp": Case(lambda a: a.logsumexp(), ((3, 4),), logsumexp_reference),
    "logsumexp axis 1": Case(lambda a: a.logsumexp(axis=1), ((3, 4),), lambda a: logsumexp_reference(a, 1)),
    "logsumexp axis 0 keepdims": Case(lambda a: a.logsumexp(axis=0, keepdims=True), ((2, 3, 4),),
                                      lambda a: logsumexp_reference(a, 0, True)),
    "logsumexp axis -1, broadcast input": Case(lambda a, b: (a + b).logsumexp(axis=-1), ((3, 1), (4,)),
                                               lambda a, b: logsumexp_reference(a + b, -1)),
    "log_softmax": Case(lambda a: a.log_softmax(), ((3, 4),), lambda a: a - logsumexp_reference(a, -1, True)),
    "log_softmax axis 0": Case(lambda a: a.log_softmax(axis=0), ((3, 4),), lambda a: a - logsumexp_reference(a, 0, True)),
    "log_softmax axis 1 of 3d": Case(lambda a: a.log_softmax(axis=1), ((2, 3, 4),),
                                     lambda a: a - logsumexp_reference(a, 1, True)),
    "log_softmax, broadcast input": Case(lambda a, b: (a * b).log_softmax(axis=-1), ((2, 1, 3), (4, 1)),
                                         lambda a, b: a * b - logsumexp_reference(a * b, -1, True)),
    "embedding": Case(lambda t: embedding(t, CODES), ((5, 3),), lambda t: t[CODES]),
    "embedding 2d codes": Case(lambda t: embedding(t, CODES_2D), ((5, 3),), lambda t: t[CODES_2D]),
    "embedding of a 3d table": Case(lambda t: embedding(t, CODES), ((4, 2, 3),), lambda t: t[CODES]),
    "embedding, broadcast after": Case(lambda t, w: embedding(t, CODES_2D) * w, ((5, 3), (2, 1)),
                                       lambda t, w: t[CODES_2D] * w),
    "affine": Case(Value.affine, ((5, 3), (3, 4), (4,)), lambda x, w, b: x @ w + b),
    "affine batched": Case(Value.affine, ((2, 5, 3), (3, 4), (4,)), lambda x, w, b: x @ w + b),
    "affine 1d": Case(Value.affine, ((3,), (3, 4), (4,)), lambda x, w, b: x @ w + b),
    "affine constant input": Case(lambda w, b: Value(np.eye(3)[:2], requires_grad=False).affine(w, b),
                                  ((3, 4), (4,)), lambda w, b: np.eye(3)[:2] @ w + b),
    "affine tanh": Case(lambda x, w, b: x.affine(w, b, "tanh"), ((5, 3), (3, 4), (4,)), lambda x, w, b: np.tanh(x @ w + b)),
    "affine tanh batched": Case(lambda x, w, b: x.affine(w, b, "tanh"), ((2, 5, 3), (3, 4), (4,)),
                                lambda x, w, b: np.tanh(x @ w + b)),
    "affine relu": Case(lambda x, w, b: x.affine(w, b, "relu"), ((6, 3), (3, 4), (4,)),
                        lambda x, w, b: np.maximum(x @ w + b, 0)),
    "affine relu 1d": Case(lambda x, w, b: x.affine(w, b, "relu"), ((3,), (3, 5), (5,)),
                           lambda x, w, b: np.maximum(x @ w + b, 0)),
    "affine tanh, then matmul (its gradient given)": Case(lambda x, w, b, v: x.affine(w, b, "tanh") @ v,
                                                          ((5, 3), (3, 4), (4,), (4, 2)),
                                                          lambda x, w, b, v: np.tanh(x @ w + b) @ v),
    "affine relu twice, one gradient shared": Case(lambda x, w, b, u: x.affine(w, b, "relu") + x.affine(u, b, "tanh"),
                                                   ((5, 3), (3, 4), (4,), (3, 4)),
                                                   lambda x, w, b, u: np.maximum(x @ w + b, 0) + np.tanh(x @ u + b)),
    "affine sigmoid": Case(lambda x, w, b: x.affine(w, b, "sigmoid"), ((5, 3), (3, 4), (4,)),
                           lambda x, w, b: 1 / (1 + np.exp(-(x @ w + b)))),
}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name", CASES)
def test_op(name):
    case = CASES[name]
    arrays = case.arrays()
    expected = (case.reference or case.fn)(*arrays)
    out = check_grads(case.fn, *case.values(arrays))
    np.testing.assert_allclose(out.data, expected, rtol=1e-12)


# ---- against torch autograd ----

def same_in_torch(fn):
    return lambda torch, *tensors: fn(*tensors)


TORCH_CASES = {  # name: (case, the same in torch: fn(torch, *tensors))
    "add (n,1)+(1,m)": (Case(operator.add, ((3, 1), (1, 4))), same_in_torch(operator.add)),
    "mul (n,m)*(m,)": (Case(operator.mul, ((3, 4), (4,))), same_in_torch(operator.mul)),
    "sub 0-d": (Case(operator.sub, ((), (2, 3))), same_in_torch(operator.sub)),
    "div (2,1,3)/(4,1)": (Case(operator.truediv, ((2, 1, 3), (4, 1)), domain=NONZERO), same_in_torch(operator.truediv)),
    "rdiv scalar": (Case(lambda a: 2.0 / a, ((2, 3),), domain=NONZERO), same_in_torch(lambda a: 2.0 / a)),
    "pow -1.5": (Case(lambda a: a ** -1.5, ((2, 3),), domain=POSITIVE), same_in_torch(lambda a: a ** -1.5)),
    "maximum": (Case(maximum, ((3, 1), (4,)), domain=(LARGE, SMALL)), lambda torch, a, b: torch.maximum(a, b)),
    "minimum": (Case(minimum, ((3, 4), (4,)), domain=(LARGE, SMALL)), lambda torch, a, b: torch.minimum(a, b)),
    "matmul broadcast batch": (CASES["matmul broadcast batch"], same_in_torch(operator.matmul)),
    "matmul 1d @ batched": (CASES["matmul 1d @ batched"], same_in_torch(operator.matmul)),
    "matmul batched @ 1d": (CASES["matmul batched @ 1d"], same_in_torch(operator.matmul)),
    "tensordot ([2,0],[0,1])": (CASES["tensordot ([2,0],[0,1])"],
                                lambda torch, a, b: torch.tensordot(a, b, dims=([2, 0], [0, 1]))),
    "transpose (2,0,1)": (CASES["transpose (2,0,1)"], lambda torch, a: a.permute(2, 0, 1)),
    "slice [:, 1:3]": (CASES["slice [:, 1:3]"], same_in_torch(lambda a: a[:, 1:3])),
    "reshape": (CASES["reshape args"], same_in_torch(lambda a: a.reshape(2, 3, 2))),
    "sum axis -1 keepdims": (CASES["sum axis -1 keepdims"], lambda torch, a: a.sum(-1, keepdim=True)),
    "mean axis 1": (CASES["mean axis 1"], lambda torch, a: a.mean(1)),
    "max axis -1": (CASES["max axis -1"], lambda torch, a: a.amax(-1)),
    "cumsum axis 0": (CASES["cumsum axis 0"], lambda torch, a: a.cumsum(0)),
    "where broadcast": (Case(lambda a, b: where(MASK, a, b), ((1, 4), (3, 1))),
                        lambda torch, a, b: torch.where(torch.tensor(MASK), a, b)),
    "concat axis -1": (CASES["concat axis -1"], lambda torch, a, b, c: torch.cat([a, b, c], -1)),
    "affine": (CASES["affine"], lambda torch, x, w, b: x @ w + b),
    "logsumexp axis 1": (CASES["logsumexp axis 1"], lambda torch, a: torch.logsumexp(a, 1)),
    "log_softmax axis 0": (CASES["log_softmax axis 0"], lambda torch, a: torch.log_softmax(a, 0)),
    "embedding": (CASES["embedding"], lambda torch, t: torch.nn.functional.embedding(torch.tensor(CODES), t)),
    **{name: (Case(UNARY[name][0], ((2, 3),), domain=UNARY[name][2]), fn) for name, fn in {
        "relu": lambda torch, a: a.relu(), "exp": lambda torch, a: a.exp(), "log": lambda torch, a: a.log(),
        "log1p": lambda torch, a: a.log1p(), "sqrt": lambda torch, a: a.sqrt(), "abs": lambda torch, a: a.abs(),
        "tanh": lambda torch, a: a.tanh(), "sigmoid": lambda torch, a: a.sigmoid(),
        "softplus": lambda torch, a: torch.nn.functional.softplus(a), "arctanh": lambda torch, a: a.arctanh(),
        "arcsinh": lambda torch, a: a.arcsinh(), "arcsin": lambda torch, a: a.arcsin(),
    }.items()},
}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name", TORCH_CASES)
def test_op_matches_torch(name):
    torch = pytest.importorskip("torch")
    case, torch_fn = TORCH_CASES[name]
    arrays = case.arrays()
    args = case.values(arrays)
    out = case.fn(*args)
    weights = output_weights(out.shape)
    (out * weights).sum().backward()
    want_out, want_grads = torch_grads(lambda *t: torch_fn(torch, *t), *arrays, weights=weights)
    np.testing.assert_allclose(out.data, want_out, rtol=1e-12)
    for arg, want in zip(args, want_grads):
        np.testing.assert_allclose(arg.grad, want, rtol=1e-10, atol=1e-12)


# ---- fan-out: a node used more than once gets every contribution ----

def twice_through_a_node(x):
    a = x * 3.0
    return a + a


def three_consumers(x):
    a = x.sigmoid()
    return a * a + a.sum() - a.exp()


def reduced_then_reused(x):
    a = x * 2.0
    return a.sum() + a * a  # a's first gradient is a read-only broadcast of the sum's


def siblings_then_reused(x):
    a, b = x.exp(), x.tanh()
    return (a + b) + a + b  # a and b first receive one shared array, then more on top of it


FAN_OUT = {
    "x * x": lambda x: x * x,
    "x + x": lambda x: x + x,
    "x - x * x": lambda x: x - x * x,
    "a + a, a an op": twice_through_a_node,
    "three consumers": three_consumers,
    "x @ x": lambda x: x @ x,
    "concat [x, x]": lambda x: concat([x, x], axis=1),
    "maximum(x, x / 2)": lambda x: maximum(x, x / 2),
    "reduced then reused": reduced_then_reused,
    "siblings then reused": siblings_then_reused,
}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name", FAN_OUT)
def test_fan_out_sums_contributions_in_place(name):
    (x,) = leaves(NONZERO, (3, 3))
    buffer = np.full(11, np.nan)
    x.grad = buffer[1:10].reshape(3, 3)  # the grad is a view into a caller's array
    check_grads(FAN_OUT[name], x)
    assert np.shares_memory(x.grad, buffer)
    np.testing.assert_array_equal(buffer[1:10], x.grad.ravel())


@pytest.mark.usefixtures("float64")
def test_fan_out_by_hand():
    x = Value([1.0, -2.0])
    (x * x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, -3.0])


# ---- one graph through every op: gradients, float32 end to end, lazy = eager ----

FEATURES = 3
WHERE_MASK = np.array([True, False] * 6)


def every_op(X: Value, y: Value, W: Value, b: Value) -> Value:
    """A scalar whose gradient with respect to W and b flows through every op."""
    h = X.affine(W, b) + X @ W * 0.5                                          # (n, 3)
    p = h.abs() + 0.5
    t = (h * W[0] - W[1] / p + p ** -1.5 + p.sqrt() - 2.0 * h) / 3.0 + (-h).exp() * 0.1
    t = (1.0 - (t @ W.T - tensordot(t, W, ([1], [0])))).tanh() * 0.9        # in (-0.9, 0.9)
    u = concat([t.arctanh(), t.arcsin(), t.arcsinh().sigmoid(), 2.0 / (t.softplus() + 1).log1p()], axis=1)
    u = maximum(u, u[:, ::-1] * 0.5) + minimum(u.relu(), 0.25) - where(WHERE_MASK, u, np.linspace(0, 1, 12))
    v = u.cumsum(axis=1).reshape(-1, 3, 4).transpose((0, 2, 1)).sum(axis=1) / 4.0    # (n, 3)
    extra = u.max(axis=1).mean() + u.mean(axis=0, keepdims=True).sum() + (v.T ** 2).log().sum(axis=0).mean()
    extra = extra + u.logsumexp(axis=1).mean() + u.log_softmax(axis=0).mean() + embedding(W, [[2, 0], [2, 1]]).sum()
    return pinball(v, y, LEVELS) + mse(v, y) + 0.01 * extra


def every_op_inputs(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, FEATURES)), rng.standard_normal(rows)


def every_op_graph(seed: int = 0):
    """every_op over placeholders X (None, 3) and y (None,); returns loss, W, b, X."""
    rng = np.random.default_rng(seed)
    W, b = Value(rng.uniform(-1, 1, (FEATURES, FEATURES))), Value(rng.uniform(-1, 1, FEATURES))
    X, y = Value.placeholder("X", (None, FEATURES)), Value.placeholder("y", (None,))
    return every_op(X, y, W, b), W, b, X


@pytest.mark.usefixtures("float64")
def test_every_op_graph_gradient():
    loss, W, b, _ = every_op_graph()
    X, y = every_op_inputs(5)
    assert_grads_match(loss, [W, b], X=X, y=y)


def test_float32_end_to_end():
    loss, W, b, X = every_op_graph()
    X64, y64 = every_op_inputs(6)
    assert X64.dtype == y64.dtype == np.float64
    assert loss.forward(X=X64, y=y64).dtype == np.float32
    loss.backward()
    assert_graph_dtype(loss, np.float32)
    assert W.grad.dtype == b.grad.dtype == np.float32 and np.any(W.grad != 0)


@pytest.mark.usefixtures("float64")
def test_lazy_graph_matches_eager_for_every_batch_size():
    loss, W, b, _ = every_op_graph()
    for rows in (4, 1, 7, 4):
        X, y = every_op_inputs(rows, seed=rows)
        got = loss.forward(X=X, y=y)
        loss.backward()
        got_grads = W.grad.copy(), b.grad.copy()
        eager = every_op(Value(X, requires_grad=False), Value(y, requires_grad=False), W, b)
        eager.backward()
        np.testing.assert_allclose(got, eager.data, rtol=1e-12)
        for grad, want in zip(got_grads, (W.grad, b.grad)):
            np.testing.assert_allclose(grad, want, rtol=1e-12)


# ---- static graphs: feeds, backward semantics ----

def small_graph():
    """out = tanh(X @ W) over placeholder X (None, 3), and a loss of it against placeholder
    y (None,); returns out, loss, X, W."""
    X, y = Value.placeholder("X", (None, 3)), Value.placeholder("y", (None,))
    W = Value(np.random.default_rng(0).standard_normal((3, 2)))
    out = (X @ W).tanh()
    return out, ((out - y.reshape(-1, 1)) ** 2).mean(), X, W


def test_forward_needs_every_placeholder():
    _, loss, _, _ = small_graph()
    with pytest.raises(ValueError, match="not fed.*'y'"):
        loss.forward(X=np.ones((2, 3)))


def test_forward_rejects_unknown_feed():
    _, loss, _, _ = small_graph()
    with pytest.raises(ValueError, match="unknown feeds.*'Z'"):
        loss.forward(X=np.ones((2, 3)), y=np.ones(2), Z=np.ones(2))


@pytest.mark.parametrize("shape", [(5,), (5, 4), (5, 3, 1), ()], ids=str)
def test_feed_of_wrong_shape_names_placeholder_and_shapes(shape):
    _, loss, _, _ = small_graph()
    with pytest.raises(ValueError) as error:
        loss.forward(X=np.ones(shape), y=np.ones(5))
    message = str(error.value)
    assert "'X'" in message and "(None, 3)" in message and str(shape) in message


@pytest.mark.parametrize("bad", [np.array([["a", "b", "c"]]), np.array([[1.0, None, 2.0]], dtype=object)],
                         ids=["str", "object"])
def test_feed_of_non_numbers_raises(bad):
    _, loss, _, _ = small_graph()
    with pytest.raises(ValueError, match="'X'"):
        loss.forward(X=bad, y=np.ones(1))


def test_backward_twice_gives_the_same_grads():
    _, loss, _, W = small_graph()
    loss.forward(X=np.arange(12.0).reshape(4, 3) / 12, y=np.ones(4))
    loss.backward()
    first = W.grad.copy()
    loss.backward()
    assert np.any(first != 0)
    np.testing.assert_array_equal(W.grad, first)


def test_backward_of_non_scalar_is_backward_of_its_sum():
    out, _, X, W = small_graph()
    total = out.sum()
    X_batch = np.random.default_rng(1).standard_normal((4, 3))
    out.forward(X=X_batch)
    out.backward()
    of_out = W.grad.copy()
    total.forward(X=X_batch)
    total.backward()
    np.testing.assert_allclose(of_out, W.grad, rtol=1e-6)
    np.testing.assert_allclose(W.grad, X_batch.T @ (1 - np.tanh(X_batch @ W.data) ** 2), rtol=1e-5)


def test_placeholder_gets_no_gradient():
    out, loss, X, W = small_graph()
    loss.forward(X=np.ones((2, 3)), y=np.ones(2))
    loss.backward()
    assert X.grad is None
    assert W.grad is not None and np.any(W.grad != 0)


def test_parameter_grad_is_written_in_place():
    _, loss, _, W = small_graph()
    flat = np.zeros(8, np.float32)
    W.grad = flat[1:7].reshape(3, 2)
    loss.forward(X=np.eye(3), y=np.zeros(3))
    loss.backward()
    assert np.shares_memory(W.grad, flat) and np.any(flat[1:7] != 0)
    assert flat[0] == flat[7] == 0


def test_fused_affine_activation_has_both_ops_gradients_and_refuses_other_names():
    x, W, b = leaves(ANY, (4, 3), (3, 5), (5,), seed=3)
    for name in ("tanh", "relu", "sigmoid"):
        fused = x.affine(W, b, name)
        separate = getattr(x.affine(W, b), name)()
        assert fused.op == f"affine_{name}"
        np.testing.assert_allclose(fused.data, separate.data, rtol=1e-6)
    with pytest.raises(ValueError, match="affine: activation must be None or one of .*'softplus'"):
        x.affine(W, b, "softplus")


def test_backward_keeps_the_fused_activation_unless_told_not_to():
    """keep_data=False gives the same gradients; only then may the fused op reuse its data array."""
    x, W, b, V = leaves(ANY, (6, 3), (3, 4), (4,), (4, 2), seed=4)
    h = x.affine(W, b, "tanh")
    loss = (h @ V).sum()
    activation = h.data.copy()
    loss.backward()
    np.testing.assert_array_equal(h.data, activation)
    kept = [v.grad.copy() for v in (x, W, b, V)]
    loss.backward(keep_data=False)
    for v, want in zip((x, W, b, V), kept):
        np.testing.assert_array_equal(v.grad, want)
    assert not np.array_equal(h.data, activation)  # now the slope 1 - tanh^2 times the gradient


def test_backward_seed_scales_and_accumulate_adds_into_parameters():
    _, loss, _, W = small_graph()
    feed = {"X": np.eye(3), "y": np.arange(3.0)}
    loss.forward(**feed)
    loss.backward()
    once = W.grad.copy()
    loss.backward(seed=4.0)
    np.testing.assert_allclose(W.grad, 4 * once, rtol=1e-6)  # overwritten, not added: 4x, not 5x
    W.grad[:] = 1.0
    for _ in range(3):
        loss.backward(seed=2.0, accumulate=True)
    np.testing.assert_allclose(W.grad, 1.0 + 6 * once, rtol=1e-6)


# ---- stability, and integer inputs ----

@pytest.mark.usefixtures("float64")
def test_logsumexp_and_log_softmax_are_stable_for_huge_and_minus_infinite_inputs():
    small = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    for shift in (1000.0, -1000.0):  # exp overflows (or underflows to 0) without the max taken out
        x = Value(small + shift)
        np.testing.assert_allclose(x.logsumexp(axis=1).data, logsumexp_reference(small, 1) + shift, rtol=1e-12)
        out = x.log_softmax(axis=1)
        np.testing.assert_allclose(out.data, small - logsumexp_reference(small, 1, True), atol=1e-12)
        (out * output_weights(out.shape)).sum().backward()
        assert np.all(np.isfinite(x.grad))
    ninf = Value(np.array([[-np.inf, -np.inf], [0.0, -np.inf]]))
    np.testing.assert_array_equal(ninf.logsumexp(axis=1).data, [-np.inf, 0.0])


@pytest.mark.usefixtures("float64")
def test_embedding_through_an_integer_placeholder():
    codes = Value.placeholder("codes", (None,), integer=True)
    table = Value(np.random.default_rng(4).standard_normal((4, 2)))
    out = embedding(table, codes)
    loss = (out * output_weights((6, 2))).sum()
    fed = np.array([2, 2, 0, 3, 2, 0])
    assert_grads_match(loss, [table], codes=fed)
    assert codes.data.dtype == np.int64
    want = np.zeros((4, 2))
    for i, c in enumerate(fed):  # the scatter-add written out: each row's weights into its code's row
        want[c] += output_weights((6, 2))[i]
    np.testing.assert_allclose(table.grad, want, rtol=1e-12)


@pytest.mark.parametrize("bad", [np.array([0, 4]), np.array([-1, 0])], ids=["too large", "negative"])
def test_embedding_index_out_of_range_names_it(bad):
    codes = Value.placeholder("codes", (None,), integer=True)
    out = embedding(Value(np.ones((4, 2))), codes)
    with pytest.raises(ValueError, match=f"embedding: index {bad[0] if bad[0] < 0 else bad[1]} out of range.*4 rows"):
        out.forward(codes=bad)


def test_integer_placeholder_takes_whole_floats_and_refuses_others():
    codes = Value.placeholder("codes", (None,), integer=True)
    out = embedding(Value(np.arange(8.0).reshape(4, 2)), codes)
    np.testing.assert_array_equal(out.forward(codes=np.array([3.0, 1.0], np.float32)), [[6, 7], [2, 3]])  # labels as read
    assert codes.data.dtype == np.int64
    with pytest.raises(ValueError, match=r"^placeholder 'codes' takes integers, got 1.5$"):
        out.forward(codes=np.array([0.0, 1.5]))
    with pytest.raises(ValueError, match="'codes' takes integers.*bool"):
        out.forward(codes=np.array([True, False]))
    with pytest.raises(ValueError, match="holds floats"):
        embedding(Value(np.ones((4, 2))), Value.placeholder("x", (None,)))
    with pytest.raises(ValueError, match="integer array"):
        embedding(Value(np.ones((4, 2))), np.array([0.5]))
