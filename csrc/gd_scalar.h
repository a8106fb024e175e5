/*
 * gd_scalar.h: the "one element per pack" definitions of the macros that
 * gd_optimizers.inc computes with (V = T, GD_W = 1): the body is written per
 * element and GCC/clang vectorise its loops for the target of each build.
 * Included by gd_kernels.c (float32/float64) and gd_kernels16.c (16-bit
 * grads and state) before instantiating the bodies.
 *
 * Loads and stores go by the pointer's type (C11 _Generic, resolved at
 * compile time): a `uint16_t` pointer is a 16-bit grad or state, widened to
 * float on load with GD_WIDEN16 and narrowed to nearest on store with
 * GD_NARROW16 (gd_kernels16.c defines both per format); any other pointer
 * is read and written as is.  Native builds never see a 16-bit pointer, so
 * their code is exactly `*(ptr)` and `*(ptr) = value`.
 */
#ifndef GD_SCALAR_H
#define GD_SCALAR_H

#include <stdint.h>

#define V T
#define GD_W 1
#define GD_MASK_T int
#define GD_FULL 1
#define GD_TAIL_MASK(k) 1
#define GD_LOAD(ptr, mask)                                                    \
    _Generic((ptr), const uint16_t *: GD_WIDEN16(*(ptr)),                     \
             uint16_t *: GD_WIDEN16(*(ptr)), default: *(ptr))
#define GD_STORE(ptr, value, mask)                                            \
    _Generic((ptr), uint16_t *: (void)(*(ptr) = GD_NARROW16(value)),          \
             default: (void)(*(ptr) = (value)))
#define GD_MAX_NAN(a, b) (((a) != (a) || (a) > (b)) ? (a) : (b))
#define GD_GT(a, b) ((a) > (b))
#define GD_LT(a, b) ((a) < (b))
#define GD_EQ(a, b) ((a) == (b))
#define GD_BLEND(m, a, b) ((m) ? (a) : (b))
#define GD_SQRT_FAST(x) GD_SQRT(x)
#define GD_SPLIT_PERIOD 1
#define GD_SPLIT_FAST 0
/* params, grads and state in the element type, unless a 16-bit build says
 * otherwise */
#ifndef GD_PARAM_T
#define GD_PARAM_T T
#endif
#ifndef GD_GRAD_T
#define GD_GRAD_T T
#endif
#ifndef GD_STATE_T
#define GD_STATE_T T
#endif
/* (type-checked, never selected, in native builds) */
#ifndef GD_WIDEN16
#define GD_WIDEN16(h) ((T)(h))
#define GD_NARROW16(x) ((uint16_t)0)
#endif

#endif /* GD_SCALAR_H */
