"""Triton backend: patch cosine cost, batched Sinkhorn and the fused cost -> weights -> Sinkhorn pairs.

Semantics are those of ``fastface.reference`` (cost.py, weights.py, sinkhorn.py); every kernel
accumulates in float32 and never uses TF32 (``tl.dot(..., input_precision="ieee")``).
Without a GPU, set ``TRITON_INTERPRET=1`` before triton is imported to run them on CPU tensors.

Kernels
  _patch_cost_kernel   grid (P, cdiv(n, BN), cdiv(m, BM)): one (BN, BM) output tile per program.
  _sinkhorn_kernel     grid (P,): one problem per program, the whole (n, m) tile in registers.
  _emd_pairs_kernel    grid (B*k,): one pair per program: cosine tile, weights, Sinkhorn, EMD.
The Sinkhorn iteration itself is the shared @triton.jit helper ``_sinkhorn_tile``.
"""
import contextlib

import torch

try:
    import triton
    import triton.language as tl
    AVAILABLE = True
except ImportError:  # the triton extra is not installed: the dispatcher never calls in here
    triton = None
    tl = None
    AVAILABLE = False

from ..reference.cost import NORM_FLOOR
from ..reference.sinkhorn import AUTO, KERNEL, LOG, OFFICIAL, LOG_DOMAIN_THRESHOLD

MAX_SINKHORN_SIZE = 128  # n, m limit of the register-tile Sinkhorn kernels
WEIGHTING_CODES = {"uniform": 0, "apc": 1, "sc": 2}
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _tile(size, lo=16, hi=None):
    """Power-of-two block covering `size` (at least `lo`: tl.dot needs 16 per dim), capped at `hi`."""
    b = max(lo, triton.next_power_of_2(max(int(size), 1)))
    return min(b, hi) if hi else b


def _sinkhorn_warps(BN, BM):
    # About 16 tile elements per thread, 4 to 16 warps: 64 x 64 -> 8 warps, 128 x 128 -> 16 warps.
    return max(4, min(16, (BN * BM) // 512))


if AVAILABLE:
    # The reference's constants, visible inside @triton.jit code.
    _NORM_FLOOR = tl.constexpr(NORM_FLOOR)                # 1e-12
    _LOG_THRESHOLD = tl.constexpr(LOG_DOMAIN_THRESHOLD)   # 50

    # ------------------------------------------------------------------------------------------
    # Shared helpers
    # ------------------------------------------------------------------------------------------

    @triton.jit
    def _pow2_scale(amax):
        """A power of two near amax (1 for zero rows): dividing by it keeps squares finite.
        At least 2^-126: a subnormal scale would flush to zero on GPUs."""
        e = tl.maximum(tl.floor(tl.log2(tl.where(amax > 0, amax, 1.0))), -126.0)
        return tl.where(amax > 0, tl.exp2(e), 1.0)

    @triton.jit
    def _cos_accumulate(x_ptr, y_ptr, offs_i, offs_j, n, m, C,
                        BN: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, APC: tl.constexpr):
        """Accumulate over channels, in float32, for rows offs_i of x (n, C) and offs_j of y (m, C).

        Every row is first divided by a power of two near its largest |value| (values ~1e19 would
        overflow the squares; fastface.reference.unit_rows does the same), so the sums are of the
        scaled rows x'_i = x_i / sx_i, y'_j = y_j / sy_j. Returns dot (BN, BM) = <x'_i, y'_j>,
        nx2 (BN,) = ||x'_i||^2, ny2 (BM,) = ||y'_j||^2, the norm floors NORM_FLOOR / sx_i (BN,) and
        NORM_FLOOR / sy_j (BM,), and when APC, with the means taken of rows scaled by one common
        power of two per side (mx', my'): xc (BN,) = <x'_i, my'>, yc (BM,) = <y'_j, mx'>, cx2 =
        ||mx'||^2, cy2 = ||my'||^2 and their floors (the means are over all n / m rows, so offs_i /
        offs_j must then cover the whole matrices).
        """
        mask_i = offs_i < n
        mask_j = offs_j < m
        row_x = offs_i.to(tl.int64)[:, None] * C   # (BN, 1)
        row_y = offs_j.to(tl.int64)[:, None] * C   # (BM, 1)
        amax_x = tl.zeros((BN,), dtype=tl.float32)
        amax_y = tl.zeros((BM,), dtype=tl.float32)
        for c0 in range(0, C, BC):
            offs_c = c0 + tl.arange(0, BC)
            mask_c = offs_c < C
            xt = tl.load(x_ptr + row_x + offs_c[None, :], mask=mask_i[:, None] & mask_c[None, :],
                         other=0.0).to(tl.float32)  # (BN, BC)
            yt = tl.load(y_ptr + row_y + offs_c[None, :], mask=mask_j[:, None] & mask_c[None, :],
                         other=0.0).to(tl.float32)  # (BM, BC)
            amax_x = tl.maximum(amax_x, tl.max(tl.abs(xt), axis=1))
            amax_y = tl.maximum(amax_y, tl.max(tl.abs(yt), axis=1))
        sx = _pow2_scale(amax_x)                    # (BN,)
        sy = _pow2_scale(amax_y)                    # (BM,)
        gx = tl.max(sx, axis=0)                     # common scale of the means
        gy = tl.max(sy, axis=0)
        dot = tl.zeros((BN, BM), dtype=tl.float32)
        nx2 = tl.zeros((BN,), dtype=tl.float32)
        ny2 = tl.zeros((BM,), dtype=tl.float32)
        xc = tl.zeros((BN,), dtype=tl.float32)
        yc = tl.zeros((BM,), dtype=tl.float32)
        cx2 = tl.zeros((BC,), dtype=tl.float32)
        cy2 = tl.zeros((BC,), dtype=tl.float32)
        for c0 in range(0, C, BC):
            offs_c = c0 + tl.arange(0, BC)
            mask_c = offs_c < C
            xt = tl.load(x_ptr + row_x + offs_c[None, :], mask=mask_i[:, None] & mask_c[None, :],
                         other=0.0).to(tl.float32) / sx[:, None]  # (BN, BC)
            yt = tl.load(y_ptr + row_y + offs_c[None, :], mask=mask_j[:, None] & mask_c[None, :],
                         other=0.0).to(tl.float32) / sy[:, None]  # (BM, BC)
            dot = tl.dot(xt, tl.trans(yt), dot, input_precision="ieee")  # (BN, BM), no TF32
            nx2 += tl.sum(xt * xt, axis=1)
            ny2 += tl.sum(yt * yt, axis=1)
            if APC:
                mx = tl.sum(xt * (sx / gx)[:, None], axis=0) / n   # (BC,) chunk of mean_i x_i / gx
                my = tl.sum(yt * (sy / gy)[:, None], axis=0) / m   # (BC,) chunk of mean_j y_j / gy
                xc += tl.sum(xt * my[None, :], axis=1)
                yc += tl.sum(yt * mx[None, :], axis=1)
                cx2 += mx * mx
                cy2 += my * my
        return (dot, nx2, ny2, _NORM_FLOOR / sx, _NORM_FLOOR / sy, xc, yc,
                tl.sum(cx2, axis=0), tl.sum(cy2, axis=0), _NORM_FLOOR / gx, _NORM_FLOOR / gy)

    @triton.jit
    def _inv_norm(sq, floor):
        """1 / max(sqrt(sq), floor), correctly rounded (zero rows -> finite, dot stays 0)."""
        return tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(sq), floor))

    @triton.jit
    def _lse(x, AXIS: tl.constexpr):
        """torch.logsumexp over AXIS: an all -inf slice gives -inf (not NaN)."""
        mx = tl.max(x, axis=AXIS)
        mx = tl.where(tl.abs(mx) == float("inf"), 0.0, mx)
        if AXIS == 1:
            s = tl.sum(tl.exp(x - mx[:, None]), axis=1)
        else:
            s = tl.sum(tl.exp(x - mx[None, :]), axis=0)
        return tl.log(s) + mx

    @triton.jit
    def _isfinite(x):
        return (x == x) & (tl.abs(x) != float("inf"))

    @triton.jit
    def _sinkhorn_tile(cost, a, b, mask_i, mask_j, eps, max_iter, tol, mode, cost_ptrs,
                       BN: tl.constexpr, BM: tl.constexpr, RELOAD: tl.constexpr):
        """Sinkhorn on one problem held in registers, exactly as fastface.reference.sinkhorn_ref.

        cost (BN, BM) float32 (padding arbitrary), a (BN,), b (BM,) float32 with 0 on padding.
        mode: 0 auto, 1 kernel domain, 2 log domain.
        Returns f (BN,), g (BM,) potentials of the reduced cost Cr = (C - alpha_i) - beta_j (-inf on
        zero weights and padding), alpha (BN,), beta (BM,), n_iter (int32) and converged (bool);
        `_plan_tile` turns them into the plan and distance.
        RELOAD: cost_ptrs (BN, BM) address the cost in global memory; Cr is then rebuilt from a
        fresh load after the kernel-domain loop, so only K (then only Cr) stays in registers
        through the loops. Without RELOAD (fused kernel: the cost exists only in registers)
        cost_ptrs is unused and Cr stays live through both loops.
        """
        INF: tl.constexpr = float("inf")
        mask2d = mask_i[:, None] & mask_j[None, :]
        cost = tl.where(mask2d, cost, 0.0)

        # Reduced cost Cr = C - alpha_i - beta_j >= 0 (row minima, then column minima).
        alpha = tl.min(tl.where(mask2d, cost, INF), axis=1)              # (BN,)
        alpha = tl.where(mask_i, alpha, 0.0)
        c1 = cost - alpha[:, None]                                       # (BN, BM)
        beta = tl.min(tl.where(mask2d, c1, INF), axis=0)                 # (BM,)
        beta = tl.where(mask_j, beta, 0.0)
        # Padding gets Cr = +inf: K = 0 there and log-domain terms are -inf, so the loops need
        # no 2-D masks (NaN-free: potentials are never +inf).
        cr = tl.where(mask2d, c1 - beta[None, :], INF)                   # (BN, BM)

        crmax = tl.max(tl.max(tl.where(mask2d, cr, 0.0), axis=1), axis=0)
        use_log = (mode == 2) | ((mode == 0) & (crmax / eps > _LOG_THRESHOLD))

        # ---- kernel domain: u = a / (K v), v = b / (K^T u), K = exp(-Cr / eps) ----
        K = tl.exp(-cr / eps)                                            # (BN, BM), 0 on padding
        u = tl.full((BN,), 1.0, tl.float32)
        v = tl.full((BM,), 1.0, tl.float32)
        it_k = tl.full((), 0, tl.int32)
        err_k = tl.full((), INF, tl.float32)
        go = tl.where(use_log | (max_iter <= 0), 0, 1)
        while go != 0:
            u = tl.where(a > 0, a / tl.sum(K * v[None, :], axis=1), 0.0)     # (BN,)
            v = tl.where(b > 0, b / tl.sum(K * u[:, None], axis=0), 0.0)     # (BM,)
            it_k += 1
            row = u * tl.sum(K * v[None, :], axis=1)                         # (BN,) = P 1
            err_k = tl.sum(tl.where(mask_i, tl.abs(row - a), 0.0), axis=0)
            # NaN errors keep iterating, like the reference (~(err <= tol)).
            go = tl.where((err_k <= tol) | (it_k >= max_iter), 0, 1)
        if RELOAD:
            # volatile: a second, real load (not merged with the first by the compiler).
            cost = tl.load(cost_ptrs, mask=mask2d, other=0.0, volatile=True)
            cr = tl.where(mask2d, (cost - alpha[:, None]) - beta[None, :], INF)   # same bits
        f_k = eps * tl.log(u)
        g_k = eps * tl.log(v)
        bad_f = tl.max(tl.where((a > 0) & (_isfinite(f_k) == 0), 1, 0), axis=0)
        bad_g = tl.max(tl.where((b > 0) & (_isfinite(g_k) == 0), 1, 0), axis=0)
        use_log = use_log | ((mode == 0) & ((bad_f + bad_g) > 0))

        # ---- log domain: f = eps log a - eps LSE_j((g_j - Cr_ij) / eps), then g likewise ----
        # The loop state starts as the kernel-domain result, reset to f = g = 0 when the log domain
        # runs, so the result needs no select afterwards (fewer vectors live through the loop).
        eps_log_a = eps * tl.log(a)      # -inf on zero weights and padding
        eps_log_b = eps * tl.log(b)
        f = tl.where(use_log, 0.0, f_k)
        g = tl.where(use_log, 0.0, g_k)
        it_l = tl.where(use_log, 0, it_k)
        err_l = tl.where(use_log, INF, err_k)
        go = tl.where(use_log & (max_iter > 0), 1, 0)
        while go != 0:
            lse_f = _lse((g[None, :] - cr) / eps, 1)                           # (BN,)
            f = tl.where(mask_i, eps_log_a - eps * lse_f, -INF)
            lse_g = _lse((f[:, None] - cr) / eps, 0)                           # (BM,)
            g = tl.where(mask_j, eps_log_b - eps * lse_g, -INF)
            it_l += 1
            row = tl.exp(_lse((f[:, None] + g[None, :] - cr) / eps, 1))        # (BN,) = P 1
            err_l = tl.sum(tl.where(mask_i, tl.abs(row - a), 0.0), axis=0)
            go = tl.where((err_l <= tol) | (it_l >= max_iter), 0, 1)

        # Potentials of Cr: adding alpha, beta here would lose precision for costs far from 0.
        return f, g, alpha, beta, it_l, err_l <= tol

    @triton.jit
    def _plan_tile(f, g, alpha, beta, cost, mask2d, eps):
        """plan (BN, BM) = exp((f_i + g_j - Cr_ij) / eps) (0 on padding) and distance <plan, C>."""
        cost = tl.where(mask2d, cost, 0.0)
        cr = (cost - alpha[:, None]) - beta[None, :]                     # as in _sinkhorn_tile
        plan = tl.where(mask2d, tl.exp((f[:, None] + g[None, :] - cr) / eps), 0.0)
        return plan, tl.sum(tl.sum(plan * cost, axis=1), axis=0)

    # ------------------------------------------------------------------------------------------
    # Kernels
    # ------------------------------------------------------------------------------------------

    @triton.jit
    def _patch_cost_kernel(x_ptr, y_ptr, out_ptr, rep, n, m, C,
                           BN: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
        """x (P // rep, n, C), y (P, m, C) -> out (P, n, m) = 1 - cos; program (p, tile_i, tile_j)."""
        p = tl.program_id(0).to(tl.int64)
        offs_i = tl.program_id(1) * BN + tl.arange(0, BN)   # (BN,)
        offs_j = tl.program_id(2) * BM + tl.arange(0, BM)   # (BM,)
        x_base = x_ptr + (p // rep) * n * C
        y_base = y_ptr + p * m * C
        dot, nx2, ny2, fx, fy, _xc, _yc, _cx2, _cy2, _fcx, _fcy = _cos_accumulate(
            x_base, y_base, offs_i, offs_j, n, m, C, BN, BM, BC, False)
        cost = 1.0 - (dot * _inv_norm(nx2, fx)[:, None]) * _inv_norm(ny2, fy)[None, :]   # (BN, BM)
        mask = (offs_i < n)[:, None] & (offs_j < m)[None, :]
        out = out_ptr + p * n * m + offs_i[:, None] * m + offs_j[None, :]
        tl.store(out, cost, mask=mask)

    @triton.jit
    def _sinkhorn_kernel(cost_ptr, a_ptr, b_ptr, n, m, eps, max_iter, tol, mode,
                         dist_ptr, plan_ptr, f_ptr, g_ptr, iter_ptr, conv_ptr,
                         BN: tl.constexpr, BM: tl.constexpr, RETURN_PLAN: tl.constexpr):
        """cost (P, n, m), a (P, n), b (P, m) -> distance, plan, f, g, n_iter, converged; program p."""
        p = tl.program_id(0).to(tl.int64)
        offs_i = tl.arange(0, BN)
        offs_j = tl.arange(0, BM)
        mask_i = offs_i < n
        mask_j = offs_j < m
        mask2d = mask_i[:, None] & mask_j[None, :]
        tile = p * n * m + offs_i[:, None] * m + offs_j[None, :]          # (BN, BM) offsets
        cost = tl.load(cost_ptr + tile, mask=mask2d, other=0.0)           # (BN, BM)
        a = tl.load(a_ptr + p * n + offs_i, mask=mask_i, other=0.0)       # (BN,)
        b = tl.load(b_ptr + p * m + offs_j, mask=mask_j, other=0.0)       # (BM,)
        f, g, alpha, beta, n_iter, converged = _sinkhorn_tile(
            cost, a, b, mask_i, mask_j, eps, max_iter, tol, mode, cost_ptr + tile, BN, BM, True)
        cost = tl.load(cost_ptr + tile, mask=mask2d, other=0.0, volatile=True)   # not kept live
        plan, distance = _plan_tile(f, g, alpha, beta, cost, mask2d, eps)
        tl.store(dist_ptr + p, distance)
        tl.store(f_ptr + p * n + offs_i, f, mask=mask_i)
        tl.store(g_ptr + p * m + offs_j, g, mask=mask_j)
        tl.store(iter_ptr + p, n_iter)
        tl.store(conv_ptr + p, converged.to(tl.uint8))
        if RETURN_PLAN:
            tl.store(plan_ptr + tile, plan, mask=mask2d)

    @triton.jit
    def _normalise(s, mask, size):
        """(w, empty): w = s / sum(s); an all-zero side becomes uniform 1 / size and is flagged."""
        s = tl.where(mask, s, 0.0)
        total = tl.sum(s, axis=0)
        empty = total <= 0
        w = tl.where(empty, 1.0 / size, s / tl.where(empty, 1.0, total))
        return tl.where(mask, w, 0.0), empty

    @triton.jit
    def _emd_pairs_kernel(x_ptr, y_ptr, k, n, m, C, eps, max_iter, tol, mode,
                          emd_ptr, flow_ptr, iter_ptr, conv_ptr, fb_ptr,
                          WEIGHTING: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                          BC: tl.constexpr, RETURN_FLOWS: tl.constexpr):
        """x (B, n, C), y (B*k, m, C) -> per pair p (query p // k): cost, weights, Sinkhorn, EMD.

        WEIGHTING: 0 uniform, 1 apc, 2 sc.
        """
        p = tl.program_id(0).to(tl.int64)
        offs_i = tl.arange(0, BN)
        offs_j = tl.arange(0, BM)
        mask_i = offs_i < n
        mask_j = offs_j < m
        mask2d = mask_i[:, None] & mask_j[None, :]
        dot, nx2, ny2, fx, fy, xc, yc, cx2, cy2, fcx, fcy = _cos_accumulate(
            x_ptr + (p // k) * n * C, y_ptr + p * m * C, offs_i, offs_j, n, m, C,
            BN, BM, BC, WEIGHTING == 1)
        rx = _inv_norm(nx2, fx)                                       # (BN,)
        ry = _inv_norm(ny2, fy)                                       # (BM,)
        cost = 1.0 - (dot * rx[:, None]) * ry[None, :]                # (BN, BM), never stored

        fallback = tl.full((), 0, tl.int32)
        if WEIGHTING == 0:
            a = tl.where(mask_i, 1.0 / n, 0.0)
            b = tl.where(mask_j, 1.0 / m, 0.0)
        else:
            if WEIGHTING == 1:
                # APC: cosine of each unit row with the unit mean of the other image's raw rows.
                sx = (xc * rx) * _inv_norm(cy2, fcy)
                sy = (yc * ry) * _inv_norm(cx2, fcx)
            else:
                # SC: summed cosine distances to all patches of the other image.
                sx = tl.sum(tl.where(mask2d, cost, 0.0), axis=1)
                sy = tl.sum(tl.where(mask2d, cost, 0.0), axis=0)
            a, empty_a = _normalise(tl.maximum(sx, 0.0), mask_i, n)
            b, empty_b = _normalise(tl.maximum(sy, 0.0), mask_j, m)
            fallback = (empty_a | empty_b).to(tl.int32)

        f, g, alpha, beta, n_iter, converged = _sinkhorn_tile(
            cost, a, b, mask_i, mask_j, eps, max_iter, tol, mode, cost, BN, BM, False)
        plan, distance = _plan_tile(f, g, alpha, beta, cost, mask2d, eps)
        tl.store(emd_ptr + p, distance)
        tl.store(iter_ptr + p, n_iter)
        tl.store(conv_ptr + p, converged.to(tl.uint8))
        tl.store(fb_ptr + p, fallback.to(tl.uint8))
        if RETURN_FLOWS:
            tile = p * n * m + offs_i[:, None] * m + offs_j[None, :]
            tl.store(flow_ptr + tile, plan, mask=mask2d)


# ----------------------------------------------------------------------------------------------
# Python wrappers
# ----------------------------------------------------------------------------------------------

def _require():
    if not AVAILABLE:
        raise RuntimeError("fastface triton kernels need the 'triton' package")


def _on_device_of(t):
    """Make t's GPU the current device for a launch: Triton launches on the current device's
    current stream, so the caller's stream on t's device is used (a no-op for CPU tensors)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _check_mode(mode):
    mode = int(mode)
    if mode == OFFICIAL:
        raise ValueError("the triton backend does not support mode 'official' (3)")
    if mode not in (AUTO, KERNEL, LOG):
        raise ValueError(f"mode must be 0 (auto), 1 (kernel) or 2 (log), got {mode}")
    return mode


def _check_size(n, m):
    if max(n, m) > MAX_SINKHORN_SIZE:
        raise ValueError("sinkhorn_triton supports n, m <= 128")


def patch_cost_triton(x, y, rep):
    """Return cost (P, n, m) float32 = 1 - cos(x[p // rep, i], y[p, j]) for x (P // rep, n, C), y (P, m, C)."""
    _require()
    if x.dtype not in _SUPPORTED_DTYPES or y.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"patch_cost_triton: unsupported dtypes {x.dtype}, {y.dtype}")
    x, y = x.contiguous(), y.contiguous()
    P, m, C = y.shape
    n = x.shape[1]
    rep = int(rep)
    if x.shape[0] * rep != P or x.shape[2] != C:
        raise ValueError(f"patch_cost_triton: shapes x {tuple(x.shape)}, y {tuple(y.shape)}, rep {rep}")
    out = torch.empty(P, n, m, dtype=torch.float32, device=y.device)
    if out.numel() == 0:
        return out
    if C == 0:
        return out.fill_(1.0)
    BN, BM, BC = _tile(n, hi=64), _tile(m, hi=64), _tile(C, hi=32)
    grid = (P, triton.cdiv(n, BN), triton.cdiv(m, BM))
    with _on_device_of(y):
        _patch_cost_kernel[grid](x, y, out, rep, n, m, C, BN=BN, BM=BM, BC=BC, num_warps=8)
    return out


def sinkhorn_triton(cost, a, b, eps, max_iter, tol, mode, return_plan):
    """Batched Sinkhorn, one program per problem: cost (P, n, m), a (P, n), b (P, m) float32.

    Returns dict(distance (P,), plan (P, n, m) | None, f (P, n), g (P, m) (potentials of the
    reduced cost), n_iter (P,) int32, converged (P,) bool) as fastface.reference.sinkhorn_ref.
    """
    _require()
    mode = _check_mode(mode)
    P, n, m = cost.shape
    _check_size(n, m)
    if cost.dtype != torch.float32:
        raise TypeError(f"sinkhorn_triton: cost must be float32, got {cost.dtype}")
    cost = cost.contiguous()
    a = a.to(torch.float32).contiguous()
    b = b.to(torch.float32).contiguous()
    dev = cost.device
    distance = torch.empty(P, dtype=torch.float32, device=dev)
    plan = torch.empty(P, n, m, dtype=torch.float32, device=dev) if return_plan else None
    f = torch.empty(P, n, dtype=torch.float32, device=dev)
    g = torch.empty(P, m, dtype=torch.float32, device=dev)
    n_iter = torch.empty(P, dtype=torch.int32, device=dev)
    conv = torch.empty(P, dtype=torch.uint8, device=dev)
    if P and n and m:
        BN, BM = _tile(n, lo=2), _tile(m, lo=2)
        with _on_device_of(cost):
            _sinkhorn_kernel[(P,)](cost, a, b, n, m, float(eps), int(max_iter), float(tol), mode,
                                   distance, plan if return_plan else distance, f, g, n_iter, conv,
                                   BN=BN, BM=BM, RETURN_PLAN=bool(return_plan),
                                   num_warps=_sinkhorn_warps(BN, BM))
    return dict(distance=distance, plan=plan, f=f, g=g, n_iter=n_iter, converged=conv.bool())


def emd_pairs_triton(x, y, k, weighting, eps, max_iter, tol, mode, return_flows):
    """Fused re-rank EMD: x (B, n, C) queries, y (B*k, m, C) gathered candidates (row b*k + j).

    Per pair: cost = 1 - cos (in registers), weights per `weighting` ("uniform", "apc", "sc"),
    Sinkhorn as sinkhorn_triton, emd = <plan, cost>.
    Returns dict(emd (B*k,), flows (B*k, n, m) | None, n_iter, converged, fallback (B*k,) bool).
    """
    _require()
    mode = _check_mode(mode)
    if weighting not in WEIGHTING_CODES:
        raise ValueError(f"weighting must be one of {tuple(WEIGHTING_CODES)}, got {weighting!r}")
    if x.dtype not in _SUPPORTED_DTYPES or y.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"emd_pairs_triton: unsupported dtypes {x.dtype}, {y.dtype}")
    x, y = x.contiguous(), y.contiguous()
    B, n, C = x.shape
    k = int(k)
    P, m = y.shape[0], y.shape[1]
    if P != B * k or y.shape[2] != C:
        raise ValueError(f"emd_pairs_triton: shapes x {tuple(x.shape)}, y {tuple(y.shape)}, k {k}")
    _check_size(n, m)
    code = WEIGHTING_CODES[weighting]
    dev = x.device
    emd = torch.empty(P, dtype=torch.float32, device=dev)
    flows = torch.empty(P, n, m, dtype=torch.float32, device=dev) if return_flows else None
    n_iter = torch.empty(P, dtype=torch.int32, device=dev)
    conv = torch.empty(P, dtype=torch.uint8, device=dev)
    fallback = torch.empty(P, dtype=torch.uint8, device=dev)
    if P and n and m:
        BN, BM = _tile(n), _tile(m)
        BC = _tile(C, hi=32) if C else 16
        with _on_device_of(x):
            _emd_pairs_kernel[(P,)](x, y, k, n, m, C, float(eps), int(max_iter), float(tol),
                                    mode, emd, flows if return_flows else emd, n_iter, conv, fallback,
                                    WEIGHTING=code, BN=BN, BM=BM, BC=BC,
                                    RETURN_FLOWS=bool(return_flows), num_warps=_sinkhorn_warps(BN, BM))
    return dict(emd=emd, flows=flows, n_iter=n_iter, converged=conv.bool(), fallback=fallback.bool())


__all__ = ["AVAILABLE", "patch_cost_triton", "sinkhorn_triton", "emd_pairs_triton",
           "MAX_SINKHORN_SIZE", "NORM_FLOOR", "LOG_DOMAIN_THRESHOLD"]
