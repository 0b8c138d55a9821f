"""bitsandbytes (its CPU backend, from the .venv) against our NF4/FP4 quantization, byte for byte.

1. Golden vectors from bitsandbytes itself: for NF4 and FP4, blocksizes 32..4096, fp32/bf16/fp16 inputs, odd
   sizes (tail blocks, odd element counts, 1-D, rows that straddle blocks), exact codebook values and midpoints,
   +-0, huge, tiny and subnormal values, > 256 blocks (two and three nested blocks), `bitsandbytes.functional.
   quantize_4bit` with and without double quantization and its dequant are written in the format of
   tests/fixtures/nf4_vectors.json; the C++ golden test (`test_quant --gtest_filter=Nf4Golden/GoldenCase.*`,
   QLORA_QUANT_GOLDEN=<file>) then checks our packed codes, absmax, offset, dynamic map, 8-bit absmax, absmax2,
   restored absmax and dequant (every CPU path) against bitsandbytes' bytes, and our dequant of bitsandbytes' bytes
   against its dequant.
   Where bitsandbytes' CPU backend departs from its CUDA kernels (our reference), the golden takes CUDA's rule for
   those elements and prints each as a KNOWN DIFFERENCE with its values: a partial last block's codes (x / absmax
   on the CPU, x * (1 / absmax) on CUDA), 8-bit absmax codes that are not the nearest (its native CPU kernel), FP4
   code 8's zero sign after dequant, and its native CPU dequant for rows that are not whole blocks (wrong values;
   its own pure-PyTorch reference is taken). Every such element is checked to be exactly that case.
2. `qlora-quantize` folders (NF4 + double quant blocksize 64, and FP4 without double quant blocksize 128): every
   stored tensor of every projection equals `QuantState.as_dict(packed=True)` of bitsandbytes quantizing the same
   source weight (same reference rule), i.e. packed codes, absmax, quant_map, nested_absmax, nested_quant_map and
   the quant_state JSON bytes; bitsandbytes' dequant of our stored parts read back through `QuantState.from_dict`
   (as transformers does) equals its dequant of its own; the 16-bit tensors are copied unchanged; config.json's
   quantization_config says what was done.

Run by ctest as interop_hf_bnb_quant.
"""

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import interop_common as ic  # noqa: E402  (sets the offline environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from bitsandbytes.backends.default.ops import _dequantize_4bit_compute  # noqa: E402
from safetensors import safe_open  # noqa: E402

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def hex_of(t):
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes().hex()


def f32_list(t):
    return [float(v) for v in t.detach().float().cpu().reshape(-1).tolist()]


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def f32_bits(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def next_up(v):
    return float(np.nextafter(np.float32(v), np.float32(np.inf)))


def next_down(v):
    return float(np.nextafter(np.float32(v), np.float32(-np.inf)))


def midpoint_block(code):
    """One 64-element block with absmax exactly 1.0 (so normalized values equal the inputs): every code value, the
    fp32 midpoints between sorted neighbours (ties), and one ulp either side of each midpoint."""
    s = sorted(set(float(c) for c in code.tolist()))
    mids = [float(np.float32((np.float32(a) + np.float32(b)) / np.float32(2))) for a, b in zip(s[:-1], s[1:])]
    vals = s + mids + [next_up(m) for m in mids] + [next_down(m) for m in mids]
    vals = [1.0] + vals
    vals = (vals + [0.0] * 64)[:64] if len(vals) <= 64 else vals[:64]
    return vals


# ----------------------------------------------------------------------------------------------------------------
# The reference rule where bitsandbytes' CPU backend and its CUDA kernels disagree
#
# 4-bit codes: nearest codebook entry of s = x * (1 / absmax), an exact midpoint going to the lower entry
# (backends/default/ops.py quantize_4bit: torch.bucketize on the fp32 midpoints of the sorted codebook, remapped
# through argsort for FP4; kernels.cu dQuantizeNF4 compares against the same midpoints). The CPU backend computes
# s = x / absmax for a partial last block instead (`torch.clamp(A_flat[full:] / am, -1, 1)`), while CUDA
# (kQuantizeBlockwise: `smem_absmax_value[0] = 1.0f / local_abs_max`, then `vals[j] * local_abs_max`) and
# whole blocks everywhere use the reciprocal; the two can round to different sides of a midpoint.
# 8-bit absmax codes (double quantization): nearest entry of the dynamic map for s = v * (1 / absmax2), ties to
# the lower index (default backend quantize_blockwise: bucketize on midpoints; CUDA dQuantize<0>: binary search,
# then the nearer neighbour by midpoint). The CPU backend runs a native kernel (libbitsandbytes_cpu
# cquantize_blockwise_cpu_*) that sometimes returns a neighbour that is not the nearest.


def code_rule(code):
    """(bounds, order) of a codebook: the fp32 midpoints of the sorted entries and sorted -> code index."""
    c = np.asarray(code, dtype=np.float32)
    order = np.argsort(c, kind="stable")
    srt = c[order]
    return ((srt[:-1] + srt[1:]) / np.float32(2)).astype(np.float32), order


def nearest_code(rule, s):
    bounds, order = rule
    s = np.float32(min(1.0, max(-1.0, float(s))))
    return int(order[np.searchsorted(bounds, s, side="left")])


def tail_tie_block(am):
    """Values of a partial last block with absmax `am` on which x / am and x * (1 / am) take different NF4 codes."""
    f = np.float32
    rule = code_rule(F.get_4bit_type("nf4", device="cpu").numpy())
    inv = f(1) / f(am)
    out = [float(am)]
    for b in rule[0]:
        x0 = f(b * f(am))
        for d in range(-3, 4):
            x = x0
            for _ in range(abs(d)):
                x = np.nextafter(x, f(np.inf) if d > 0 else f(-np.inf))
            if abs(x) <= am and nearest_code(rule, f(x) * inv) != nearest_code(rule, f(x) / f(am)):
                out.append(float(x))
    return out


def reciprocal_tail_codes(name, qt, x, packed, absmax, bs, notes):
    """bitsandbytes' CPU bytes with the partial last block's codes recomputed with the reciprocal (see above). Every
    changed element must be one where x / absmax and x * (1 / absmax) take different codes; each is noted."""
    a = x.float().reshape(-1).numpy()
    n = a.size
    full = n - n % bs
    if full == n:
        return packed
    rule = code_rule(F.get_4bit_type(qt, device="cpu").numpy())
    flat = packed.reshape(-1).numpy()
    codes = np.empty(2 * flat.size, dtype=np.uint8)
    codes[0::2], codes[1::2] = flat >> 4, flat & 15
    am = np.float32(absmax[-1].item())
    inv = np.float32(1) / np.float32(max(am, np.float32(1e-38)))
    for i in range(full, n):
        ref = nearest_code(rule, np.float32(a[i]) * inv)
        cpu = nearest_code(rule, np.float32(a[i]) / max(am, np.float32(1e-38)))
        if int(codes[i]) != cpu:
            raise AssertionError(f"{name}[{i}]: bitsandbytes CPU code {codes[i]} is not the x / absmax code {cpu}")
        if ref != cpu:
            notes.append(f"4-bit tail element {i}: x={float(a[i])!r} absmax={float(am)!r}: "
                         f"x/absmax={float(np.float32(a[i]) / am)!r} -> code {cpu} (bnb CPU), "
                         f"x*(1/absmax)={float(np.float32(a[i]) * inv)!r} -> code {ref} (CUDA, ours)")
            codes[i] = ref
    return torch.from_numpy((codes[0::2] << 4) | codes[1::2]).reshape(packed.shape)


def nested_reference(name, centered, dyn_map, cpu_q8, cpu_absmax2, notes):
    """8-bit absmax codes and absmax2 by the reference rule; where bnb's CPU kernel differs, its code must be
    strictly farther from the value than ours (noted with values), and absmax2 must be equal."""
    v = centered.float().numpy()
    rule = code_rule(dyn_map.numpy())
    nb = -(-v.size // 256)
    q8 = np.empty(v.size, dtype=np.uint8)
    absmax2 = np.empty(nb, dtype=np.float32)
    for b in range(nb):
        blk = v[b * 256:(b + 1) * 256]  # reciprocal of the clamped absmax2, like quantize_4bit (no 0 * inf)
        absmax2[b] = np.abs(blk).max()
        inv = np.float32(1) / np.float32(max(absmax2[b], np.float32(1e-38)))
        for j, val in enumerate(blk):
            q8[b * 256 + j] = nearest_code(rule, np.float32(val) * inv)
    if absmax2.tobytes() != cpu_absmax2.float().numpy().tobytes():
        raise AssertionError(f"{name}: absmax2 {absmax2.tolist()} != bitsandbytes CPU {cpu_absmax2.tolist()}")
    cpu = cpu_q8.numpy()
    dm = dyn_map.numpy().astype(np.float64)
    for i in np.nonzero(cpu != q8)[0]:
        if absmax2[i // 256] == 0:  # every absmax of the block equals the offset: any code restores the same value
            notes.append(f"8-bit absmax {i}: absmax2 = 0 (0/0 in bnb's CPU kernel) -> bnb CPU code {cpu[i]}, "
                         f"reference {q8[i]} ({dm[q8[i]]!r}); both restore absmax = offset")
            continue
        s = float(np.float32(v[i]) * (np.float32(1) / np.float32(absmax2[i // 256])))
        d_ref, d_cpu = abs(s - dm[q8[i]]), abs(s - dm[cpu[i]])
        if not d_cpu > d_ref:
            raise AssertionError(f"{name}: absmax {i}: bnb CPU code {cpu[i]} is not farther than {q8[i]} from {s!r}")
        notes.append(f"8-bit absmax {i}: s={s!r} -> bnb CPU code {cpu[i]} ({float(dm[cpu[i]])!r}, distance "
                     f"{d_cpu:.4e}), nearest {q8[i]} ({float(dm[q8[i]])!r}, distance {d_ref:.4e})")
    return torch.from_numpy(q8), torch.from_numpy(absmax2)


def make_cases(g):
    """(name, quant_type, dtype key, blocksize, tensor, must_differ, nested) for every case."""
    cases = []

    def add(name, qt, dt, x, bs, must_differ=False, nested=True):
        cases.append((name, qt, dt, bs, x.to(DTYPES[dt]), must_differ, nested))

    for qt in ("nf4", "fp4"):
        code = F.get_4bit_type(qt, device="cpu")
        dts = ["F32", "BF16", "F16"]
        # Random normals over every blocksize: whole blocks, a tail block, odd element counts.
        for i, bs in enumerate(BLOCKSIZES):
            dt = dts[i % 3]
            rows = 3 if bs < 1024 else 2
            add(f"{qt}_randn_{dt}_{rows}x{bs}_bs{bs}", qt, dt, torch.randn(rows, bs, generator=g) * 0.05, bs)
            cols = bs // 2 + 3  # odd columns: blocks straddle rows, an odd element count, a partial last block
            add(f"{qt}_randn_{dt}_5x{cols}_bs{bs}_tail", qt, dts[(i + 1) % 3],
                torch.randn(5, cols, generator=g) * (10.0 ** float(i % 5 - 2)), bs)
        # Rows whose (even) length is not a multiple of the blocksize: blocks straddle rows.
        add(f"{qt}_randn_F32_16x160_rows_straddle_blocks", qt, "F32", torch.randn(16, 160, generator=g), 64)
        add(f"{qt}_randn_BF16_128x352_rows_straddle_blocks", qt, "BF16", torch.randn(128, 352, generator=g) * 0.02, 128)
        # 1-D, odd length; 300 blocks of 64 -> two nested blocks (the second partial).
        for dt in dts:
            add(f"{qt}_randn_{dt}_1001_1d", qt, dt, torch.randn(1001, generator=g), 64)
        add(f"{qt}_randn_F16_150x128_two_nested_blocks", qt, "F16", torch.randn(150, 128, generator=g) * 0.1, 64)
        add(f"{qt}_randn_BF16_600x129_bs128_three_nested_blocks", qt, "BF16",
            torch.randn(600, 129, generator=g) * 0.02, 128)
        # Heavy tails: a few large outliers per block (absmax set by one value, the rest small).
        x = torch.randn(64, 128, generator=g) * 0.01
        x[torch.rand(64, 128, generator=g) < 0.01] *= 300.0
        add(f"{qt}_outliers_F32_64x128", qt, "F32", x, 64)
        # Exact code values, midpoints and one ulp either side (ties -> lower index), in fp32 (exact).
        mb = torch.tensor(midpoint_block(code), dtype=torch.float32)
        add(f"{qt}_codes_and_midpoints_F32", qt, "F32", torch.stack([mb, -mb, mb * 0.5, -mb * 0.25]), 64)
        # Signed zeros: a block of +0, a block of -0, a block mixing +-0 with a few values, -0 next to tiny negatives.
        z = torch.zeros(4, 64)
        z[1] = -0.0
        z[2, ::2] = -0.0
        z[2, 1::8] = torch.randn(8, generator=g)
        z[3] = -torch.rand(64, generator=g) * 1e-3
        z[3, ::3] = -0.0
        z[3, 0] = 1.0
        for dt in dts:
            add(f"{qt}_signed_zeros_{dt}", qt, dt, z, 64)
        # Huge magnitudes. Near each dtype's maximum: plain quantization only (bitsandbytes' double-quant offset,
        # the fp32 mean of the absmax, overflows to inf there, on every backend); 1e30 / 3e4: with double quant too.
        near_max = {"F32": 3.0e38, "BF16": 3.0e38, "F16": 60000.0}
        large = {"F32": 1.0e30, "BF16": 1.0e30, "F16": 30000.0}
        for dt in dts:
            for tag, big, nested in (("near_max", near_max[dt], False), ("large", large[dt], True)):
                h = torch.randn(2, 64, generator=g).clamp(-1, 1) * big
                h[0, 5] = big
                h[1, 7] = -big * 0.75
                add(f"{qt}_huge_{tag}_{dt}", qt, dt, h, 64, nested=nested)
        # Tiny and subnormal values: a normal-range block that holds subnormals, and blocks whose absmax itself is
        # subnormal (below bitsandbytes' 1e-38 clamp of the absmax before the reciprocal).
        t = torch.randn(4, 64, generator=g)
        t[0] *= 1e-30
        t[1] = t[1] * 1e-39  # fp32 subnormals, absmax < 1e-38
        t[2] = torch.tensor([f32_bits(k) for k in range(1, 65)]) * torch.where(torch.arange(64) % 2 == 0, 1.0, -1.0)
        t[3] = torch.randn(64, generator=g) * 1e-3
        t[3, :8] = 1e-42
        add(f"{qt}_tiny_subnormal_F32", qt, "F32", t, 64)
        ts = torch.randn(3, 64, generator=g)
        ts[0] *= 1e-39  # bf16 subnormals
        ts[1] *= 1e-36
        ts[2, ::2] = 1e-40
        add(f"{qt}_tiny_subnormal_BF16", qt, "BF16", ts, 64)
        th = torch.randn(3, 64, generator=g)
        th[0] *= 1e-6  # fp16 subnormals (below 6.1e-5)
        th[1] *= 1e-7
        th[2, ::2] = 6e-8  # smallest fp16 subnormal
        add(f"{qt}_tiny_subnormal_F16", qt, "F16", th, 64)
    # A partial last block (absmax 3.0) made of values on which bitsandbytes' CPU backend and CUDA disagree: the
    # golden takes CUDA's codes for them (see golden_case), the rest of the case is bitsandbytes' CPU output.
    tail = tail_tie_block(3.0)
    head = torch.randn(2 * 64, generator=g)
    add("nf4_tail_block_reciprocal_ties_F32", "nf4", "F32", torch.cat([head, torch.tensor(tail)]), 64, must_differ=True)
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Golden file from bitsandbytes


def fp4_negative_zeros(qt, packed, deq, absmax, bs, notes):
    """FP4 code 8 is -0. CUDA dequantizes it as sign * LUT * absmax (kernels.cu dDequantizeFP4Tree), -0.0 for a
    positive absmax (+0.0 for a negative restored absmax), and so does bitsandbytes' scalar CPU code; but its CPU
    dequant also returns the opposite zero (its default-backend fallback, used for an odd last dimension and for
    blocksize >= 2048 on AVX-512 machines, indexes get_4bit_type("fp4"), whose entry 8 is +0.0 because the table's
    `-0` is a Python int; its vectorized native kernel too). Returns deq with CUDA's zero there, as ours (noted)."""
    if qt != "fp4":
        return deq
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[:deq.numel()]
    d = deq.reshape(-1)
    scale = absmax.float().repeat_interleave(bs)[:d.numel()]
    want_negative = ~torch.signbit(scale)  # (-0.0) * absmax
    mask = (codes == 8) & (d == 0) & (torch.signbit(d) != want_negative)
    if bool(mask.any()):
        d = d.clone()
        d[mask] = torch.where(want_negative[mask], -0.0, 0.0).to(d.dtype)
        notes.append(f"{int(mask.sum())} FP4 code-8 elements dequantized to the other zero by bnb's CPU backend "
                     "(CUDA's -0.0 * absmax taken)")
    return d.reshape(deq.shape)


def bnb_dequant(name, qt, packed, absmax, bs, shape, dtype, notes):
    """bitsandbytes' dequant of (packed, fp32 absmax): its pure-PyTorch reference (backends/default/ops.py
    _dequantize_4bit_compute: code[nibble] * absmax in fp32, then the cast), cross-checked against what its CPU
    backend dispatches to (F.dequantize_4bit: a native kernel for an even last dimension). Where the two disagree
    (beyond FP4's signed zero, see fp4_negative_zeros) the native kernel is wrong and the reference is taken (noted):
    bitsandbytes 0.50.2's native CPU dequant returns wrong values when there is more than one row and the row
    length is not a multiple of the blocksize (e.g. [2, 96] or [16, 160] with blocksize 64)."""
    code = F.get_4bit_type(qt, device="cpu")
    ref = _dequantize_4bit_compute(packed.reshape(-1), absmax.float(), code, bs, shape, dtype)
    qs = F.QuantState(absmax=absmax.float(), shape=torch.Size(shape), dtype=dtype, blocksize=bs, code=code,
                      quant_type=qt)
    cpu = F.dequantize_4bit(packed, qs)
    wrong = (cpu.float() != ref.float()) & ~((cpu.float() == 0) & (ref.float() == 0))
    if bool(wrong.any()):
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        if not (rows > 1 and shape[-1] % bs != 0):
            raise AssertionError(f"{name}: bitsandbytes' CPU dequant differs from its reference outside the known "
                                 f"case (rows that are not whole blocks): shape {shape}, blocksize {bs}")
        i = int(wrong.reshape(-1).nonzero()[0])
        notes.append(f"bnb CPU dequantize_4bit (native kernel) gives {int(wrong.sum())} of {wrong.numel()} values "
                     f"unlike its reference _dequantize_4bit_compute, e.g. element {i}: "
                     f"{float(cpu.reshape(-1)[i])!r} vs {float(ref.reshape(-1)[i])!r} (reference taken)")
    return ref


def golden_case(name, qt, dt, bs, x, must_differ=False, nested=True):
    """One case in the nf4_vectors.json layout: bitsandbytes' bytes and dequant, with the reference rule (above)
    where its CPU backend departs from CUDA; every such element is listed in the case's "notes"."""
    shape = list(x.shape)
    notes = []
    packed, qs = F.quantize_4bit(x, blocksize=bs, compress_statistics=False, quant_type=qt)
    packed_n, qs_n = F.quantize_4bit(x, blocksize=bs, compress_statistics=True, quant_type=qt)
    if not torch.equal(packed, packed_n):
        raise AssertionError(f"{name}: bitsandbytes packs different codes with and without double quantization")
    packed = reciprocal_tail_codes(name, qt, x, packed, qs.absmax, bs, notes)
    if must_differ and not notes:
        raise AssertionError(f"{name}: the case was made to hold values where bnb CPU and CUDA codes differ")
    case = {
        "name": name,
        "note": "",
        "quant_type": qt,
        "dtype": dt,
        "shape": shape,
        "blocksize": bs,
        "nested": nested,
        "input_hex": hex_of(x),
        "packed_hex": hex_of(packed),
        "code_hex": hex_of(qs.code.float()),
        "absmax_fp32": f32_list(qs.absmax),
        # bitsandbytes' dequant of these bytes in fp32 (the format's dequant_plain_fp32)
        "dequant_plain_fp32_hex": hex_of(fp4_negative_zeros(
            qt, packed, bnb_dequant(name, qt, packed, qs.absmax, bs, shape, torch.float32, notes), qs.absmax, bs,
            notes)),
    }
    if nested:
        # bitsandbytes' offset (torch mean) and dynamic map, the reference 8-bit codes, bitsandbytes' dequant of them
        # in the input dtype, and the restored absmax that dequantize_4bit computes first.
        offset = qs_n.offset
        if not torch.equal(offset, qs.absmax.mean()):
            raise AssertionError(f"{name}: offset {offset} is not the mean of the absmax")
        q8, absmax2 = nested_reference(name, qs.absmax - offset, qs_n.state2.code, qs_n.absmax, qs_n.state2.absmax,
                                       notes)
        state2 = F.QuantState(absmax=absmax2, code=qs_n.state2.code, blocksize=256, dtype=torch.float32)
        restored = F.dequantize_blockwise(q8, state2) + offset
        case.update({
            "absmax_mean_offset": float(offset.item()),
            "absmax_q8_hex": hex_of(q8),
            "absmax2_fp32": f32_list(absmax2),
            "nested_code_hex": hex_of(qs_n.state2.code.float()),
            "absmax_restored_fp32": f32_list(restored),
            "dequant_nested_in_input_dtype_hex": hex_of(fp4_negative_zeros(
                qt, packed, bnb_dequant(name, qt, packed, restored, bs, shape, x.dtype, notes), restored, bs, notes)),
        })
    for line in notes:
        print(f"  KNOWN DIFFERENCE {name}: {line}", flush=True)
    case["note"] = "; ".join(notes)
    return case


def run_golden(args, checks):
    g = torch.Generator().manual_seed(20240611)
    cases = [golden_case(*c) for c in make_cases(g)]
    path = args.work_dir / "bnb_vectors.json"
    doc = {
        "format": "tests/fixtures/nf4_vectors.json layout; written by tests/interop_hf/check_bnb_quant.py from "
                  "bitsandbytes " + F.__name__.split(".")[0] + " " + __import__("bitsandbytes").__version__,
        "nf4_code_hex": hex_of(F.get_4bit_type("nf4", device="cpu")),
        "dynamic_map_signed_hex": hex_of(F.create_dynamic_map(signed=True)),
        "cases": cases,
    }
    ic.write_json(path, doc)
    print(f"wrote {len(cases)} cases ({sum(np.prod(c['shape']) for c in cases)} elements) to {path}", flush=True)
    report = args.work_dir / "test_quant_golden.json"
    rc_ok = True
    try:
        ic.run([args.test_quant, "--gtest_filter=Nf4Golden/GoldenCase.*", f"--gtest_output=json:{report}"],
               env={"QLORA_QUANT_GOLDEN": str(path)})
    except RuntimeError as e:
        rc_ok = False
        print(str(e)[-4000:])
    results = {}  # case index -> failure messages
    if report.exists():
        for suite in ic.read_json(report).get("testsuites", []):
            for t in suite.get("testsuite", []):
                if "GoldenCase" in suite.get("name", "") and "/" in t.get("name", ""):
                    results[int(t["name"].rsplit("/", 1)[1])] = [f["failure"] for f in t.get("failures", [])]
    for i, c in enumerate(cases):
        msgs = results.get(i)
        detail = "not run" if msgs is None else " | ".join(" ".join(m.split()[1:])[:260] for m in msgs[:8])
        checks.check(msgs == [], f"golden {i:3d} {c['name']} ({c['dtype']}, shape {c['shape']}, "
                                 f"blocksize {c['blocksize']})", detail)
    checks.check(rc_ok and len(results) == len(cases), "test_quant golden run",
                 f"{len(results)} of {len(cases)} cases ran" + ("" if rc_ok else "; test_quant exited non-zero"))


# ----------------------------------------------------------------------------------------------------------------
# qlora-quantize folders


def reference_quantize(name, w, qt, bs, double_quant, notes):
    """bitsandbytes' quantize_4bit of w, with the reference rule where its CPU backend departs from CUDA (see above):
    (packed, QuantState) as transformers would save them."""
    packed, qs = F.quantize_4bit(w, blocksize=bs, compress_statistics=False, quant_type=qt)
    packed = reciprocal_tail_codes(name, qt, w, packed, qs.absmax, bs, notes)
    if not double_quant:
        return packed, qs
    _, qs_n = F.quantize_4bit(w, blocksize=bs, compress_statistics=True, quant_type=qt)
    q8, absmax2 = nested_reference(name, qs.absmax - qs_n.offset, qs_n.state2.code, qs_n.absmax, qs_n.state2.absmax,
                                   notes)
    state2 = F.QuantState(absmax=absmax2, code=qs_n.state2.code, blocksize=256, dtype=torch.float32)
    return packed, F.QuantState(absmax=q8, shape=qs.shape, dtype=w.dtype, blocksize=bs, code=qs.code, quant_type=qt,
                                offset=qs_n.offset, state2=state2)


def load_folder(folder):
    tensors = {}
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors files")
    for f in files:
        with safe_open(f, framework="pt") as st:
            for k in st.keys():
                tensors[k] = st.get_tensor(k)
    return tensors


def check_quantized_folder(args, checks, qt, bs, double_quant):
    src = args.tiny
    out = args.work_dir / f"tiny-{qt}-bs{bs}{'-dq' if double_quant else ''}"
    cmd = [ic.app(args.bin_dir, "qlora-quantize"), "--in", src, "--out", out, "--quant", qt, "--blocksize", bs]
    if not double_quant:
        cmd.append("--no-double-quant")
    ic.run(cmd)
    tag = f"qlora-quantize {qt} blocksize {bs}{' +dq' if double_quant else ''}"
    source = load_folder(src)
    ours = load_folder(out)
    projections = [k for k in source if k.endswith(".weight") and k.split(".")[-2] in ic.LLAMA_PROJECTIONS]
    checks.check(len(projections) > 0, f"{tag}: source has projections", f"{len(projections)}")
    expected_keys = set()
    mismatches = []
    deq_mismatches = []
    notes = []
    for key in sorted(projections):
        w = source[key]
        packed, qs = reference_quantize(key, w, qt, bs, double_quant, notes)
        want = {key: packed}
        want.update({f"{key}.{k}": v for k, v in qs.as_dict(packed=True).items()})
        expected_keys.update(want)
        for k, v in want.items():
            if k not in ours:
                mismatches.append(f"{k} missing")
                continue
            got = ours[k]
            if got.dtype != v.dtype or list(got.shape) != list(v.shape):
                mismatches.append(f"{k}: {got.dtype} {list(got.shape)} vs bnb {v.dtype} {list(v.shape)}")
            elif hex_of(got) != hex_of(v):
                n_bad = int((got.contiguous().view(torch.uint8) != v.contiguous().view(torch.uint8)).sum())
                detail = ""
                if "quant_state" in k:
                    detail = f" ours {bytes(got.tolist()).decode()!r} bnb {bytes(v.tolist()).decode()!r}"
                mismatches.append(f"{k}: {n_bad} bytes differ{detail}")
        # bnb's dequant of our stored parts, read back the way transformers does (QuantState.from_dict).
        parts = {k[len(key) + 1:]: ours[k] for k in ours if k.startswith(key + ".")}
        try:
            qs_ours = F.QuantState.from_dict(parts, device=torch.device("cpu"))
            got = F.dequantize_4bit(ours[key], qs_ours)
            ref = F.dequantize_4bit(packed, qs)
            if got.dtype != ref.dtype or hex_of(got) != hex_of(ref):
                deq_mismatches.append(f"{key}: {int((got.float() != ref.float()).sum())} values differ")
        except Exception as e:  # noqa: BLE001 - a folder bnb cannot read is a failure
            deq_mismatches.append(f"{key}: QuantState.from_dict failed: {e}")
    for line in notes:
        print(f"  KNOWN DIFFERENCE {tag}: {line}", flush=True)
    by_part = {}  # ".absmax" -> mismatch lines of that part, over all projections
    for m in mismatches:
        part = m.split(":")[0].split(" ")[0]
        part = part[part.index(".weight"):] if ".weight" in part else part
        by_part.setdefault(part, []).append(m)
    summary = "; ".join(f"{part} differs in {len(v)} projections (e.g. {v[0]})" for part, v in by_part.items())
    checks.check(not mismatches, f"{tag}: stored quantized tensors equal bnb's QuantState.as_dict(packed=True) bytes "
                                 f"({len(projections)} projections; {len(notes)} known bnb-CPU differences taken "
                                 "from the reference rule)", summary)
    checks.check(not deq_mismatches, f"{tag}: bnb dequantize_4bit of our stored parts equals bnb's own",
                 "; ".join(deq_mismatches[:6]))
    dense = [k for k in source if k not in projections]
    dense_bad = [k for k in dense if k not in ours or ours[k].dtype != source[k].dtype or
                 hex_of(ours[k]) != hex_of(source[k])]
    checks.check(not dense_bad, f"{tag}: {len(dense)} unquantized tensors copied bit for bit", ", ".join(dense_bad[:6]))
    extra = sorted(set(ours) - expected_keys - set(dense))
    checks.check(not extra, f"{tag}: no unexpected tensors", ", ".join(extra[:6]))
    cfg = ic.read_json(out / "config.json").get("quantization_config", {})
    want_cfg = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": qt,
                "bnb_4bit_use_double_quant": double_quant}
    bad_cfg = {k: cfg.get(k) for k, v in want_cfg.items() if cfg.get(k) != v}
    checks.check(not bad_cfg, f"{tag}: config.json quantization_config",
                 f"differs: {bad_cfg} (want {want_cfg})" if bad_cfg else "")


def main():
    args = ic.parse_args(lambda p: p.add_argument("--test-quant", required=True, type=Path,
                                                  help="the built test_quant GoogleTest binary"))
    checks = ic.Checks("bitsandbytes interop")
    if not args.test_quant.exists():
        raise FileNotFoundError(f"{args.test_quant} is missing\nHINT: cmake --build build --target test_quant")
    run_golden(args, checks)
    if args.tiny is None:
        raise ValueError("--tiny is required (the qlora-make-tiny model)")
    check_quantized_folder(args, checks, "nf4", 64, True)
    check_quantized_folder(args, checks, "fp4", 128, False)
    return checks.report()


if __name__ == "__main__":
    ic.main_guard(main)
