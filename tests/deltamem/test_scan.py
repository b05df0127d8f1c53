"""The fast scan against the per-token oracle: outputs, final state and every input gradient."""
from __future__ import annotations

import pytest
import torch

from methods.deltamem.scan import (CHECKPOINT_EVERY, CHUNK, read_state, resolve_impl, scan, scan_chunked,
                                   scan_naive, scan_numba, segment_means, unit)

pytestmark = pytest.mark.skipif(not __import__("methods.deltamem.scan", fromlist=["x"]).numba_available(),
                                reason="numba not installed")

FP32_TOL = 1e-5
# bf16 inputs, fp32 arithmetic inside both implementations, outputs/grads rounded to bf16 at the end:
# the two may differ by one bf16 rounding step of the result (relative 2**-8 ≈ 3.9e-3).
BF16_REL_RMSE = 4e-3


def make_inputs(n: int, t: int, r: int = 8, *, pad: float = 0.2, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = unit(torch.tanh(torch.randn(n, t, r, generator=g)))
    k = unit(torch.tanh(torch.randn(n, t, r, generator=g)))
    v = torch.randn(n, t, r, generator=g)
    beta = torch.sigmoid(torch.randn(n, t, r, generator=g) - 1.0)
    state = 0.3 * torch.randn(n, r, r, generator=g)  # non-zero initial state: a continued call
    valid = torch.rand(n, t, generator=g) >= pad
    return [x.to(dtype) for x in (q, k, v, beta, state)], valid


def run(fn, xs, valid, seed=5):
    leaves = [x.clone().requires_grad_(True) for x in xs]
    reads, final = fn(*leaves[:4], state=leaves[4], valid=valid)
    g = torch.Generator().manual_seed(seed)
    w_r = torch.randn(reads.shape, generator=g).to(reads.dtype)
    w_s = torch.randn(final.shape, generator=g).to(final.dtype)
    ((reads * w_r).sum() + (final * w_s).sum()).backward()
    return {"reads": reads.detach(), "state": final.detach(),
            **{f"d{n}": x.grad for n, x in zip(("q", "k", "v", "beta", "state0"), leaves)}}


def rel_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30))


LENGTHS = [1, 7, CHECKPOINT_EVERY - 1, CHECKPOINT_EVERY, CHECKPOINT_EVERY + 1, 3 * CHECKPOINT_EVERY, 200]


@pytest.mark.parametrize("length", LENGTHS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("n", [1, 3], ids=lambda n: f"N{n}")
def test_numba_matches_oracle_fp32(n, length):
    xs, valid = make_inputs(n, length)
    ref, fast = run(scan_naive, xs, valid), run(scan_numba, xs, valid)
    for key in ref:
        assert (fast[key] - ref[key]).abs().max() <= FP32_TOL, key


@pytest.mark.parametrize("length", [5, CHECKPOINT_EVERY, CHECKPOINT_EVERY + 3, 2 * CHECKPOINT_EVERY, 150],
                         ids=lambda t: f"T{t}")
def test_numba_matches_oracle_bf16(length):
    xs, valid = make_inputs(2, length, dtype=torch.bfloat16)
    ref, fast = run(scan_naive, xs, valid), run(scan_numba, xs, valid)
    for key in ref:
        assert fast[key].dtype == torch.bfloat16
        assert rel_rmse(fast[key], ref[key]) <= BF16_REL_RMSE, key
    # and against the fp32 computation on the same (bf16-representable) inputs
    ref32 = run(scan_naive, [x.float() for x in xs], valid)
    for key in ("reads", "state"):
        assert rel_rmse(fast[key], ref32[key]) <= BF16_REL_RMSE, key


CHUNKED_LENGTHS = [1, 2, 7, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]


@pytest.mark.parametrize("length", CHUNKED_LENGTHS, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("n", [1, 3], ids=lambda n: f"N{n}")
def test_chunked_matches_oracle_fp32(n, length):
    xs, valid = make_inputs(n, length, seed=length)
    ref, fast = run(scan_naive, xs, valid), run(scan_chunked, xs, valid)
    for key in ref:
        assert fast[key].shape == ref[key].shape
        assert (fast[key] - ref[key]).abs().max() <= FP32_TOL, key


@pytest.mark.parametrize("chunk", [1, 4, 16, 256])
def test_chunked_any_chunk_size(chunk):
    xs, valid = make_inputs(2, 37, seed=3)
    ref = run(scan_naive, xs, valid)
    fast = run(lambda *a, **kw: scan_chunked(*a, chunk=chunk, **kw), xs, valid)
    for key in ref:
        assert (fast[key] - ref[key]).abs().max() <= FP32_TOL, key
    with pytest.raises(ValueError, match="power of two"):
        scan_chunked(*xs[:4], state=xs[4], chunk=48)


@pytest.mark.parametrize("length", [CHUNK, CHUNK + 9, 2 * CHUNK], ids=lambda t: f"T{t}")
def test_chunked_matches_oracle_bf16(length):
    xs, valid = make_inputs(2, length, dtype=torch.bfloat16)
    ref, fast = run(scan_naive, xs, valid), run(scan_chunked, xs, valid)
    for key in ref:
        assert fast[key].dtype == torch.bfloat16
        assert rel_rmse(fast[key], ref[key]) <= BF16_REL_RMSE, key


def test_chunked_padding_with_non_finite_projections_is_inert():
    xs, valid = make_inputs(2, 20, pad=0.3)
    poisoned = [x.clone() for x in xs]
    for x in poisoned[:4]:
        x[~valid] = float("nan")
    reads, final = scan_chunked(*poisoned[:4], state=poisoned[4], valid=valid)
    ref_reads, ref_final = scan_naive(*xs[:4], state=xs[4], valid=valid)
    assert torch.isfinite(reads).all() and torch.isfinite(final).all()
    assert (reads - ref_reads).abs().max() <= FP32_TOL and (final - ref_final).abs().max() <= FP32_TOL


def test_all_valid_equals_no_mask_and_padding_is_inert():
    xs, _ = make_inputs(2, 40, pad=0.0)
    all_valid = torch.ones(2, 40, dtype=torch.bool)
    a, b = scan_numba(*xs[:4], state=xs[4], valid=all_valid), scan_numba(*xs[:4], state=xs[4])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # padded tokens with non-finite projections neither read nor write
    valid = all_valid.clone()
    valid[:, ::3] = False
    poisoned = [x.clone() for x in xs]
    for x in poisoned[:4]:
        x[:, ::3] = float("nan")
    for fn in (scan_naive, scan_numba):
        reads, final = fn(*poisoned[:4], state=xs[4], valid=valid)
        clean_reads, clean_final = fn(*xs[:4], state=xs[4], valid=valid)
        assert torch.isfinite(reads).all() and torch.isfinite(final).all()
        assert torch.equal(reads[:, ::3], torch.zeros_like(reads[:, ::3]))
        assert (final - clean_final).abs().max() <= FP32_TOL


def test_two_calls_equal_one_call():
    xs, valid = make_inputs(2, 90)
    reads, final = scan_numba(*xs[:4], state=xs[4], valid=valid)
    r1, s1 = scan_numba(*(x[:, :37] for x in xs[:4]), state=xs[4], valid=valid[:, :37])
    r2, s2 = scan_numba(*(x[:, 37:] for x in xs[:4]), state=s1, valid=valid[:, 37:])
    assert (torch.cat([r1, r2], 1) - reads).abs().max() <= FP32_TOL
    assert (s2 - final).abs().max() <= FP32_TOL


def test_gradient_through_chained_calls():
    """Training keeps the graph from the write call into the read call (state carried with grad)."""
    xs, valid = make_inputs(1, 80)

    def two_calls(q, k, v, beta, *, state, valid):
        ra, sa = scan(q[:, :50], k[:, :50], v[:, :50], beta[:, :50], state=state, valid=valid[:, :50])
        rb, sb = scan(q[:, 50:], k[:, 50:], v[:, 50:], beta[:, 50:], state=sa, valid=valid[:, 50:])
        return torch.cat([ra, rb], 1), sb

    ref, fast = run(scan_naive, xs, valid), run(two_calls, xs, valid)
    for key in ref:
        assert (fast[key] - ref[key]).abs().max() <= FP32_TOL, key


def test_dispatch_and_read_state():
    assert resolve_impl("auto", torch.device("cpu")) == "numba"
    assert resolve_impl("naive", torch.device("cpu")) == "naive"
    assert resolve_impl("auto", torch.device("meta")) == "chunked"  # any non-CPU device
    assert resolve_impl("chunked", torch.device("cpu")) == "chunked"
    with pytest.raises(ValueError, match="expected auto"):
        resolve_impl("triton", torch.device("cpu"))  # type: ignore[arg-type]
    xs, valid = make_inputs(2, 10)
    reads = read_state(xs[0], state=xs[4], valid=valid)
    expect = torch.einsum("nij,ntj->nti", xs[4], xs[0]) * valid.unsqueeze(-1)
    assert (reads - expect).abs().max() <= FP32_TOL
    with pytest.raises(ValueError, match="state must be"):
        scan(*xs[:4], state=xs[4][:1])


def test_segment_means():
    x = torch.arange(12.0).view(1, 6, 2)
    ids = torch.tensor([[-1, 0, 0, 2, 2, 2]])
    valid = torch.tensor([[True, True, True, True, False, True]])
    means, present = segment_means(x, ids, valid)
    assert present.tolist() == [[True, False, True]]  # id 1 absent: a gap the scan must skip
    assert means[0, 0].tolist() == x[0, 1:3].mean(0).tolist()
    assert means[0, 2].tolist() == x[0, [3, 5]].mean(0).tolist()
    none, present = segment_means(x, torch.full((1, 6), -1), None)
    assert none.shape == (1, 0, 2) and present.shape == (1, 0)
