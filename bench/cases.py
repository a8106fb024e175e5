"""What the benchmarks measure: optimizer settings, sizes, model shapes, and
the bytes each optimizer must move per element."""

from gdcore.family import FAMILY

# One representative setting per optimizer, from its declaration
# (gdcore/family.py: torch's defaults but for SGD, where momentum is what
# people run, and ASGD, whose averaging is on from step 2).
OPTIMIZERS = {decl.name: dict(decl.bench) for decl in FAMILY}


def _traffic(decl):
    """(arrays read, arrays written) per element by one step of the setting
    above: the param and grad, plus every state buffer the setting uses,
    read and written (ASGD with averaging on reads ax too).  Bytes per
    element = (reads + writes) * itemsize."""
    used = len(decl.state_in_use({**decl.defaults(), **decl.bench}))
    return 2 + used, 1 + used


TRAFFIC = {decl.name: _traffic(decl) for decl in FAMILY}
# The optimizers torch has no compiled CPU kernel for (and no other library
# either): their targets are against torch foreach.
UNFUSED = ["Adadelta", "Adamax", "ASGD", "NAdam", "RAdam", "Rprop"]

SIZES_QUICK = [4096, 65536, 1 << 20]
SIZES_FULL = [4096, 65536, 1 << 20, 1 << 24]
SIZE_HUGE = 1 << 26


def resnet18_shapes():
    """The 62 parameter tensors of torchvision's ResNet-18 (11,689,512
    parameters), in model.parameters() order."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for out_ch, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for block in range(2):
            first = block == 0
            cin = in_ch if first else out_ch
            shapes += [(out_ch, cin, 3, 3), (out_ch,), (out_ch,),
                       (out_ch, out_ch, 3, 3), (out_ch,), (out_ch,)]
            if first and (stride != 1 or cin != out_ch):
                shapes += [(out_ch, cin, 1, 1), (out_ch,), (out_ch,)]
        in_ch = out_ch
    shapes += [(1000, 512), (1000,)]
    return shapes


def transformer_block_shapes(d=768, ff=3072):
    """One BERT-base / GPT-2-small encoder block: attention q, k, v, out
    projections, two layer norms, the MLP (7,087,872 parameters)."""
    return [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (ff, d), (ff,), (d, ff), (d,),
            (d,), (d,)]


MANY_TENSOR_CASES = {
    "1000x1000": [(1000,)] * 1000,
    "resnet18": resnet18_shapes(),
    "transformer_block": transformer_block_shapes(),
}
