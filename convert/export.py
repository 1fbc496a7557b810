r"""Export a jaxmim run as a PyTorch state_dict: a seed repository's layout, timm's or transformers'.

Usage::

    # the official layout of a seed repository (a conversion source)
    python -m convert.export --workdir=work/mae_pre --source=mae_vit --output=mae.pth [--step=N]
    # timm: a state_dict that timm.create_model(NAME, pretrained=False, **kwargs) loads strictly
    python -m convert.export --workdir=work/ft --format=timm --timm_model=swin_tiny_patch4_window7_224 \
        --output=swin.safetensors [--timm_kwargs='{"embed_dim": 64, "depths": [2, 2, 2], ...}']
    # transformers: a save_pretrained folder (model.safetensors + config.json), or one file
    python -m convert.export --workdir=work/ft --format=hf --hf_model=SwinForImageClassification --output=hf_swin

Reads ``<workdir>/config.json``, builds the run's model (the pre-training model for a
pre-training run, the classifier for a fine-tuning run), restores checkpoint ``--step`` (default:
the latest) and writes the state_dict in the layout chosen by ``--format``:

* ``official`` (default): the layout of ``--source`` (``python -c "from convert import official;
  print(official.list_sources())"``), as before.
* ``timm`` / ``hf``: the source of the library that lists ``--timm_model`` / ``--hf_model`` and
  describes the run's model (:func:`convert.official.library_source`). A library source may
  describe a pre-training model by its encoder (e.g. an MAE run as a timm ViT with
  ``num_classes=0``, as timm's own MAE weights): the decoder is not written (the summary names what
  was left out). For sources with a fixed architecture per name (timm), the run must be that
  architecture with the settings the library lets its user choose (timm: ``img_size``,
  ``num_classes``, ``window_size``, ``global_pool``, read from the run) and ``--timm_kwargs`` on
  top: otherwise one error lists every mismatched key and shape and nothing is written. The line
  to load the file in the library is printed last.

Output: a flat ``{key: torch.Tensor}`` dict with ``torch.save`` for ``.pth``, or a safetensors
file (metadata: source, library model and its creation arguments as JSON, run and step); for
``--format=hf`` a path without a checkpoint suffix is a ``save_pretrained`` folder
(``model.safetensors`` + ``config.json``). Prints one line per key (``key <- jaxmim variable
[collection, layout]  shape dtype``) and a summary. Non-finite tensors are refused unless
``--allow_nonfinite``. Every check (format flags, library model name, architecture, output suffix,
finiteness) runs before anything is written.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

__all__ = ['export_run', 'main']


def export_run(workdir: str, source: str | None, output: str, step: int | None = None, *,
               format: str = 'official', library_model: str | None = None,
               library_kwargs: Mapping[str, Any] | None = None, allow_nonfinite: bool = False,
               verbose: bool = True) -> dict[str, Any]:
    """Exports checkpoint ``step`` (None: latest) of run ``workdir`` to ``output``.

    Args:
      workdir: the jaxmim run directory.
      source: the conversion source (``format='official'``); None for a library format.
      output: ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` / ``.safetensors`` file; for
        ``format='hf'`` also a folder (any other path), written as ``model.safetensors`` +
        ``config.json``.
      format: ``'official'``, ``'timm'`` or ``'hf'``.
      library_model: timm model name / transformers class name (library formats).
      library_kwargs: further library creation arguments the file is made for (timm:
        ``timm.create_model`` keywords, e.g. a custom ``embed_dim``); checked against the run.

    Returns:
      ``{'source', 'step', 'output', 'format', 'num_tensors', 'num_values', 'keys', 'omitted',
      'library_kwargs', 'usage'}`` (``format`` is the file format, ``pth`` / ``safetensors`` /
      ``folder``).

    Raises:
      FileNotFoundError: no run config or checkpoint. KeyError: unknown source or library model
      (the accepted names listed). TypeError: the run's model is not a model of the source.
      ValueError: bad format arguments, an architecture that is not the named library model
      (every mismatched key and shape), an unknown output suffix, or NaN / inf values without
      ``allow_nonfinite``. Nothing is written when any is raised.
    """
    from jaxmim import rundir

    from convert import _cli, official

    src = _cli.source_for_format(format, source, library_model, library_kwargs)
    folder = format == 'hf' and not _cli.is_checkpoint_file(output)
    if not folder:
        _cli.file_format(output)   # unknown suffix: ValueError before the run is read
    config = rundir.load_run_config(workdir)
    model = rundir.build_model(config)
    create_kwargs: dict[str, Any] = {}
    if format == 'official':
        src.entries(model)   # fails early (TypeError) when the run's model is not one of this source
    else:
        src = official.library_source(format, library_model, model)
        official.check_architecture(model, src, library_model, library_kwargs)
        create_kwargs = official.library_create_kwargs(model, src, library_model, library_kwargs)
        if folder and src.library_config_fn is None:
            raise ValueError(f'source {src.name!r} writes no configuration file: give --output a file name '
                             f'({_cli.SAFETENSORS_SUFFIX} or .pth)')
    restored = rundir.restore_model(model, workdir, step)
    rows = official.describe(model, src)
    sd = official.state_dict(model, src)
    omitted = [official._path_str(e.path) for e in src.omitted(model)]
    _cli.check_finite(sd, f'run {workdir} step {restored}', allow_nonfinite)
    metadata = {'source': src.name, 'reference': src.reference, 'jaxmim_model': config.model.name,
                'jaxmim_step': restored}
    if format != 'official':
        metadata.update(library=format, library_model=library_model, library_kwargs=json.dumps(create_kwargs))
    if folder:
        _cli.write_pretrained_folder(sd, src.library_config_fn(model, library_model), output, metadata)
        fmt = 'folder'
    else:
        fmt = _cli.write_checkpoint(sd, output, metadata=metadata)
    usage = None
    if src.library_usage_fn is not None:
        usage = src.library_usage_fn(model, library_model, **create_kwargs)
    num_values = sum(math.prod(v.shape) for v in sd.values())
    if verbose:
        for line in _cli.mapping_lines(rows, '<-'):
            print(line)
        what = f'source {src.name}' if format == 'official' else f'{format} {library_model} (source {src.name})'
        print(f'exported {len(sd)} tensors ({num_values:,} values) of run {workdir} step {restored} '
              f'(model {config.model.name}) as {what} ({src.reference}) to {output} [{fmt}]')
        if omitted:
            print(f'not exported (not part of this layout): {len(omitted)} variables {omitted[:6]}'
                  f'{" ..." if len(omitted) > 6 else ""}')
        if usage:
            print(f'load it with: {usage}')
    return {'source': src.name, 'step': restored, 'output': output, 'format': fmt, 'num_tensors': len(sd),
            'num_values': num_values, 'keys': list(sd), 'omitted': omitted, 'library_kwargs': create_kwargs,
            'usage': usage}


def main(argv: list[str]) -> None:
    """absl main (flags: --workdir, --format, --source, --timm_model, --hf_model, --timm_kwargs,
    --output, --step, --allow_nonfinite)."""
    from convert import _cli

    def body(f: Any) -> None:
        fmt = _cli.resolve_format(f)
        export_run(f.workdir, fmt['source'], f.output, None if f.step < 0 else f.step, format=fmt['format'],
                   library_model=fmt['library_model'], library_kwargs=fmt['library_kwargs'],
                   allow_nonfinite=f.allow_nonfinite)

    _cli.run_main(argv, body)


def _define_flags() -> None:
    from absl import flags

    from convert import _cli
    flags.DEFINE_string('workdir', None, 'jaxmim run directory (config.json + checkpoints/).', required=True)
    _cli.define_format_flags()
    flags.DEFINE_string('output', None, 'output file, .pth (torch.save) or .safetensors; for --format=hf also '
                        'a save_pretrained folder (any other path).', required=True)
    flags.DEFINE_integer('step', -1, 'checkpoint step; -1: the latest.')
    flags.DEFINE_bool('allow_nonfinite', False, 'export a checkpoint holding NaN / inf values (refused '
                      'by default).')


if __name__ == '__main__':
    from absl import app
    _define_flags()
    app.run(main)
