"""The one seam for backend-specific code: every op with a fast form for one backend, next to
its portable reference form, and the one predicate that picks between them.

Model files, :mod:`jaxmim.layers` and :mod:`jaxmim.optim` call the dispatching ops below
(``sum_rows``, ``linear_apply``, ...); they never ask which backend they are on. Each op ``X``
has ``X_fast`` and ``X_portable``; ``X`` runs ``X_fast`` when :func:`form` says ``'fast'``:

* the platform the op is traced for is in ``FAST_PLATFORMS[X]`` (today ``('cpu',)`` for all):
  the innermost :func:`platform_scope`, else ``jax.default_backend()``. The train / eval steps
  (:func:`jaxmim.steps.make_trainer`, :func:`jaxmim.steps.make_eval_step`) and the benchmark's
  inference forward trace under ``platform_scope(mesh_platform(mesh))``, and
  :func:`jaxmim.mesh.step_compiler_options` asks the same predicate, so a CPU mesh on a GPU
  host takes the CPU forms and the CPU compiler options;
* and ``JAXMIM_PORTABLE_OPS`` is not set: ``JAXMIM_PORTABLE_OPS=1`` runs every op (and the step's
  compiler options) on the portable form, read when a step is traced;
* or the op is named in ``JAXMIM_FAST_OPS`` (``all`` or a comma-separated list; not
  ``compiler_options``): its fast form then runs on every platform, the switch for measuring a fast
  form where it is not yet known to help (the accelerator run's sixth group,
  ``launch/accelerator_bench.py``).

Where each fast form was measured to help (all on XLA's CPU backend, jax 0.10, the 2-core
reference machine; docs/performance.md). The one accelerator figure (H200, float32) predates
them, so on GPU / TPU they are unmeasured and the portable forms run there:

======================  =========================================================================
op                      fast form, and what it was measured to do
======================  =========================================================================
``sum_rows``            column sum as ``ones(1, M) @ a``: a ``(128, 8, 8, 256) -> (256,)`` bias
                        gradient took 4.2 ms on one core as XLA's ``reduce-window``; the demo
                        Swin step's ``reduce-window`` total fell from 37 to 10 ms ("Session 6")
``sum_squares``         Gram trace of ``a.reshape(4, -1)``: the norm of 54 M values shaped like
                        Swin-B's kernels 97 -> 26 ms on 2 cores; Swin-B's optimizer update
                        366 -> 130 ms on one core ("Session 7")
``linear_apply``        hand-written backward (one row contraction for ``dkernel``, transposed
                        from 2,048 rows when the layer narrows): demo Swin SimMIM step on one
                        core 300 -> 373 img/s; ``(8320, 512), (8320, 128) -> (512, 128)`` 19.8
                        -> 10.7 ms ("Session 6")
``layer_norm_last``     closed-form backward (two reductions where autodiff emits five):
                        ``(128, 8, 8, 256)`` forward + backward 16.2 -> 8.3 ms ("What was done
                        about each")
``gelu``                ``0.5 x (1 + erf(x / sqrt 2))`` instead of ``jax.nn.gelu``'s ``erfc``
                        form: ``(8192, 256)`` forward 2.37 -> 0.85 ms, forward + backward
                        3.26 -> 2.00 ms ("What was done about each")
``pointwise_conv``      a ``1 x 1`` convolution as ``linear_apply_fast``: SimMIM Swin-B decoder's
                        weight gradient was a ``6 x 6``-window convolution, 55.8 ms per step on
                        one core ("Session 7")
``compiler_options``    YNNPACK fuses matrix products only: demo Swin SimMIM step 401 -> 523
                        img/s at batch 128 on 2 cores ("YNNPACK fusions on XLA's CPU backend")
======================  =========================================================================

``attention`` (softmax attention plus an additive bias, :mod:`jaxmim.ops.softmax_attention`) is the one
op not gated by :data:`FAST_PLATFORMS`: its fast form is ``jax.nn.dot_product_attention``, with
XLA's implementation on every platform (the portable form's operations in JAX's layout) or, where
a model is built with ``attn_implementation='cudnn'``, cuDNN's fused kernel (GPU only);
``JAXMIM_PORTABLE_OPS=1`` and active attention dropout take the portable form.

Not an op: ``JAXMIM_MALLOC=tuned`` (:mod:`jaxmim.host`) is a host allocator setting, opt-in and
off by default, applied before JAX starts by the command-line entry points.
"""

from jaxmim.ops.activations import gelu, gelu_fast, gelu_portable
from jaxmim.ops.softmax_attention import (ATTN_IMPLEMENTATIONS, attention, attention_fast, attention_portable,
                                  check_attn_implementation, set_attn_implementation)
from jaxmim.ops.compiler import CPU_COMPILER_OPTIONS, compiler_options
from jaxmim.ops.dispatch import (FAST_OPS_ENV, FAST_PLATFORMS, FORMS, PORTABLE_ENV, current_platform, fast_forced,
                                 form, mesh_platform, platform_scope, portable_forced, traced_on)
from jaxmim.ops.linear import (SWAP_MIN_ROWS, linear_apply, linear_apply_fast, linear_apply_portable,
                               pointwise_conv, pointwise_conv_fast, pointwise_conv_portable)
from jaxmim.ops.norm import layer_norm_last, layer_norm_last_fast, layer_norm_last_portable
from jaxmim.ops.reductions import (GRAM_MIN_SIZE, GRAM_ROWS, sum_rows, sum_rows_fast, sum_rows_portable,
                                   sum_squares, sum_squares_fast, sum_squares_portable)

__all__ = [
    'FAST_PLATFORMS', 'FORMS', 'PORTABLE_ENV', 'FAST_OPS_ENV', 'current_platform', 'form', 'mesh_platform',
    'platform_scope', 'portable_forced', 'fast_forced', 'traced_on', 'CPU_COMPILER_OPTIONS', 'compiler_options',
    'sum_rows', 'sum_rows_fast', 'sum_rows_portable', 'sum_squares', 'sum_squares_fast', 'sum_squares_portable',
    'GRAM_ROWS', 'GRAM_MIN_SIZE', 'linear_apply', 'linear_apply_fast', 'linear_apply_portable', 'SWAP_MIN_ROWS',
    'pointwise_conv', 'pointwise_conv_fast', 'pointwise_conv_portable', 'layer_norm_last', 'layer_norm_last_fast',
    'layer_norm_last_portable', 'gelu', 'gelu_fast', 'gelu_portable', 'ATTN_IMPLEMENTATIONS', 'attention',
    'attention_fast', 'attention_portable', 'check_attn_implementation', 'set_attn_implementation',
]
