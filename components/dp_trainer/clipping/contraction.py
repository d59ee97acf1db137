"""Per-example gradients of a kernel used in one tensor contraction (shared by rules).

For ``z = einsum("{x},{w}->{z}", x, W)`` whose first letter in ``x`` and ``z`` is
the batch axis ``b`` (and not a letter of ``W``), example i's kernel gradient is

    G_i = einsum("{z},{x}->{w}", dz_i, x_i)

after summing ``x`` over the letters it alone has. Split the other letters into
positions ``p`` (in x and z, not in W), ``k`` (in x and W only), ``n`` (in z and W
only) and ``s`` (in x, z and W: e.g. the channel of a depthwise convolution), so
``G_i[k, n, s] = sum_p x_i[p, k, s] dz_i[p, n, s]``. Two ways to its squared norm:

* explicit (cost ``T |k| |n| |s|`` per example, ``T = |p|``): build every ``G_i``
  with one einsum; the clipped sum is ``sum_i c_i G_i``.
* ghost (cost ``|s| T^2 (|k| + |n|)``): ``||G_i||^2 = sum_{s,p,p'} <x_ip, x_ip'>_k
  <dz_ip, dz_ip'>_n`` from two Gram tensors; the clipped sum is
  ``einsum(c * dz, x)``, the product a normal backward pass does for W.

Dense (``bti,io->bto``) and Conv2D on patches (``bpd,df->bpf``) are the special cases
``s = {}``; their rules predate this module.
"""

from __future__ import annotations

import math
import string

import tensorflow as tf

from privacy_audit.components.dp_trainer.clipping import registry


def _size(letters, dims) -> float:
    sizes = [dims.get(letter) for letter in letters]
    return math.prod(sizes) if None not in sizes else float(1 << 40)


def kernel_grads(x: tf.Tensor, dz: tf.Tensor, x_spec: str, w_spec: str, z_spec: str,
                 options: registry.ClipOptions):
    """``(sq_norms [B], kernel_sum: c [B] -> sum_i c_i G_i)`` of the kernel of one contraction.

    Args:
      x: the contraction's input, letters ``x_spec`` (batch first).
      dz: dL/dz with one row per example, letters ``z_spec`` (batch first).
      x_spec, w_spec, z_spec: the einsum letters of input, kernel and output, each
        without repeats and without ellipsis.
      options: a :class:`registry.ClipOptions` (ghost or explicit, by cost).
    """
    batch = x_spec[0]
    alone = [a for a in x_spec if a not in w_spec and a not in z_spec]
    if alone:  # summed out of x before any product
        kept = "".join(a for a in x_spec if a not in alone)
        x, x_spec = tf.einsum(f"{x_spec}->{kept}", x), kept
    dims = dict(zip(x_spec, x.shape.as_list()))
    dims.update(zip(z_spec, dz.shape.as_list()))
    positions = "".join(a for a in x_spec if a in z_spec and a not in w_spec and a != batch)
    shared = "".join(a for a in w_spec if a in x_spec and a in z_spec)
    w_in = "".join(a for a in w_spec if a in x_spec and a not in shared)
    w_out = "".join(a for a in w_spec if a in z_spec and a not in shared)
    t = _size(positions, dims)
    ghost = registry.use_ghost(
        options, explicit_cost=t * _size(w_spec, dims),
        ghost_cost=_size(shared, dims) * t * t * (_size(w_in, dims) + _size(w_out, dims)))

    if ghost:
        used = set(x_spec + w_spec + z_spec)
        fresh = [a for a in string.ascii_letters if a not in used][:len(positions)]
        prime = str.maketrans(positions, "".join(fresh))
        pairs = f"{batch}{shared}{positions}{''.join(fresh)}"
        gram_x = tf.einsum(f"{x_spec},{x_spec.translate(prime)}->{pairs}", x, x)
        gram_g = tf.einsum(f"{z_spec},{z_spec.translate(prime)}->{pairs}", dz, dz)
        sq_norms = tf.reduce_sum(registry.flatten_rows(gram_x * gram_g), axis=1)

        def kernel_sum(c):
            return tf.einsum(f"{z_spec},{x_spec}->{w_spec}", registry.weighted_rows(c, dz), x)
    else:
        per_example = tf.einsum(f"{z_spec},{x_spec}->{batch}{w_spec}", dz, x)
        sq_norms = registry.sum_squares_rows(per_example)

        def kernel_sum(c):
            return tf.tensordot(tf.cast(c, per_example.dtype), per_example, axes=1)

    return sq_norms, kernel_sum
