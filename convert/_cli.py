"""Shared pieces of the conversion command-line tools (``convert.export``, ``convert.import``).

Reading and writing official checkpoint files (``.pth`` / ``.pt`` / ``.bin`` through ``torch``,
``.safetensors`` through ``safetensors``) and printing the key mapping. Private to the
:mod:`convert` package (not a model family: :mod:`convert.official` skips ``_`` modules).
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np

PTH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt')
"""File suffixes read and written with ``torch.load`` / ``torch.save``."""
SAFETENSORS_SUFFIX = '.safetensors'


def file_format(path: str) -> str:
    """``'pth'`` or ``'safetensors'`` from the file suffix.

    Raises:
      ValueError: another suffix.
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix in PTH_SUFFIXES:
        return 'pth'
    if suffix == SAFETENSORS_SUFFIX:
        return 'safetensors'
    raise ValueError(f'{path}: unknown checkpoint format {suffix!r}; use one of '
                     f'{list(PTH_SUFFIXES) + [SAFETENSORS_SUFFIX]}')


def read_checkpoint(path: str, *, allow_pickle: bool = False) -> Mapping[str, Any]:
    """Reads an official checkpoint file into a mapping of tensors (possibly a container such as
    ``{'model': state_dict, 'optimizer': ...}``; :func:`convert.official.unwrap_state_dict`
    unwraps it).

    ``.pth``: ``torch.load(map_location='cpu', weights_only=True)``; checkpoints that pickle other
    objects (MAE's ``args`` Namespace) need ``allow_pickle=True`` (``weights_only=False``: runs
    code from the file, so only for trusted files). ``.safetensors``: ``safetensors.torch.load_file``.

    Raises:
      FileNotFoundError: no such file. ValueError: unknown suffix, or a pickled object refused
        without ``allow_pickle`` (the message says how to allow it).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    fmt = file_format(path)
    if fmt == 'safetensors':
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    import torch
    try:
        return torch.load(path, map_location='cpu', weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        raise ValueError(f'{path}: torch.load(weights_only=True) refused an object in the file ({err}). '
                         'If you trust the file, pass --allow_pickle.') from err


def write_checkpoint(state_dict: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None) -> str:
    """Writes ``{key: np.ndarray}`` (official order kept) and returns the format written.

    ``.pth`` (or ``.pt`` / ``.bin`` / ``.ckpt``): ``torch.save`` of a flat ``{key: torch.Tensor}``
    dict, loadable with ``torch.load(path, weights_only=True)``. ``.safetensors``:
    ``safetensors.numpy.save_file`` with ``metadata`` (string values; ``format='pt'`` is added).

    Raises:
      ValueError: unknown suffix.
    """
    fmt = file_format(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == 'safetensors':
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path,
                  metadata={'format': 'pt', **{str(k): str(v) for k, v in (metadata or {}).items()}})
    else:
        import torch
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, path)
    return fmt


def check_finite(tensors: Mapping[str, Any], what: str, allow: bool) -> list[str]:
    """The keys of ``tensors`` (``{key: np.ndarray | torch.Tensor}``; other values ignored) that
    hold NaN or infinite values; an error unless ``allow``.

    Raises:
      ValueError: non-finite floating-point tensors and ``allow`` is False; names up to 8 keys,
        the count, and ``--allow_nonfinite``.
    """
    bad = []
    for key, value in tensors.items():
        if hasattr(value, 'detach'):          # torch.Tensor
            value = value.detach().cpu().float().numpy() if value.is_floating_point() else None
        if value is None or not hasattr(value, 'dtype'):
            continue
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == 'bfloat16':
            if not np.all(np.isfinite(arr.astype(np.float32))):
                bad.append(key)
    if bad and not allow:
        raise ValueError(f'{what} holds non-finite (NaN / inf) values in {len(bad)} tensors: {bad[:8]}'
                         f'{" ..." if len(bad) > 8 else ""}; a diverged or damaged checkpoint? Pass '
                         '--allow_nonfinite to convert it anyway')
    return bad


def mapping_lines(rows: Sequence[tuple[str, str, tuple[int, ...], str]], arrow: str) -> list[str]:
    """One aligned line per :func:`convert.official.describe` row:
    ``<official key> <arrow> <jaxmim side>  <shape> <dtype>``."""
    width = max((len(r[0]) for r in rows), default=0)
    side_width = max((len(r[1]) for r in rows), default=0)
    return [f'{key:<{width}} {arrow} {side:<{side_width}}  {tuple(shape)} {dtype}'
            for key, side, shape, dtype in rows]


def fail(err: BaseException) -> None:
    """Prints ``error: <message>`` (a KeyError's message unquoted) to stderr and exits with status 1."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    print(f'error: {msg}', file=sys.stderr)
    sys.exit(1)


FORMATS = ('official', 'timm', 'hf')
"""``--format`` values: the seed repositories' layouts (a ``--source``), timm (``--timm_model``),
transformers (``--hf_model``); the library ones are :data:`convert.official.LIBRARIES`."""

LIBRARY_MODEL_FLAGS = {'timm': 'timm_model', 'hf': 'hf_model'}
"""The flag naming the library model of each library format."""

HF_WEIGHTS = 'model.safetensors'
HF_CONFIG = 'config.json'
"""File names of a transformers ``save_pretrained`` folder (``transformers.utils.SAFE_WEIGHTS_NAME``
/ ``CONFIG_NAME``)."""


def define_format_flags() -> None:
    """Defines ``--format`` (official / timm / hf), ``--source`` (official), ``--timm_model``,
    ``--hf_model`` and ``--timm_kwargs`` (JSON object of ``timm.create_model`` arguments)."""
    from absl import flags
    flags.DEFINE_enum('format', 'official', list(FORMATS), 'layout: official (a seed repository, '
                      'needs --source), timm (needs --timm_model) or hf (transformers, needs --hf_model).')
    flags.DEFINE_string('source', None, 'official source (--format=official), e.g. mae_vit, mae_vit_cls, '
                        'simmim_swin, simmim_swin_pretrain.')
    flags.DEFINE_string('timm_model', None, 'timm model name (--format=timm), e.g. swin_tiny_patch4_window7_224.')
    flags.DEFINE_string('hf_model', None, 'transformers class name (--format=hf), e.g. SwinForImageClassification.')
    flags.DEFINE_string('timm_kwargs', None, 'JSON object of further timm.create_model arguments the file is '
                        'made for (--format=timm), e.g. \'{"embed_dim": 64, "depths": [2, 2, 2]}\'.')


def resolve_format(f: Any) -> dict[str, Any]:
    """The layout chosen by the parsed flags ``f`` (see :func:`define_format_flags`):
    ``{'format', 'source', 'library_model', 'library_kwargs'}`` (``source`` None for a library
    format, ``library_model`` / ``library_kwargs`` None for official).

    Raises:
      ValueError: a flag missing for the format or given for another format, or ``--timm_kwargs``
        that is not a JSON object (one line each).
    """
    import json
    fmt = f.format
    if fmt not in FORMATS:
        raise ValueError(f'--format: unknown {fmt!r}; accepted: {list(FORMATS)}')
    given = {name for name in ('source', *LIBRARY_MODEL_FLAGS.values(), 'timm_kwargs') if f[name].value is not None}
    wanted = {'source'} if fmt == 'official' else {LIBRARY_MODEL_FLAGS[fmt]}
    allowed = wanted | ({'timm_kwargs'} if fmt == 'timm' else set())
    for name in sorted(wanted - given):
        raise ValueError(f'--format={fmt} needs --{name}')
    for name in sorted(given - allowed):
        raise ValueError(f'--{name} does not apply to --format={fmt}')
    kwargs = None
    if f.timm_kwargs is not None:
        try:
            kwargs = json.loads(f.timm_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f'--timm_kwargs must be a JSON object: {err}') from err
        if not isinstance(kwargs, dict):
            raise ValueError(f'--timm_kwargs must be a JSON object, got {f.timm_kwargs!r}')
    return {'format': fmt, 'source': f.source if fmt == 'official' else None,
            'library_model': None if fmt == 'official' else f[LIBRARY_MODEL_FLAGS[fmt]].value,
            'library_kwargs': kwargs}


def source_for_format(format: str, source: str | None, library_model: str | None, library_kwargs: Any,
                      official_needs: str = '--source'):
    """The :class:`convert.official.Source` a tool's format flags name (``convert.export`` and
    ``convert.import`` share these checks): ``--format=official`` needs ``--source`` and takes
    no library flags; ``timm`` / ``hf`` need their model flag and take no ``--source``.

    Raises:
      ValueError: a flag missing or not applying, or an unknown format (``official_needs`` names
        what ``--format=official`` requires, for the message). KeyError: an unknown source or
        library model name.
    """
    from convert import official
    if format == 'official':
        if not source:
            raise ValueError(f'--format=official needs {official_needs}')
        if library_model or library_kwargs:
            raise ValueError('--timm_model / --hf_model / --timm_kwargs do not apply to --format=official')
        return official.get_source(source)
    if format in official.LIBRARIES:
        if source:
            raise ValueError(f'--source does not apply to --format={format}')
        if not library_model:
            raise ValueError(f'--format={format} needs --{LIBRARY_MODEL_FLAGS[format]}')
        return official.library_source(format, library_model)   # KeyError for an unknown name, early
    raise ValueError(f'--format: unknown {format!r}; accepted: {list(FORMATS)}')


def is_checkpoint_file(path: str) -> bool:
    """Whether ``path`` names a checkpoint file by its suffix (:data:`PTH_SUFFIXES`, ``.safetensors``);
    anything else is a folder (a transformers ``save_pretrained`` directory)."""
    return os.path.splitext(path)[1].lower() in PTH_SUFFIXES + (SAFETENSORS_SUFFIX,)


def read_metadata(path: str) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file (``{}`` for other files or none)."""
    if file_format(path) != 'safetensors':
        return {}
    from safetensors import safe_open
    with safe_open(path, 'np') as fh:
        return dict(fh.metadata() or {})


def read_pretrained_folder(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a transformers ``save_pretrained`` folder: ``(state_dict, config.json dict)``.

    Weights from ``model.safetensors``, or the shards listed in ``model.safetensors.index.json``
    (``weight_map``), read with ``safetensors.torch.load_file``.

    Raises:
      FileNotFoundError: no such folder, or no ``config.json`` / weights in it.
    """
    import json
    if not os.path.isdir(path):
        raise FileNotFoundError(f'{path!r} is neither a checkpoint file ({list(PTH_SUFFIXES) + [SAFETENSORS_SUFFIX]}) '
                                'nor a save_pretrained folder')
    cfg_path = os.path.join(path, HF_CONFIG)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f'{path}: no {HF_CONFIG} (a save_pretrained folder holds {HF_CONFIG} + {HF_WEIGHTS})')
    with open(cfg_path) as fh:
        config = json.load(fh)
    from safetensors.torch import load_file
    single, index = os.path.join(path, HF_WEIGHTS), os.path.join(path, HF_WEIGHTS + '.index.json')
    if os.path.isfile(single):
        return dict(load_file(single, device='cpu')), config
    if os.path.isfile(index):
        with open(index) as fh:
            shards = sorted(set(json.load(fh)['weight_map'].values()))
        sd: dict[str, Any] = {}
        for shard in shards:
            sd.update(load_file(os.path.join(path, shard), device='cpu'))
        return sd, config
    raise FileNotFoundError(f'{path}: no {HF_WEIGHTS} (nor its .index.json shards)')


def write_pretrained_folder(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any], path: str,
                            metadata: Mapping[str, str] | None = None) -> None:
    """Writes a transformers ``save_pretrained``-style folder: ``model.safetensors`` (with
    ``metadata``, ``format='pt'``) and ``config.json`` (indented, keys sorted), which
    ``from_pretrained(path)`` reads."""
    import json
    os.makedirs(path, exist_ok=True)
    write_checkpoint(state_dict, os.path.join(path, HF_WEIGHTS), metadata)
    with open(os.path.join(path, HF_CONFIG), 'w') as fh:
        json.dump(dict(config), fh, indent=2, sort_keys=True)
        fh.write('\n')


def run_main(argv: list[str], body: Callable[[Any], None]) -> None:
    """The absl ``main`` of a tool: rejects positional arguments (``app.UsageError``), lowers absl
    logging to WARNING unless ``--verbosity`` was given (orbax logs every step at INFO), then runs
    ``body(flags.FLAGS)``; a ``FileNotFoundError``, ``KeyError``, ``TypeError`` or ``ValueError``
    from it goes to :func:`fail` (``error: ...`` on stderr, exit status 1), anything else (e.g. an
    ``app.UsageError``) propagates.

    Raises:
      app.UsageError: ``argv`` has positional arguments (or ``body`` raised one).
    """
    from absl import app, flags, logging
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    f = flags.FLAGS
    if not f['verbosity'].present:
        logging.set_verbosity(logging.WARNING)   # orbax logs every step at INFO
    try:
        body(f)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as err:
        fail(err)
