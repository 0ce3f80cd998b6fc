"""The fused augmentation kernel: uint8 batch -> warped, flipped, shifted, normalized float32 batch.

Per image it reproduces Keras' ``ImageDataGenerator.apply_transform`` (``scipy.ndimage.
affine_transform`` once per channel, ``flip_axis``, ``apply_channel_shift``, PIL brightness) and
then the model's ``preprocess_input``, in that order (Keras warps raw values; the preprocessing
function comes after):

* geometry: a pull mapping ``input (row, col) = A @ output (row, col) + b`` per image, built by
  :func:`fastfeat.augment.transform_matrices`; each output row's start is evaluated in double
  precision with scipy's formula, the steps along the row in float32 for ``nearest`` and
  ``constant`` (rounding of about 1e-5 pixel at 224 pixels, 2e-4 at 3,000) and in double for
  the other modes; flips are folded in by reading the warped image at the mirrored output coordinate
  (Keras flips after warping);
* fill modes follow ``scipy.ndimage``'s ``map_coordinate`` exactly: ``constant`` gives ``cval``
  for any coordinate outside ``[0, n - 1]`` and never interpolates across the edge; ``nearest``
  clamps; ``reflect`` is half-sample symmetric (``d c b a | a b c d | d c b a``); ``wrap`` has
  period ``n - 1`` (first and last samples coincide; scipy's ``grid-wrap`` is not used);
* the warp runs per output row (:func:`_warp_rows`) in three steps: the row's taps and weights
  (:func:`_coords_clamped`, branch-free float32 that vectorizes, for ``nearest`` and
  ``constant``; :func:`_coords_mapped`, double precision per pixel, for ``reflect`` and
  ``wrap``); the gather of the four taps straight from the uint8 image, interpolated in raw
  0..255 values with float32 weights (:func:`_gather_rgb`: one four-lane vector per pixel,
  see :func:`_blend_rgb`); then ``cval`` for the columns outside the image (in ``constant`` mode
  they are one contiguous run on each side of the row) and the model's normalization on the
  row while it is in L1 (:func:`_normalize_row`: ``Normalization.apply``'s float32 steps, same
  order, same skips). An un-warped pixel (weights exactly 1, 0, 0, 0) is therefore bit-identical
  to ``Normalization.apply``, a fill pixel to the normalized ``cval``, and a warped one is
  literally "warp, then normalize";
* channel shift (one intensity added to every channel, clipped to the warped image's own min and
  max, Keras' ``apply_channel_shift``) and brightness (PIL's ``ImageEnhance.Brightness`` on the
  uint8 image Keras converts to: ``min(255, trunc(float32(b) * trunc(v)))``) are not linear: an
  image that has either is warped from raw 0..255 values with scipy's own double-precision
  arithmetic (:func:`_warp_exact`, bit-identical to Keras), finished in a second in-place pass
  and left raw (RGB) for the caller to normalize. ``order=0`` also takes :func:`_warp_exact`
  (then the row normalization).

Measured on this project's 2-core machine (Xeon with AVX-512; 224x224, course augmentation, a
batch of 32 random images, one thread, ms per image, medians of interleaved rounds, the previous
kernel side by side). That kernel first expanded each image into a (h * w + 1, c) float32 table
of normalized values through a (3, 256) lookup table (600 KB written, then read by the gather)
and blended four float32 taps per pixel in scalar code:

====================  ========  =====  ==========================================
mode, normalization   previous    now  notes
====================  ========  =====  ==========================================
nearest, none            0.284  0.194  0.68x
nearest, caffe           0.286  0.210  0.73x (its mean step fused into the blend)
constant, none           0.315  0.205  0.65x (cval columns are not gathered)
constant, caffe          0.330  0.223  0.67x
nearest, torch           0.287  0.268  0.93x (two division passes, 0.06 ms)
reflect, none            0.685  0.597  0.87x
====================  ========  =====  ==========================================

What did not pay: the same uint8 gather in scalar code (twelve byte loads, conversions and
multiplies per pixel) took 1.14-1.18x the previous kernel's time for ``nearest`` (the
table pass it saves costs less than the conversions it adds), and signed indices (a
negative-index fix-up per load) slowed that gather by about a quarter; a view per row costs 0.02-0.03
ms per image in reference counting; a lone mean step as a pass over the row instead of in the
blend, 1.07x; ``constant``'s bounds tested in a second loop instead of the coordinate loop, 1.05x.

Kernels are compiled with :func:`fastfeat.kernels.jit` (nogil, not parallel): the loader's worker
threads run them concurrently on different batches. Only ``dst`` (and per-call scratch) is written.
"""

from __future__ import annotations

import math

import numpy as np

from .kernels import DISABLE_JIT, jit

#: Largest magnitude of a pull-mapping entry :func:`augment_batch` takes (real augmentations stay
#: within a few image sizes; beyond, float32 coordinates could overflow to inf - inf = NaN).
MAX_MAPPING = float(2**24)

#: Fill mode names (ImageDataGenerator's ``fill_mode``) and their kernel codes.
FILL_MODES = {"constant": 0, "nearest": 1, "reflect": 2, "wrap": 3}


@jit
def map_coordinate(v, n, mode):
    """Map one coordinate into ``[0, n - 1]`` as scipy does; ``-1.0`` means "use cval".

    ``reflect`` may return a value in ``(-1, 0)`` or ``(n - 1, n)``; its neighbours outside the
    image then reflect onto the edge sample, which :func:`_clamp` reproduces.
    """
    if v < 0.0:
        if mode == 0:
            return -1.0
        if mode == 1 or n <= 1:
            return 0.0
        if mode == 2:
            sz2 = 2 * n
            if v < -sz2:
                v = sz2 * int(-v / sz2) + v
            return v + sz2 if v < -n else -v - 1.0
        sz = n - 1
        return v + sz * (int(-v / sz) + 1)
    if v > n - 1:
        if mode == 0:
            return -1.0
        if mode == 1:
            return n - 1.0
        if n <= 1:
            return 0.0
        if mode == 2:
            sz2 = 2 * n
            v -= sz2 * int(v / sz2)
            if v >= n:
                v = sz2 - v - 1.0
            return v
        sz = n - 1
        return v - sz * int(v / sz)
    return v


@jit
def _clamp(i, n):
    if i < 0:
        return 0
    if i > n - 1:
        return n - 1
    return i


@jit
def _fill_raw(img, buf):
    """``buf[y, x, c] = float32(img[y, x, c])``; unused lanes set to zero."""
    h, w, channels = img.shape
    for y in range(h):
        for x in range(w):
            for c in range(channels):
                buf[y, x, c] = np.float32(img[y, x, c])
            for c in range(channels, 4):
                buf[y, x, c] = 0.0


# -- the blend of four RGB taps ---------------------------------------------------------------------
@jit
def _blend_rgb_scalar(s, k00, k01, k10, k11, w00, w01, w10, w11, bgr, mean, out, o):
    """``out[o + j]`` = the four taps' channel ``j`` (``2 - j`` when ``bgr``) blended, minus ``mean[j]``.

    ``s`` is the flat uint8 image, ``k..`` the taps' byte offsets and ``o`` the output offset,
    all unsigned (no negative-index fix-up per load). Float32 throughout: the sum runs
    ``((t00 + t01) + t10) + t11``, then the subtraction (``mean`` is zeros unless the
    normalization's only step is its mean, as in ``caffe``: then it is that step).
    """
    for j in range(3):
        p = np.uint64(2 - j if bgr else j)
        out[o + np.uint64(j)] = (
            np.float32(s[k00 + p]) * w00 + np.float32(s[k01 + p]) * w01
            + np.float32(s[k10 + p]) * w10 + np.float32(s[k11 + p]) * w11
        ) - mean[j]  # fmt: skip


def _blend_rgb(s, k00, k01, k10, k11, w00, w01, w10, w11, bgr, mean, out, o):
    """:func:`_blend_rgb_scalar`, compiled as one four-lane vector (see :func:`_register_blend`).

    The compiled version reads four bytes per tap (the fourth, the next pixel's first channel, is
    ignored) and four values of ``mean``, and also writes ``out[o + 3]``: the caller keeps all
    three inside their arrays. This plain version is what runs un-jitted; the two agree bit for
    bit (the same float32 operations, lane by lane).
    """
    _blend_rgb_scalar(s, k00, k01, k10, k11, w00, w01, w10, w11, bgr, mean, out, o)


def _register_blend():
    """Compile :func:`_blend_rgb` as LLVM vector code.

    Numba leaves LLVM's SLP vectorizer off, so the three channels of a pixel never share a vector
    instruction on their own: twelve byte loads, conversions and multiplies per pixel. Here each
    tap is one 4-byte load widened to four float32 lanes, multiplied by the splat weight and
    summed in the same order; the BGR swap is one shuffle of the sum, then one subtraction and
    one 16-byte store. Only generic LLVM vector operations: any target Numba supports.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic, overload

    def is_vector(a, dtype):
        return isinstance(a, types.Array) and a.dtype == dtype and a.ndim == 1 and a.layout == "C"

    @intrinsic
    def blend4(typingctx, s, k00, k01, k10, k11, w00, w01, w10, w11, bgr, mean, out, o):
        if not (is_vector(s, types.uint8) and is_vector(mean, types.float32) and is_vector(out, types.float32)):
            return None
        if not all(isinstance(k, types.Integer) for k in (k00, k01, k10, k11, o)):
            return None
        if not all(t == types.float32 for t in (w00, w01, w10, w11)) or not isinstance(bgr, types.Boolean):
            return None
        sig = types.void(s, k00, k01, k10, k11, w00, w01, w10, w11, bgr, mean, out, o)

        def codegen(context, builder, signature, args):
            def data(i):
                return context.make_array(signature.args[i])(context, builder, args[i]).data

            def unsigned(i):
                return context.cast(builder, args[i], signature.args[i], types.uintp)

            i32 = ir.IntType(32)
            floats4 = ir.VectorType(ir.FloatType(), 4)
            lanes = ir.VectorType(i32, 4)
            undef = ir.Constant(floats4, ir.Undefined)
            src = data(0)
            total = None
            for j in range(4):
                ptr = cgutils.pointer_add(builder, src, unsigned(1 + j), ir.VectorType(ir.IntType(8), 4).as_pointer())
                values = builder.sitofp(builder.zext(builder.load(ptr, align=1), lanes), floats4)
                weight = builder.insert_element(undef, args[5 + j], ir.Constant(i32, 0))
                weight = builder.shuffle_vector(weight, undef, ir.Constant(lanes, [0, 0, 0, 0]))
                term = builder.fmul(values, weight)
                total = term if total is None else builder.fadd(total, term)
            swapped = builder.shuffle_vector(total, undef, ir.Constant(lanes, [2, 1, 0, 3]))
            total = builder.select(context.cast(builder, args[9], signature.args[9], types.boolean), swapped, total)
            mean4 = builder.load(builder.bitcast(data(10), floats4.as_pointer()), align=4)
            o = unsigned(12)
            offset = builder.mul(o, ir.Constant(o.type, 4))  # bytes
            ptr = cgutils.pointer_add(builder, data(11), offset, floats4.as_pointer())
            builder.store(builder.fsub(total, mean4), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    @overload(_blend_rgb, inline="always")
    def _blend_rgb_compiled(s, k00, k01, k10, k11, w00, w01, w10, w11, bgr, mean, out, o):
        def impl(s, k00, k01, k10, k11, w00, w01, w10, w11, bgr, mean, out, o):
            blend4(s, k00, k01, k10, k11, w00, w01, w10, w11, bgr, mean, out, o)

        return impl


if not DISABLE_JIT:
    _register_blend()


# -- taps and weights of one output row -------------------------------------------------------------
@jit
def _coords_clamped(m, rr, flip_h, h, w, channels, constant, taps, weights):
    """Taps and weights of one output row for ``nearest`` and ``constant`` (vectorizes).

    For these two modes scipy's rule is a clamp: ``nearest`` clamps the coordinate to
    ``[0, n - 1]``; ``constant`` gives ``cval`` outside that range and, inside, never needs a tap
    beyond the edge (the clamped extra tap has weight zero). Coordinates are float32 here
    (rounding of about 1e-5 pixel at 224 pixels, 2e-4 at 3,000; the loop has no branch, so it
    runs eight columns at a time).

    Writes, per output column ``c`` (uint32): ``taps[0, c]`` the byte offset of the top-left tap
    in the flat image, ``taps[1, c]`` the offset to the row below (``w * channels``, or 0 at the
    edge), ``taps[2, c]`` the offset to the next column (``channels`` or 0), and ``weights[:, c]``
    the four bilinear weights.

    Returns:
        ``(c0, c1)``: the columns that sample the image are ``c0 .. c1`` (all of them for
        ``nearest``; for ``constant`` the others take ``cval``). They are contiguous: both
        coordinates are monotonic along the row (float32 rounding is monotonic), so each bound
        test holds on a prefix or a suffix of the row; ``c1 < c0`` when none does.
    """
    a00, a01, b0, a10, a11, b1 = m[0], m[1], m[2], m[3], m[4], m[5]
    y_start = rr * a00 + b0
    x_start = rr * a10 + b1
    y_step, x_step = a01, a11
    if flip_h:  # output column c reads the warped image at column w - 1 - c
        y_start += (w - 1) * a01
        x_start += (w - 1) * a11
        y_step, x_step = -a01, -a11
    ys = np.float32(y_start)
    xs = np.float32(x_start)
    dys = np.float32(y_step)
    dxs = np.float32(x_step)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    hm = np.float32(h - 1)
    wm = np.float32(w - 1)
    pixel = np.int32(channels)  # int32 throughout: int64 compares would halve the vector width
    line = np.int32(w * channels)
    last_row = np.int32(h - 1)
    last_col = np.int32(w - 1)
    zero32 = np.int32(0)
    lo = np.int32(w)
    hi = np.int32(-1)
    for c in range(w):
        cf = np.float32(c)
        yu = ys + cf * dys
        xu = xs + cf * dxs
        if constant:  # loop-invariant: compiled as two loops; min/max reductions that vectorize
            inside = (yu >= zero) & (yu <= hm) & (xu >= zero) & (xu <= wm)
            lo = min(lo, np.int32(c) if inside else np.int32(w))
            hi = max(hi, np.int32(c) if inside else np.int32(-1))
        y = min(max(yu, zero), hm)
        x = min(max(xu, zero), wm)
        iy = np.int32(y)
        ix = np.int32(x)
        fy = y - np.float32(iy)
        fx = x - np.float32(ix)
        w11 = fy * fx
        w10 = fy - w11
        w01 = fx - w11
        taps[0, c] = iy * line + ix * pixel
        taps[1, c] = line if iy < last_row else zero32
        taps[2, c] = pixel if ix < last_col else zero32
        weights[0, c] = (one - fy) - w01
        weights[1, c] = w01
        weights[2, c] = w10
        weights[3, c] = w11
    if constant:
        return lo, hi
    return 0, w - 1


@jit
def _coords_mapped(m, rr, flip_h, h, w, channels, mode, taps, weights):
    """:func:`_coords_clamped` for ``reflect`` and ``wrap`` (every column samples the image).

    Coordinates are double precision with scipy's formula. Interior pixels skip the edge rules;
    the others map their coordinates with :func:`map_coordinate` and clamp the taps (which
    reproduces scipy's edge samples). These two modes never give ``cval``.
    """
    a00, a01, b0, a10, a11, b1 = m[0], m[1], m[2], m[3], m[4], m[5]
    one = np.float32(1.0)
    ry = rr * a00
    rx = rr * a10
    first, step = (w - 1, -1) if flip_h else (0, 1)
    for c in range(w):
        cc = first + step * c
        y = (ry + cc * a01) + b0
        x = (rx + cc * a11) + b1
        if not (y >= 0.0 and x >= 0.0 and y < h - 1 and x < w - 1):
            y = map_coordinate(y, h, mode)
            x = map_coordinate(x, w, mode)
        fy0 = math.floor(y)
        fx0 = math.floor(x)
        iy = int(fy0)
        ix = int(fx0)
        y0 = min(max(iy, 0), h - 1)
        y1 = min(max(iy + 1, 0), h - 1)
        x0 = min(max(ix, 0), w - 1)
        x1 = min(max(ix + 1, 0), w - 1)
        fy = np.float32(y - fy0)
        fx = np.float32(x - fx0)
        w11 = fy * fx
        w10 = fy - w11
        w01 = fx - w11
        taps[0, c] = (y0 * w + x0) * channels
        taps[1, c] = (y1 - y0) * w * channels
        taps[2, c] = (x1 - x0) * channels
        weights[0, c] = (one - fy) - w01
        weights[1, c] = w01
        weights[2, c] = w10
        weights[3, c] = w11


# -- gathering one output row -----------------------------------------------------------------------
# Rows are addressed by their start in the flat output image: a view per row would cost two
# atomic reference-count updates per array per row (0.02-0.03 ms per 224x224 image, measured).
@jit
def _gather_rgb(s, out, start, taps, weights, c0, c1, bgr, mean):
    """Columns ``c0 .. c1`` of the output row at ``out[start:]`` (flat float32) from the RGB image
    ``s`` (flat uint8).

    One :func:`_blend_rgb` per column (``mean``: float32 (4,), zeros or the fused mean step). Its
    fourth input byte must exist: the caller gives an image followed by at least one byte. Its
    fourth output lane lands on the next column's first value, which that column then
    overwrites; the row's last column takes the scalar blend.
    """
    w = taps.shape[1]
    base = np.uint64(start)
    three = np.uint64(3)
    for ci in range(c0, min(c1 + 1, w - 1)):
        c = np.uint64(ci)
        k = np.uint64(taps[0, c])
        right = np.uint64(taps[2, c])
        below = k + np.uint64(taps[1, c])
        _blend_rgb(s, k, k + right, below, below + right, weights[0, c], weights[1, c], weights[2, c],
                   weights[3, c], bgr, mean, out, base + c * three)  # fmt: skip
    if c0 <= w - 1 <= c1:
        c = np.uint64(w - 1)
        k = np.uint64(taps[0, c])
        right = np.uint64(taps[2, c])
        below = k + np.uint64(taps[1, c])
        _blend_rgb_scalar(s, k, k + right, below, below + right, weights[0, c], weights[1, c], weights[2, c],
                          weights[3, c], bgr, mean, out, base + c * three)  # fmt: skip


@jit
def _gather_any(s, out, start, taps, weights, c0, c1, perm):
    """:func:`_gather_rgb` for any channel count and permutation (scalar; output channel ``j``
    reads source channel ``perm[j]``)."""
    channels = perm.shape[0]
    for ci in range(c0, c1 + 1):
        c = np.uint64(ci)
        k = np.uint64(taps[0, c])
        right = np.uint64(taps[2, c])
        below = k + np.uint64(taps[1, c])
        w00, w01, w10, w11 = weights[0, c], weights[1, c], weights[2, c], weights[3, c]
        o = np.uint64(start) + c * np.uint64(channels)
        for j in range(channels):
            p = np.uint64(perm[j])
            out[o + np.uint64(j)] = (
                np.float32(s[k + p]) * w00 + np.float32(s[k + right + p]) * w01
                + np.float32(s[below + p]) * w10 + np.float32(s[below + right + p]) * w11
            )  # fmt: skip


@jit
def _fill(out, start, lo, hi, values):
    """``out[start + k] = values[k]`` for ``k`` in ``lo .. hi - 1`` (a row of fill pixels)."""
    base = np.uint64(start)
    for k in range(lo, hi):
        out[base + np.uint64(k)] = values[k]


# -- normalization of one output row ----------------------------------------------------------------
_SCALE, _DIVISOR, _MEAN, _STD = 1, 2, 4, 8  # the steps a normalization takes (the others are skipped)


@jit
def _normalize_row(x, start, scale, divisor, mean, std, steps):
    """``Normalization.apply``'s float32 steps on the row ``x[start : start + len(mean)]``, in place.

    The row's values are already in output channel order; ``mean`` and ``std`` hold one value per
    element of the row (the channel values repeated); ``steps`` says which steps to take
    (:data:`_SCALE` ...). One loop per step: each vectorizes, divisions included.
    """
    n = mean.shape[0]
    base = np.uint64(start)
    if steps & _SCALE:
        for k in range(n):
            x[base + np.uint64(k)] *= scale
    if steps & _DIVISOR:
        for k in range(n):  # the divisor's zero check hoists out of the loop
            x[base + np.uint64(k)] /= divisor
    if steps & _MEAN:
        for k in range(n):
            x[base + np.uint64(k)] -= mean[k]
    if steps & _STD:
        row = x[start : start + n]
        row /= std  # an array operation: NumPy's semantics, no zero check per element, so it vectorizes


@jit
def _permute_row(x, start, n, perm):
    """Reorder the channels of the row ``x[start : start + n]`` in place: channel ``j`` becomes
    old channel ``perm[j]``."""
    channels = perm.shape[0]
    pixel = np.empty(channels, np.float32)
    for o in range(start, start + n, channels):
        for j in range(channels):
            pixel[j] = x[o + perm[j]]
        for j in range(channels):
            x[o + j] = pixel[j]


@jit
def _warp_rows(s, out, m, flip_h, flip_v, mode, cval, perm, rgb, fused, scale, divisor, mean, std, steps, taps,
               weights):  # fmt: skip
    """Bilinear warp of the flat uint8 image ``s`` into ``out`` (h, w, c), then normalization, row by row.

    Per output row: taps and weights (:func:`_coords_clamped` for ``nearest``/``constant``,
    :func:`_coords_mapped` otherwise), the gather of raw values from the uint8 image
    (:func:`_gather_rgb` when ``rgb``, subtracting ``fused``, else :func:`_gather_any`), ``cval``
    for the columns outside the image, then :func:`_normalize_row` while the row is still in L1.
    """
    h, w, channels = out.shape
    flat = out.reshape(h * w * channels)
    line = w * channels
    bgr = perm[0] != 0
    fill = np.empty(line, np.float32)  # a row of cval, with the fused mean step when there is one
    for k in range(line):
        fill[k] = np.float32(cval) - fused[k % channels]
    for r in range(h):
        rr = h - 1 - r if flip_v else r
        start = r * line
        if mode == 0 or mode == 1:
            c0, c1 = _coords_clamped(m, rr, flip_h, h, w, channels, mode == 0, taps, weights)
        else:
            _coords_mapped(m, rr, flip_h, h, w, channels, mode, taps, weights)
            c0, c1 = 0, w - 1
        if rgb:
            _gather_rgb(s, flat, start, taps, weights, c0, c1, bgr, fused)
        else:
            _gather_any(s, flat, start, taps, weights, c0, c1, perm)
        if c1 < c0:
            _fill(flat, start, 0, line, fill)
        else:
            _fill(flat, start, 0, c0 * channels, fill)
            _fill(flat, start, (c1 + 1) * channels, line, fill)
        _normalize_row(flat, start, scale, divisor, mean, std, steps)


@jit
def _warp_exact(buf, out, m, flip_h, flip_v, mode, fill, order):
    """The same warp with scipy's arithmetic: double-precision weights, scipy's summation order.

    Bit-identical to ``scipy.ndimage.affine_transform`` on float32 input (order 0 or 1). Used for
    raw images (brightness truncation would amplify float32 rounding) and for ``order=0``.
    """
    h, w, channels = out.shape
    a00, a01, b0, a10, a11, b1 = m[0], m[1], m[2], m[3], m[4], m[5]
    for r in range(h):
        rr = h - 1 - r if flip_v else r
        for c in range(w):
            cc = w - 1 - c if flip_h else c
            y = map_coordinate((rr * a00 + cc * a01) + b0, h, mode)
            x = map_coordinate((rr * a10 + cc * a11) + b1, w, mode)
            if y <= -1.0 or x <= -1.0:
                for ch in range(channels):
                    out[r, c, ch] = fill[ch]
                continue
            if order == 0:
                y0 = _clamp(int(math.floor(y + 0.5)), h)
                x0 = _clamp(int(math.floor(x + 0.5)), w)
                for ch in range(channels):
                    out[r, c, ch] = buf[y0, x0, ch]
                continue
            fy0 = math.floor(y)
            fx0 = math.floor(x)
            y0 = _clamp(int(fy0), h)
            y1 = _clamp(int(fy0) + 1, h)
            x0 = _clamp(int(fx0), w)
            x1 = _clamp(int(fx0) + 1, w)
            wy0 = 1.0 - (y - fy0)
            wy1 = 1.0 - wy0
            wx0 = 1.0 - (x - fx0)
            wx1 = 1.0 - wx0
            for ch in range(channels):
                t = (buf[y0, x0, ch] * wy0) * wx0
                t += (buf[y0, x1, ch] * wy0) * wx1
                t += (buf[y1, x0, ch] * wy1) * wx0
                t += (buf[y1, x1, ch] * wy1) * wx1
                out[r, c, ch] = t


@jit
def _finish_raw(out, shift, bright):
    """Keras' channel shift (if ``shift`` is not NaN), then brightness (if not NaN), in place."""
    h, w, channels = out.shape
    if not math.isnan(shift):
        lo = np.float32(np.inf)
        hi = np.float32(-np.inf)
        for r in range(h):
            for c in range(w):
                for ch in range(channels):
                    lo = min(lo, out[r, c, ch])
                    hi = max(hi, out[r, c, ch])
        s = np.float32(shift)
        for r in range(h):
            for c in range(w):
                for ch in range(channels):
                    out[r, c, ch] = min(max(np.float32(out[r, c, ch] + s), lo), hi)
    if not math.isnan(bright):
        b = np.float32(bright)
        for r in range(h):
            for c in range(w):
                for ch in range(channels):
                    q = np.float32(math.floor(min(max(out[r, c, ch], np.float32(0.0)), np.float32(255.0))))
                    out[r, c, ch] = np.float32(min(math.floor(b * q), 255.0))


@jit
def augment_batch(src, dst, mats, flips, shifts, brights, mode, cval, order, perm, scale, divisor, mean, std):
    """Warp, flip, shift, brighten and normalize a uint8 batch (up to 4 channels).

    Args:
        src: C-contiguous (n, h, w, c) uint8 images.
        dst: float32 buffer of at least (n, h, w, c); only ``dst[:n]`` is written.
        mats: (n, 6) float64 pull mappings ``[a00, a01, b0, a10, a11, b1]``: the input row is
            ``(r * a00 + c * a01) + b0`` and the input column ``(r * a10 + c * a11) + b1``.
        flips: (n, 2) flags ``[horizontal, vertical]``, applied after the warp.
        shifts: (n,) channel shift intensities, NaN for none.
        brights: (n,) brightness factors, NaN for none.
        mode: fill mode code (:data:`FILL_MODES`).
        cval: raw fill value for ``constant``.
        order: 1 bilinear, 0 nearest.
        perm: int64 (c,), the source channel of each output channel.
        scale, divisor: float32, :class:`fastfeat.preprocess.Normalization`'s first two steps.
        mean, std: float32 (c,) per output channel; ``std`` all ones when the normalization has none.

    The arguments after ``order`` are :func:`fastfeat.augment.normalization_args`. A step that is
    the identity (a scale or divisor of 1, a zero mean, a std of ones) is skipped, which changes
    no bit. Images with a channel shift or a brightness factor come out raw: RGB 0..255, not
    normalized.
    """
    n, h, w, channels = src.shape
    size = h * w * channels
    if size >= 2**31:
        raise ValueError("augment_batch: an image must have fewer than 2**31 values (byte offsets are int32)")
    for i in range(n):  # finite, bounded mappings keep every float32 coordinate finite, so the
        for j in range(6):  # clamps (and so every tap offset) stay inside the image
            if not abs(mats[i, j]) <= MAX_MAPPING:  # NaN fails too
                raise ValueError("augment_batch: every entry of `mats` must be finite and at most 2**24 in size")
    scale32 = np.float32(scale)
    divisor32 = np.float32(divisor)
    steps = 0
    if scale32 != 1.0:
        steps |= _SCALE
    if divisor32 != 1.0:
        steps |= _DIVISOR
    if np.any(mean != 0.0):
        steps |= _MEAN
    if np.any(std != 1.0):
        steps |= _STD
    mean_row = np.empty(w * channels, np.float32)  # the per-channel values repeated along a row
    std_row = np.empty(w * channels, np.float32)
    for c in range(w):
        for j in range(channels):
            mean_row[c * channels + j] = mean[j]
            std_row[c * channels + j] = std[j]
    # The vector blend reads one byte past each tap's pixel: the next image's first byte, or for
    # the last image a copy with a spare byte (150 KB at 224x224 RGB, once per batch).
    rgb = channels == 3 and perm[1] == 1 and (perm[0] == 0 and perm[2] == 2 or perm[0] == 2 and perm[2] == 0)
    fused = np.zeros(4, np.float32)  # a lone mean step (caffe) is taken by the RGB blend itself
    row_steps = steps
    if rgb and steps == _MEAN:
        fused[:3] = mean
        row_steps = 0
    flat = src.reshape(n * size)
    padded = np.zeros(size + 1 if rgb else 0, np.uint8)
    taps = np.empty((3, w), np.uint32)
    weights = np.empty((4, w), np.float32)
    buf = np.empty((h, w, 4), np.float32)
    raw_fill = np.full(channels, np.float32(cval))
    for i in range(n):
        flip_h, flip_v = flips[i, 0] != 0, flips[i, 1] != 0
        plain = math.isnan(shifts[i]) and math.isnan(brights[i])
        if plain and order == 1:
            if rgb and i == n - 1:
                padded[:size] = flat[i * size :]
                s = padded
            else:
                s = flat[i * size : (i + 1) * size + (1 if rgb else 0)]
            _warp_rows(s, dst[i], mats[i], flip_h, flip_v, mode, cval, perm, rgb, fused, scale32, divisor32, mean_row,
                       std_row, row_steps, taps, weights)  # fmt: skip
            continue
        _fill_raw(src[i], buf)
        _warp_exact(buf, dst[i], mats[i], flip_h, flip_v, mode, raw_fill, order)
        if plain:  # order 0: normalize the copied raw values
            image = dst[i].reshape(h * w * channels)
            for r in range(h):
                _permute_row(image, r * w * channels, w * channels, perm)
                _normalize_row(image, r * w * channels, scale32, divisor32, mean_row, std_row, steps)
        else:
            _finish_raw(dst[i], shifts[i], brights[i])


@jit
def augment_batch_raw(src, dst, mats, flips, shifts, brights, mode, cval, order):
    """:func:`augment_batch` for float (or uint8) images, without normalization (up to 4 channels)."""
    n, h, w, channels = src.shape
    buf = np.empty((h, w, 4), np.float32)
    raw_fill = np.full(channels, np.float32(cval))
    for i in range(n):
        _fill_raw(src[i], buf)
        _warp_exact(buf, dst[i], mats[i], flips[i, 0] != 0, flips[i, 1] != 0, mode, raw_fill, order)
        _finish_raw(dst[i], shifts[i], brights[i])
