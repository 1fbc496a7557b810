"""timm layouts of the jaxmim Swin and ViT backbones (library ``'timm'`` sources of :mod:`convert.official`).

Two sources, registered when :mod:`convert.official` discovers the families:

``timm_swin``
    ``timm.models.swin_transformer.SwinTransformer`` (timm 1.0.31) <-> :class:`jaxmim.models.swin.SwinTransformer`.
    Names: ``swin_{tiny,small,base,large}_patch4_window7_224``, ``swin_{base,large}_patch4_window12_384``
    (:data:`TIMM_SWIN`). The keys are the official Swin keys (:func:`convert.swin.swin_entries`)
    through timm's own ``checkpoint_filter_fn`` (``timm/models/swin_transformer.py:1172-1218``):
    ``relative_position_index`` and ``attn_mask`` are dropped (non-persistent buffers in timm,
    :247-272, :456), PatchMerging moves to the start of the next stage (official
    ``layers.{i}.downsample`` -> timm ``layers.{i+1}.downsample``; timm registers its ``norm``
    before ``reduction``, :638-639) and the head is ``head.fc`` (``ClassifierHead``). timm's merge
    order (``reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5)``, :656) concatenates the 2x2
    neighbours as (0,0), (1,0), (0,1), (1,1), the official order, so ``reduction`` / ``norm`` are
    copied unchanged. A SimMIM pre-training model (:class:`jaxmim.methods.simmim.SimMIM` around a
    ``SwinTransformerForSimMIM``) exports its encoder as the headless timm model
    (``num_classes=0``); ``mask_token`` and the decoder are omitted.
``timm_vit``
    ``timm.models.vision_transformer.VisionTransformer`` <-> :class:`jaxmim.models.vit.VisionTransformer`.
    Names: ``vit_{tiny,small,base,large}_patch16_224``, ``vit_huge_patch14_224`` (:data:`TIMM_VIT`).
    Keys as MAE's ``models_vit`` (:func:`convert.vit.vit_block_entries`), with timm's order
    ``norm``, ``fc_norm``, ``head`` (``vision_transformer.py:913-935``). jaxmim ``global_pool=True``
    (MAE fine-tuning: mean of the patch tokens, then ``fc_norm``, no ``norm``) is timm
    ``global_pool='avg'`` (``fc_norm=None`` -> ``use_fc_norm``, :846); ``global_pool=False``
    (class token, ``norm``) is timm's default ``'token'``. An MAE pre-training model
    (:class:`jaxmim.methods.mae.MaskedAutoencoderViT`, UM-MAE's ``MaskedAutoencoderViTUM``) exports
    its encoder as the headless class-token model, the layout of timm's own MAE weights
    (``vit_base_patch16_224.mae``: ``num_classes=0``, ``norm``); its sin-cos ``pos_embed`` becomes
    timm's learnable one; the decoder and mask tokens are omitted.

Each named model fixes its architecture (:data:`TIMM_SWIN` / :data:`TIMM_VIT`, the ``model_args``
of timm's registration functions plus the ``img_size`` of their default ``pretrained_cfg``);
``timm.create_model(name, **kwargs)`` may change any of it, and the exporter reads from the run
the arguments a user of a named model usually chooses (:data:`FREE_KWARGS`: ``img_size``,
``num_classes``, ``in_chans``, Swin's ``window_size``, ViT's ``global_pool``). Any other difference
(e.g. the small Fashion-MNIST demo models) must be named with ``--timm_kwargs``, else the export
stops listing every mismatched key and shape. The exported file loads with
``timm.create_model(name, pretrained=False, **kwargs).load_state_dict(sd, strict=True)`` and gives
the jaxmim model's outputs in eval mode. Not representable (``ValueError``): Swin
``global_pool`` other than ``'avg'``, per-stage window sizes, ``always_partition``,
``dynamic_img_size``; ViT ``global_pool`` other than ``'token'`` / ``'avg'``, register tokens,
layer scale, ``qk_norm``, ``no_embed_class``, ``pre_norm``, no class token; a LayerNorm eps other
than timm's (Swin 1e-5, ViT 1e-6) or a ``qk_scale``. Drop rates only matter for training: timm's
``proj_drop_rate`` is jaxmim's ``drop_rate``; timm's head-only ``drop_rate`` has no jaxmim
counterpart and is ignored.

No timm equivalent: jaxmim's PVT is PVT v1 (UM-MAE, ``ummae_pvt``); timm has only PVT v2
(``pvt_v2_*``: overlapping patch embeddings, depth-wise convolution in the MLP, linear SRA), a
different architecture. timm has no HiViT, GroupMixFormer or Twins-SVT of GreenMIM's layout either.
The ``--timm_model`` error lists these notes (:func:`convert.official.register_library_note`).

Test: ``tests/test_interop_timm.py`` (strict loads, outputs against the real timm, round trips).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from flax import nnx

from convert import _entries as E
from convert import official as O
from convert import swin as S
from convert import vit as V

__all__ = ['TIMM_SWIN', 'TIMM_VIT', 'FREE_KWARGS', 'build_timm_swin', 'build_timm_vit', 'timm_swin_entries',
           'timm_vit_entries', 'swin_jaxmim_kwargs', 'vit_jaxmim_kwargs']

_SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_SWIN_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_SWIN_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
TIMM_SWIN: dict[str, dict[str, Any]] = {
    'swin_tiny_patch4_window7_224': dict(img_size=224, patch_size=4, window_size=7, **_SWIN_T),
    'swin_small_patch4_window7_224': dict(img_size=224, patch_size=4, window_size=7, **_SWIN_S),
    'swin_base_patch4_window7_224': dict(img_size=224, patch_size=4, window_size=7, **_SWIN_B),
    'swin_base_patch4_window12_384': dict(img_size=384, patch_size=4, window_size=12, **_SWIN_B),
    'swin_large_patch4_window7_224': dict(img_size=224, patch_size=4, window_size=7, **_SWIN_L),
    'swin_large_patch4_window12_384': dict(img_size=384, patch_size=4, window_size=12, **_SWIN_L),
}
"""timm 1.0.31 Swin names -> their architecture (``timm/models/swin_transformer.py:1332-1383``
``model_args``; ``img_size`` from the ``input_size`` of the default ``pretrained_cfg``)."""

TIMM_VIT: dict[str, dict[str, Any]] = {
    'vit_tiny_patch16_224': dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    'vit_small_patch16_224': dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    'vit_base_patch16_224': dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    'vit_large_patch16_224': dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    'vit_huge_patch14_224': dict(img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16, num_classes=0),
}
"""timm 1.0.31 ViT names -> their architecture (``timm/models/vision_transformer.py``
``vit_*_patch*_224`` ``model_args``, e.g. :3497, :3546, :3574). ``vit_huge_patch14_224`` is
headless by default (``num_classes=0``: its default ``pretrained_cfg`` tag ``orig_in21k`` has no
classifier), the others have 1000 classes."""

FREE_KWARGS = {'timm_swin': ('img_size', 'num_classes', 'in_chans', 'window_size'),
               'timm_vit': ('img_size', 'num_classes', 'in_chans', 'global_pool')}
"""The ``timm.create_model`` arguments read from the run (not checked against the name)."""

_TIMM_DEFAULTS = dict(num_classes=1000, in_chans=3)

# ------------------------------------------------------------------------------------------------
# timm constructor arguments -> jaxmim constructor arguments
# ------------------------------------------------------------------------------------------------


def _square(value: Any, name: str) -> int:
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or int(value[0]) != int(value[1]):
            raise ValueError(f'{name}: jaxmim supports square sizes only (an int or a square pair), got {value!r}')
        value = value[0]
    return int(value)


def _fixed(name: str, value: Any, accepted: Any, what: str) -> None:
    if value != accepted:
        raise ValueError(f'timm {what} argument {name}={value!r} has no jaxmim equivalent (accepted: {accepted!r})')


def swin_jaxmim_kwargs(img_size=224, patch_size=4, in_chans=3, num_classes=1000, global_pool='avg', embed_dim=96,
                       depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), head_dim=None, window_size=7,
                       always_partition=False, strict_img_size=True, dynamic_img_size=False, mlp_ratio=4.,
                       qkv_bias=True, drop_rate=0., proj_drop_rate=0., attn_drop_rate=0., drop_path_rate=0.1,
                       weight_init='') -> dict[str, Any]:
    """timm ``SwinTransformer.__init__`` arguments (names and defaults of
    ``timm/models/swin_transformer.py:799-825``) -> :class:`jaxmim.models.swin.SwinTransformer`
    arguments (``drop_rate`` = timm's ``proj_drop_rate``; timm's head ``drop_rate`` and
    ``weight_init`` ignored).

    Raises:
      TypeError: an argument timm's constructor does not take. ValueError: values jaxmim cannot
      represent (see the module docstring).
    """
    del drop_rate, weight_init
    _fixed('global_pool', global_pool, 'avg', 'SwinTransformer')
    _fixed('always_partition', bool(always_partition), False, 'SwinTransformer')
    _fixed('strict_img_size', bool(strict_img_size) and not dynamic_img_size, True, 'SwinTransformer')
    if isinstance(embed_dim, (tuple, list)):
        raise ValueError(f'timm SwinTransformer embed_dim: jaxmim doubles the width per stage; give an int, got {embed_dim!r}')
    depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
    if head_dim is not None:
        for i, h in enumerate(num_heads):
            if int(head_dim) * h != embed_dim * 2 ** i:
                raise ValueError(f'timm SwinTransformer head_dim={head_dim}: jaxmim uses dim // num_heads')
    if isinstance(window_size, (tuple, list)) and len(window_size) == 2 and all(isinstance(w, int) for w in window_size):
        window_size = _square(window_size, 'window_size')
    elif isinstance(window_size, (tuple, list)):
        raise ValueError(f'timm SwinTransformer window_size: jaxmim uses one square window for all stages, got {window_size!r}')
    if isinstance(mlp_ratio, (tuple, list)):
        raise ValueError(f'timm SwinTransformer mlp_ratio: jaxmim uses one ratio for all stages, got {mlp_ratio!r}')
    return dict(img_size=_square(img_size, 'img_size'), patch_size=_square(patch_size, 'patch_size'),
                in_chans=int(in_chans), num_classes=int(num_classes), embed_dim=int(embed_dim), depths=depths,
                num_heads=num_heads, window_size=int(window_size), mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias),
                drop_rate=float(proj_drop_rate), attn_drop_rate=float(attn_drop_rate),
                drop_path_rate=float(drop_path_rate), norm_eps=1e-5)


def vit_jaxmim_kwargs(img_size=224, patch_size=16, in_chans=3, num_classes=1000, global_pool='token', embed_dim=768,
                      depth=12, num_heads=12, mlp_ratio=4., qkv_bias=True, qk_norm=False, scale_attn_norm=False,
                      scale_mlp_norm=False, proj_bias=True, init_values=None, class_token=True, pos_embed='learn',
                      no_embed_class=False, reg_tokens=0, pre_norm=False, final_norm=True, fc_norm=None,
                      pool_include_prefix=False, dynamic_img_size=False, dynamic_img_pad=False, drop_rate=0.,
                      pos_drop_rate=0., patch_drop_rate=0., proj_drop_rate=0., attn_drop_rate=0., drop_path_rate=0.,
                      weight_init='', fix_init=False) -> dict[str, Any]:
    """timm ``VisionTransformer.__init__`` arguments (names and defaults of
    ``timm/models/vision_transformer.py:757-800``) -> :class:`jaxmim.models.vit.VisionTransformer`
    arguments (``global_pool='avg'`` -> ``global_pool=True``, ``'token'`` -> False; ``drop_rate`` =
    timm's ``proj_drop_rate``; LayerNorm eps 1e-6 as timm's ``LayerNorm``).

    Raises:
      TypeError: an argument timm's constructor does not take. ValueError: values jaxmim cannot
      represent (see the module docstring).
    """
    del drop_rate, weight_init, fix_init, pos_drop_rate
    if global_pool not in ('token', 'avg'):
        raise ValueError(f"timm VisionTransformer global_pool={global_pool!r} has no jaxmim equivalent "
                         "(accepted: 'token', 'avg')")
    for name, value, accepted in (('qk_norm', qk_norm, False), ('scale_attn_norm', scale_attn_norm, False),
                                  ('scale_mlp_norm', scale_mlp_norm, False), ('proj_bias', proj_bias, True),
                                  ('init_values', init_values, None), ('class_token', class_token, True),
                                  ('pos_embed', pos_embed, 'learn'), ('no_embed_class', no_embed_class, False),
                                  ('reg_tokens', reg_tokens, 0), ('pre_norm', pre_norm, False),
                                  ('final_norm', final_norm, True), ('pool_include_prefix', pool_include_prefix, False),
                                  ('dynamic_img_size', dynamic_img_size, False),
                                  ('dynamic_img_pad', dynamic_img_pad, False), ('patch_drop_rate', patch_drop_rate, 0.)):
        _fixed(name, value, accepted, 'VisionTransformer')
    if fc_norm is not None:
        _fixed('fc_norm', bool(fc_norm), global_pool == 'avg', 'VisionTransformer')
    return dict(img_size=_square(img_size, 'img_size'), patch_size=_square(patch_size, 'patch_size'),
                in_chans=int(in_chans), num_classes=int(num_classes), embed_dim=int(embed_dim), depth=int(depth),
                num_heads=int(num_heads), mlp_ratio=float(mlp_ratio), qkv_bias=bool(qkv_bias),
                drop_rate=float(proj_drop_rate), attn_drop_rate=float(attn_drop_rate),
                drop_path_rate=float(drop_path_rate), norm_eps=1e-6, global_pool=global_pool == 'avg')


def build_timm_swin(*, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """Source ``'timm_swin'``: ``timm...SwinTransformer(**kwargs)`` as a jaxmim ``SwinTransformer``
    (arguments: :func:`swin_jaxmim_kwargs`).

    Raises:
      TypeError / ValueError: see :func:`swin_jaxmim_kwargs`; sizes the model rejects.
    """
    from jaxmim.models.swin import SwinTransformer
    return SwinTransformer(**swin_jaxmim_kwargs(**kwargs), rngs=rngs)


def build_timm_vit(*, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """Source ``'timm_vit'``: ``timm...VisionTransformer(**kwargs)`` as a jaxmim ``VisionTransformer``
    (arguments: :func:`vit_jaxmim_kwargs`; head initialised N(0, .02)).

    Raises:
      TypeError / ValueError: see :func:`vit_jaxmim_kwargs`; sizes the model rejects.
    """
    from jaxmim.models.vit import VisionTransformer
    return VisionTransformer(**vit_jaxmim_kwargs(**kwargs), head_init_std=0.02, rngs=rngs)


# ------------------------------------------------------------------------------------------------
# Entries
# ------------------------------------------------------------------------------------------------

def _omit_rest(model: nnx.Module, rows: list, note: str) -> list:
    """``rows`` plus an :class:`convert.official.OmittedEntry` for every variable of ``model``
    they do not map (the pre-training-only variables of a model whose encoder is exported)."""
    covered = {e.path for e in rows if isinstance(e, (O.VariableEntry, O.OmittedEntry))}
    return rows + [O.OmittedEntry(p, note) for p in O._flat_variables(model) if p not in covered]


def _timm_swin_key(key: str) -> str:
    """An official Swin key as timm names it (``checkpoint_filter_fn``, ``swin_transformer.py:1210-1212``)."""
    key = re.sub(r'^layers\.(\d+)\.downsample', lambda m: f'layers.{int(m.group(1)) + 1}.downsample', key)
    return 'head.fc.' + key[len('head.'):] if key.startswith('head.') else key


def _timm_swin_order(key: str) -> tuple:
    """Sort key of timm's ``state_dict`` order: patch_embed, then per stage the downsample (norm
    before reduction) and the blocks, then norm and head.fc."""
    m = re.match(r'layers\.(\d+)\.(downsample\.(norm|reduction)|blocks)', key)
    if m:
        return (1, int(m.group(1)), 0 if m.group(3) == 'norm' else 1 if m.group(3) else 2)
    return (0,) if key.startswith(('absolute_pos_embed', 'patch_embed')) else (2,)


def _swin_rows(enc: nnx.Module, path_prefix: tuple) -> list:
    rows: list = []
    for e in S.swin_entries(enc, '', path_prefix):
        if isinstance(e, O.BufferEntry):
            continue   # relative_position_index, attn_mask: non-persistent in timm
        if isinstance(e, O.OmittedEntry):   # detection-backbone norms
            rows.append(e)
            continue
        if e.key == 'mask_token':
            rows.append(O.OmittedEntry(e.path, 'SimMIM mask token: not in timm Swin'))
            continue
        rows.append(dataclasses.replace(e, key=_timm_swin_key(e.key)))
    variables = [e for e in rows if isinstance(e, O.VariableEntry)]
    order = {id(e): i for i, e in enumerate(variables)}
    variables.sort(key=lambda e: (_timm_swin_order(e.key), order[id(e)]))
    return variables + [e for e in rows if isinstance(e, O.OmittedEntry)]


def timm_swin_entries(model: nnx.Module) -> list:
    """timm ``SwinTransformer`` state_dict entries of a jaxmim Swin classifier (or a
    ``SwinTransformerForSimMIM``, its ``mask_token`` omitted), or of a jaxmim SimMIM around one
    (its encoder; decoder omitted), in timm's order.

    Raises:
      TypeError: another model.
    """
    from jaxmim.methods.simmim import SimMIM
    from jaxmim.models.swin import SwinTransformer
    if isinstance(model, SwinTransformer):
        return _swin_rows(model, ())
    if isinstance(model, SimMIM) and isinstance(model.encoder, SwinTransformer):
        return _omit_rest(model, _swin_rows(model.encoder, ('encoder',)), 'SimMIM decoder: not in timm Swin')
    raise TypeError(f'timm Swin holds a jaxmim SwinTransformer or a SimMIM Swin pre-training model, got '
                    f'{type(model).__name__}')


def _mae_classes() -> tuple:
    from jaxmim.methods.mae import MaskedAutoencoderViT
    from jaxmim.methods.ummae.vit import MaskedAutoencoderViTUM
    return MaskedAutoencoderViT, MaskedAutoencoderViTUM


def timm_vit_entries(model: nnx.Module) -> list:
    """timm ``VisionTransformer`` state_dict entries, timm's order: ``cls_token``, ``pos_embed``,
    ``patch_embed.proj``, ``blocks.*``, ``norm`` (class-token pooling), ``fc_norm`` (``'avg'``),
    ``head`` (``num_classes > 0``). For a jaxmim ViT classifier, or an MAE / UM-MAE pre-training
    model (its encoder: cls_token, pos_embed, patch_embed, blocks, norm; the rest omitted).

    Raises:
      TypeError: another model.
    """
    from jaxmim.models.vit import VisionTransformer
    is_mae = isinstance(model, _mae_classes())
    if not isinstance(model, VisionTransformer) and not is_mae:
        raise TypeError(f'timm ViT holds a jaxmim VisionTransformer or an MAE / UM-MAE ViT pre-training model, '
                        f'got {type(model).__name__}')
    rows: list = [O.VariableEntry('cls_token', ('cls_token',)), O.VariableEntry('pos_embed', ('pos_embed',))]
    rows += E.conv_entries('patch_embed.proj', ('patch_embed', 'proj'), model.patch_embed.proj)
    for i, blk in enumerate(model.blocks):
        rows += V.vit_block_entries(blk, f'blocks.{i}.', ('blocks', i))
    if is_mae:
        rows += E.layer_norm_entries('norm', ('norm',))
        return _omit_rest(model, rows, 'MAE decoder / mask token: not in timm ViT')
    if model.norm is not None:
        rows += E.layer_norm_entries('norm', ('norm',))
    if model.fc_norm is not None:
        rows += E.layer_norm_entries('fc_norm', ('fc_norm',))
    if model.head is not None:
        rows += E.linear_entries('head', ('head',), model.head)
    return rows


# ------------------------------------------------------------------------------------------------
# Library functions of the sources
# ------------------------------------------------------------------------------------------------

def _named(table: dict, name: str, create: Mapping[str, Any]) -> dict[str, Any]:
    if name not in table:
        raise KeyError(f'unknown timm model {name!r}; accepted: {sorted(table)}')
    return {**table[name], **dict(create)}


def _swin_kwargs_fn(name: str, **create: Any) -> dict[str, Any]:
    """timm ``create_model(name, **create)`` -> :func:`build_timm_swin` arguments."""
    return _named(TIMM_SWIN, name, create)


def _vit_kwargs_fn(name: str, **create: Any) -> dict[str, Any]:
    """timm ``create_model(name, **create)`` -> :func:`build_timm_vit` arguments."""
    return _named(TIMM_VIT, name, create)


def _check_scale(attn: nnx.Module, dim: int, heads: int) -> None:
    if abs(float(attn.scale) - (dim // heads) ** -0.5) > 1e-12:
        raise ValueError(f'the run uses qk_scale {attn.scale}; timm always scales by head_dim ** -0.5')


def _free(name: str, table: dict, values: dict[str, Any]) -> dict[str, Any]:
    """The values that differ from the named model's (timm's) defaults."""
    defaults = {**_TIMM_DEFAULTS, **table[name]}
    return {k: v for k, v in values.items() if defaults.get(k) != v}


def _swin_encoder(model: nnx.Module) -> nnx.Module:
    return model.encoder if hasattr(model, 'encoder') else model


def _swin_create_kwargs(model: nnx.Module, name: str) -> dict[str, Any]:
    """``img_size``, ``num_classes``, ``in_chans``, ``window_size`` of a jaxmim Swin (or SimMIM
    encoder, ``num_classes=0``), where they differ from the named model.

    Raises:
      ValueError: a LayerNorm eps other than 1e-5 or a custom ``qk_scale``.
    """
    enc = _swin_encoder(model)
    if abs(enc.norm.epsilon - 1e-5) > 1e-12:
        raise ValueError(f'the run uses LayerNorm eps {enc.norm.epsilon}; timm Swin uses 1e-5')
    _check_scale(enc.layers[0].blocks[0].attn, enc.embed_dim, enc.num_heads[0])
    return _free(name, TIMM_SWIN, dict(img_size=enc.img_size, num_classes=0 if enc.head is None else enc.num_classes,
                                       in_chans=enc.in_chans, window_size=enc.window_size))


def _vit_create_kwargs(model: nnx.Module, name: str) -> dict[str, Any]:
    """``img_size``, ``num_classes``, ``in_chans``, ``global_pool`` of a jaxmim ViT classifier
    (``'avg'`` for ``global_pool=True``) or MAE encoder (``num_classes=0``, class token), where
    they differ from timm's defaults.

    Raises:
      ValueError: a LayerNorm eps other than 1e-6 or a custom ``qk_scale``.
    """
    norm = getattr(model, 'fc_norm', None) or model.norm
    if abs(norm.epsilon - 1e-6) > 1e-12:
        raise ValueError(f'the run uses LayerNorm eps {norm.epsilon}; timm ViT uses 1e-6')
    blk = model.blocks[0]
    _check_scale(blk.attn, blk.attn.qkv.kernel.shape[0], blk.attn.num_heads)
    is_mae = isinstance(model, _mae_classes())
    values = dict(img_size=model.img_size, num_classes=0 if is_mae or model.head is None else model.num_classes,
                  in_chans=model.in_chans)
    out = _free(name, TIMM_VIT, values)
    if not is_mae and model.global_pool:
        out['global_pool'] = 'avg'
    return out


def _usage(name: str, create: Mapping[str, Any]) -> str:
    args = ''.join(f', {k}={tuple(v) if isinstance(v, list) else v!r}' for k, v in create.items())
    return (f"model = timm.create_model({name!r}, pretrained=False{args}); "
            "model.load_state_dict(safetensors.torch.load_file(path))  # or torch.load(path) for .pth")


def _usage_fn(model: nnx.Module, name: str, **create: Any) -> str:
    """The ``timm.create_model`` + ``load_state_dict`` line of an exported file."""
    del model
    return _usage(name, create)


def _jaxmim_model(family: str, name: str) -> str:
    """The registered jaxmim classifier an imported timm model starts from (its architecture is then
    set entirely by the overrides)."""
    from jaxmim import registry
    if name in registry.list_models():
        return name
    return {'swin': 'swin_base_patch4_window7_224', 'vit': 'vit_base_patch16_224'}[family]


_TRAINING_ONLY = ('drop_rate', 'attn_drop_rate', 'drop_path_rate')


def _import_overrides(jax_kwargs: dict[str, Any], create: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture overrides of an import: every jaxmim constructor argument but the drop
    rates, which keep the registry's fine-tuning defaults unless ``create`` names them."""
    timm_names = {'drop_rate': 'proj_drop_rate', 'attn_drop_rate': 'attn_drop_rate', 'drop_path_rate': 'drop_path_rate'}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in jax_kwargs.items()
            if k not in _TRAINING_ONLY or timm_names[k] in create}


def _swin_import(name: str, create: Mapping[str, Any] | None) -> tuple[str, dict, dict]:
    """timm Swin name + ``create_model`` kwargs -> (jaxmim classifier, its overrides, {})."""
    create = dict(create or {})
    return _jaxmim_model('swin', name), _import_overrides(swin_jaxmim_kwargs(**_swin_kwargs_fn(name, **create)), create), {}


def _vit_import(name: str, create: Mapping[str, Any] | None) -> tuple[str, dict, dict]:
    """timm ViT name + ``create_model`` kwargs -> (jaxmim classifier, its overrides, {})."""
    create = dict(create or {})
    return _jaxmim_model('vit', name), _import_overrides(vit_jaxmim_kwargs(**_vit_kwargs_fn(name, **create)), create), {}


O.register_source(O.Source(
    name='timm_swin',
    reference='timm 1.0.31 timm/models/swin_transformer.py SwinTransformer',
    build_fn=build_timm_swin,
    entries_fn=timm_swin_entries,
    library='timm',
    library_models=tuple(TIMM_SWIN),
    library_kwargs_fn=_swin_kwargs_fn,
    library_create_kwargs_fn=_swin_create_kwargs,
    library_import_fn=_swin_import,
    library_usage_fn=_usage_fn))

O.register_source(O.Source(
    name='timm_vit',
    reference='timm 1.0.31 timm/models/vision_transformer.py VisionTransformer',
    build_fn=build_timm_vit,
    entries_fn=timm_vit_entries,
    library='timm',
    library_models=tuple(TIMM_VIT),
    library_kwargs_fn=_vit_kwargs_fn,
    library_create_kwargs_fn=_vit_create_kwargs,
    library_import_fn=_vit_import,
    library_usage_fn=_usage_fn))

O.register_library_note(
    'timm', 'timm has no equivalent of jaxmim PVT (PVT v1 of UM-MAE: timm has only PVT v2, pvt_v2_*, a '
    'different architecture), HiViT, GroupMixFormer or the GreenMIM Twins')
