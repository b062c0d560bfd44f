"""The Triton kernels of hcast.ops._triton equal the torch reference paths.

The kernels run on CPU tensors under Triton's interpreter. ``TRITON_INTERPRET=1`` only
takes effect if it is set before the kernels are decorated, and another test may already
have imported them in this process, so the checks run in one fresh subprocess (this file
run as a script) and each test below reports one check's outcome.
"""
import json
import os
import subprocess
import sys
import traceback

import pytest

CHECKS = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


# ---- checks, executed in the subprocess (TRITON_INTERPRET=1) -----------------------

@check
def fps_random_and_tied_points():
    import torch

    from hcast.ops import _triton
    from hcast.ops.farthest_point_sampling import _farthest_point_sampling_torch as ref

    g = torch.Generator().manual_seed(0)
    cases = [
        (torch.randn(3, 37, 5, generator=g), 10, 2),  # N not a power of two
        (torch.randint(-1, 2, (2, 12, 2), generator=g).double(), 12, 0),  # ties, exhausts cloud
        (torch.randn(2, 1, 4, generator=g).expand(2, 9, 4), 6, 4),  # duplicates, 0 strides
        (torch.randn(1, 20, 40, generator=g).transpose(1, 2)[:, :17, :], 4, 0),  # strided
        (torch.randn(1, 300, 2, generator=g, dtype=torch.float64), 12, 299),  # N > 256, C=2
        (torch.randn(2, 5, 3, generator=g).half(), 1, 3),  # K = 1, float16
    ]
    for points, k, start in cases:
        got = _triton.farthest_point_sampling(points, k, start)
        want = ref(points, k, start)
        assert torch.equal(got, want), (tuple(points.shape), got, want)


@check
def fps_cast_like_tokens():
    import torch

    from hcast.ops import _triton
    from hcast.ops.farthest_point_sampling import _farthest_point_sampling_torch as ref

    # CAST's last pooling stage in miniature: the mean token first, then the tokens.
    tokens = torch.randn(1, 16, 12, generator=torch.Generator().manual_seed(1))
    points = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)
    assert torch.equal(_triton.farthest_point_sampling(points, 9, 0), ref(points, 9, 0))


@check
def pool_matches_torch_path():
    import torch

    from hcast.ops import _triton
    from hcast.ops.superpixel_pool import _superpixel_pool_torch as ref

    g = torch.Generator().manual_seed(2)
    for dtype, tol in [(torch.float32, 1e-6), (torch.float64, 1e-12), (torch.bfloat16, 1e-2)]:
        features = torch.randn(2, 5, 6, 7, generator=g).to(dtype)
        segments = torch.randint(0, 9, (2, 5, 6), generator=g)  # some of 11 ids stay empty
        tokens, mask = _triton.superpixel_pool(features, segments, 11)
        want_tokens, want_mask = ref(features, segments, 11)
        assert tokens.dtype == dtype and torch.equal(mask, want_mask)
        torch.testing.assert_close(tokens.float(), want_tokens.float(), rtol=tol, atol=tol)
    # More channels than one channel block, non-contiguous features.
    features = torch.randn(1, 4, 3, 300, generator=g).transpose(1, 2).contiguous().transpose(1, 2)
    segments = torch.randint(0, 3, (1, 4, 3), generator=g)
    torch.testing.assert_close(_triton.superpixel_pool(features, segments, 3)[0],
                               ref(features, segments, 3)[0])


@check
def pool_gradcheck():
    import torch

    from hcast.ops import _triton

    features = torch.randn(2, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    segments = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1], [4, 4, 4, 4]],
                             [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]]])
    assert torch.autograd.gradcheck(lambda f: _triton.superpixel_pool(f, segments, 6)[0], (features,))


def _run_all() -> None:
    results = {}
    for name, fn in CHECKS.items():
        try:
            fn()
            results[name] = "ok"
        except Exception:  # noqa: BLE001 - reported to the parent test
            results[name] = traceback.format_exc()
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    _run_all()
    sys.exit(0)


# ---- tests, executed by pytest -----------------------------------------------------

@pytest.fixture(scope="module")
def interpreter_results():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_kernel_equals_torch_path(interpreter_results, name):
    assert interpreter_results[name] == "ok", interpreter_results[name]


def test_dispatch_uses_torch_path_on_cpu(monkeypatch):
    """CPU tensors never reach the kernels, even with Triton installed."""
    import torch

    from hcast.ops import _triton, farthest_point_sampling, superpixel_pool

    def fail(*args, **kwargs):
        raise AssertionError("Triton kernel called for a CPU tensor")

    monkeypatch.setattr(_triton, "superpixel_pool", fail)
    monkeypatch.setattr(_triton, "farthest_point_sampling", fail)
    superpixel_pool(torch.randn(1, 2, 2, 3), torch.zeros(1, 2, 2, dtype=torch.long))
    farthest_point_sampling(torch.randn(1, 4, 3), 2)
