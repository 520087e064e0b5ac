"""LLVM-level helpers for the Numba kernels: calling a C function by address, prefetching, a
full 64 x 64 -> 128-bit multiply, and reading an integer's bits as a float.

Numba has no way to call a C function whose address is known only at run time without baking that
address into the machine code (which stops the on-disk cache), and no prefetch. Both are a few
lines of LLVM IR:

- :func:`call_address` ``(address, *args)`` calls a ``void`` C function at an integer address
  (kernels/blas.py uses it for numpy's own CBLAS). Integers and floats are passed with their Numba
  types' widths, arrays as their data pointers.
- :func:`prefetch_row` ``(array, i)`` asks the CPU to start loading row ``i`` of a 2-D C array, one
  prefetch per 64-byte line. The uint8 batch gather reads rows scattered over a 47 MB dataset;
  prefetching rows a few iterations ahead overlaps their cache misses (bench/NOTES.md step 14).
- :func:`mulhilo64` ``(a, b)`` returns the high and low 64-bit words of the 128-bit product of two
  uint64 -- one ``mul`` instruction on x86-64, where Numba itself has no 128-bit integers. The
  Philox generator (kernels/cpu.py) multiplies this way 20 times per 8 random floats.
- :func:`float_from_bits` ``(bits)`` is the float whose IEEE-754 bits are the integer ``bits``
  (int32 -> float32, int64 -> float64): the exponent field written directly makes ``2**n`` one
  shift and one bitcast, which LLVM vectorises -- the scaling step of kernels/cpu.py's exp.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["call_address", "prefetch_row", "mulhilo64", "float_from_bits", "CACHE_LINE"]

#: Bytes per cache line on the x86-64 and arm64 CPUs we run on.
CACHE_LINE = 64

_I8P = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)


@intrinsic
def call_address(typingctx, address, *args):
    """``(*address)(*args)`` for a C function returning void."""
    args = args[0] if len(args) == 1 and isinstance(args[0], types.BaseTuple) else args
    sig = types.void(address, types.StarArgTuple.from_types(args))

    def codegen(context, builder, signature, llargs):
        addr, packed = llargs
        arg_types = signature.args[1].types
        c_args, c_types = [], []
        for i, ty in enumerate(arg_types):
            value = builder.extract_value(packed, i)
            if isinstance(ty, types.Array):
                data = context.make_array(ty)(context, builder, value).data
                c_args.append(builder.bitcast(data, _I8P))
                c_types.append(_I8P)
            else:
                c_args.append(value)
                c_types.append(context.get_value_type(ty))
        fnty = ir.FunctionType(ir.VoidType(), c_types)
        builder.call(builder.inttoptr(addr, fnty.as_pointer()), c_args)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_row(typingctx, array, row):
    """Prefetch (for reading, into every cache level) row ``row`` of the 2-D C array ``array``."""
    if not (isinstance(array, types.Array) and array.ndim == 2 and array.layout == "C"
            and isinstance(row, types.Integer)):
        return None
    sig = types.void(array, row)

    def codegen(context, builder, signature, llargs):
        aty, rty = signature.args
        ary = context.make_array(aty)(context, builder, llargs[0])
        i = context.cast(builder, llargs[1], rty, types.intp)
        zero = context.get_constant(types.intp, 0)
        start = builder.bitcast(cgutils.get_item_pointer(context, builder, aty, ary, [i, zero],
                                                         wraparound=False), _I8P)
        row_bytes = builder.mul(builder.extract_value(ary.shape, 1),
                                context.get_constant(types.intp, aty.dtype.bitwidth // 8))
        fnty = ir.FunctionType(ir.VoidType(), [_I8P, _I32, _I32, _I32])
        prefetch = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        read, keep_everywhere, data_cache = (ir.Constant(_I32, v) for v in (0, 3, 1))
        with cgutils.for_range_slice(builder, zero, row_bytes,
                                     context.get_constant(types.intp, CACHE_LINE)) as (off, _):
            builder.call(prefetch, [builder.gep(start, [off]), read, keep_everywhere, data_cache])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def mulhilo64(typingctx, a, b):
    """``(hi, lo)``: the 128-bit product of the uint64 ``a`` and ``b`` as two uint64 words."""
    if not (a == types.uint64 and b == types.uint64):
        return None
    sig = types.UniTuple(types.uint64, 2)(a, b)

    def codegen(context, builder, signature, llargs):
        i64, i128 = ir.IntType(64), ir.IntType(128)
        product = builder.mul(builder.zext(llargs[0], i128), builder.zext(llargs[1], i128))
        hi = builder.trunc(builder.lshr(product, ir.Constant(i128, 64)), i64)
        lo = builder.trunc(product, i64)
        return context.make_tuple(builder, signature.return_type, (hi, lo))

    return sig, codegen


@intrinsic
def float_from_bits(typingctx, bits):
    """The float whose IEEE-754 bit pattern is ``bits``: int32 -> float32, int64 -> float64."""
    if bits == types.int32:
        sig, lltype = types.float32(bits), ir.FloatType()
    elif bits == types.int64:
        sig, lltype = types.float64(bits), ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, llargs):
        return builder.bitcast(llargs[0], lltype)

    return sig, codegen
