"""XLA compiler options of the jitted steps, chosen by the same predicate as the ops.

Source: docs/performance.md, "YNNPACK fusions on XLA's CPU backend".
"""

from __future__ import annotations

import os

from jaxmim.ops.dispatch import form

__all__ = ['CPU_COMPILER_OPTIONS', 'compiler_options']

CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'}
"""XLA options of the jitted steps on a CPU mesh: YNNPACK fuses matrix products only, and XLA's
own loop fusions compile the element-wise and reduction work. XLA's default in jax 0.10 also
routes element-wise and reduction fusions through YNNPACK, which on the 2-core reference
machine makes the demo Swin's SimMIM step 1.3x slower (401 against 523 images/s, batch 128;
``docs/performance.md``). Numbers are unchanged up to float rounding. An explicit
``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` takes precedence."""


def compiler_options(platform: str) -> dict[str, str] | None:
    """The ``compiler_options`` of a jitted step traced for ``platform``: a copy of
    :data:`CPU_COMPILER_OPTIONS` where ``form('compiler_options', platform)`` is ``'fast'`` (CPU,
    without ``JAXMIM_PORTABLE_OPS``) unless ``XLA_FLAGS`` sets the option itself; None (XLA's
    defaults) otherwise.

    Raises:
      ValueError: a bad ``JAXMIM_PORTABLE_OPS`` or ``platform`` (:func:`jaxmim.ops.form`).
    """
    if form('compiler_options', platform) != 'fast':
        return None
    if any(k in os.environ.get('XLA_FLAGS', '') for k in CPU_COMPILER_OPTIONS):
        return None
    return dict(CPU_COMPILER_OPTIONS)
