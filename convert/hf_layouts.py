"""Hugging Face ``transformers`` layouts of the jaxmim Swin, SimMIM, ViT and MAE models.

One :class:`convert.official.Source` per transformers class, registered with :mod:`convert.official`
(``library='hf'``; ``convert.export --format=hf --hf_model=CLASS`` / ``convert.import --format=hf``):

* ``SwinModel`` (source ``hf_swin_model``): :class:`jaxmim.models.swin.SwinTransformer` with
  ``num_classes=0``;
* ``SwinForImageClassification`` (``hf_swin_for_image_classification``): ``SwinTransformer``
  with a head;
* ``SwinForMaskedImageModeling`` (``hf_swin_for_masked_image_modeling``):
  :class:`jaxmim.methods.simmim.SimMIM` around ``SwinTransformerForSimMIM``;
* ``ViTModel`` built with ``add_pooling_layer=False`` (``hf_vit_model``):
  :class:`jaxmim.models.vit.VisionTransformer` with ``num_classes=0`` and ``global_pool=False``;
* ``ViTForImageClassification`` (``hf_vit_for_image_classification``): ``VisionTransformer``
  with a head and ``global_pool=False``;
* ``ViTMAEForPreTraining`` (``hf_vit_mae_for_pretraining``):
  :class:`jaxmim.methods.mae.MaskedAutoencoderViT`.

**Key layout: what ``save_pretrained`` of transformers 5.23.0 writes**, i.e. the Hub layout
(``attention.self.query`` / ``attention.attention.query`` ...), not the module names of 5.x
(``attention.q_proj`` ...): 5.x renames its modules in memory and maps the names both ways with
``conversion_mapping.py`` (``"swin"``, ``"ViTModel"`` and ``"ViTMAEForPreTraining"`` renamings),
so a folder holding these keys and the ``config.json`` of :func:`hf_config` loads with
``Class.from_pretrained(folder)`` with no missing, unexpected or mismatched key, and a folder
written by ``save_pretrained`` imports. One spelling is 5.23's own: its ``save_pretrained`` writes
the MAE decoder blocks as ``decoder.decoder_encoder.layer.{i}.`` (the ``"ViTModel"`` renaming
``encoder.layer. -> layers.`` reversed onto ``decoder.decoder_layers.{i}.``), which 5.23 reads
back but transformers 4.x, whose Hub checkpoints say ``decoder.decoder_layers.{i}.``, does not.
Swin's ``relative_position_index`` is a non-persistent buffer in 5.23
(``modeling_swin.py:346-348``), so it is neither written nor accepted. Files saved by older
versions (Swin ``relative_position_index`` buffers, MAE ``decoder_layers``) import after a
round trip through 5.23: ``Class.from_pretrained(old).save_pretrained(new)``.

**Query / key / value.** HF has three ``nn.Linear`` (``query``, ``key``, ``value``, each
(D, D)) where jaxmim has one fused Dense ``qkv`` (kernel (D, 3D), output channels ``[q; k; v]``,
each head-major, as the official code): export takes chunk s of the fused kernel's last axis and
transposes it (``VariableEntry.part``), import concatenates the three chunks. Both are slices and
transposes, so export -> import is bit-exact.

**Architectures** (checked in ``transformers/models/{swin,vit,vit_mae}/modeling_*.py`` of 5.23.0):

* Swin: ``SwinPatchMerging`` concatenates the offsets ``(0,0), (1,0), (0,1), (1,1)``
  (``modeling_swin.py:318-320``, ``for col in range(2) for row in range(2)``), the official order;
  attention scale ``head_dim ** -0.5``, exact GELU (``hidden_act='gelu'``). ``embeddings.norm``
  and ``downsample.norm`` are ``nn.LayerNorm(dim)`` with eps 1e-5 whatever ``layer_norm_eps``
  (lines 184, 301), the blocks and the final ``layernorm`` use ``layer_norm_eps``; jaxmim Swin has
  one eps, so only ``layer_norm_eps = 1e-5`` (the official Swin's) maps. The relative-position
  table always has ``(2 * window_size - 1) ** 2`` rows while the forward clamps the window of a
  stage no larger than it (``set_shift_and_window_size``): a stage *smaller* than the window does
  not run in HF and is refused (jaxmim's table shrinks there); a stage equal to it matches.
  ``SwinModel``'s pooler is ``nn.AdaptiveAvgPool1d(1)`` (no weights): ``pooler_output`` is
  jaxmim's ``forward_features``, ``SwinForImageClassification`` its logits.
* SimMIM: ``SwinForMaskedImageModeling`` takes ``bool_masked_pos`` (B, num_patches) per model
  patch (4 px), i.e. jaxmim's SimMIM ``mask`` (B, H/4, W/4) flattened row-major (jaxmim draws it
  in ``mask_patch_size`` units and repeats it to patches, as the official ``MaskGenerator``); the
  decoder is the official 1x1 conv + ``PixelShuffle(encoder_stride)`` (``decoder.0.*``) and the
  loss ``(l1 * mask).sum() / (mask.sum() + 1e-5) / num_channels`` (lines 969-980) is the official
  SimMIM normalisation, so loss and ``reconstruction`` (NCHW) match jaxmim's ``loss`` and ``x_rec``.
  The mask generator's ``mask_patch_size`` / ``mask_ratio`` are data-side: not in ``config.json``.
* ViT: ``ViTForImageClassification`` classifies ``last_hidden_state[:, 0]`` after the final
  ``layernorm`` (``modeling_vit.py:546``, built with ``add_pooling_layer=False``): only jaxmim ViTs
  with ``global_pool=False`` map; a global-pool (``fc_norm``) ViT is refused. ``ViTModel``'s
  default ``add_pooling_layer=True`` adds a ``pooler.dense`` (tanh) that jaxmim has no weights for:
  load with ``add_pooling_layer=False``. HF's default ``layer_norm_eps`` is 1e-12; ``config.json``
  carries the run's (1e-6 for MAE's ViTs).
* MAE: ``ViTMAEForPreTraining(pixel_values, noise=noise)`` masks by ``argsort(noise)`` and keeps
  ``int(L * (1 - mask_ratio))`` patches (``modeling_vit_mae.py:300-327``) like the official code and
  jaxmim's ``random_masking`` (which takes the same ``noise`` input), so with the same noise
  ``logits`` = jaxmim ``pred`` (B, L, p*p*C), ``mask`` and ``loss`` (``norm_pix_loss`` with the
  unbiased variance, lines 847-854) match. The sin-cos ``position_embeddings`` /
  ``decoder_pos_embed`` are ``nn.Parameter(requires_grad=False)``, stored in the file: exported
  from jaxmim's fixed buffers (HF's ``[sin_h|cos_h|sin_w|cos_w]`` table swapped by halves,
  lines 278-289, is the official column-first table). ``mask_ratio`` / ``norm_pix_loss`` are in
  ``config.json``. (A freshly built 5.23 ``ViTMAEForPreTraining`` holds all-zero tables:
  ``initialize_weights`` returns early once ``post_init`` has marked the patch projection
  initialised, and ``_init_weights`` zeros ``decoder_pos_embed``; loading a file sets them.)
* Dropout: ``hidden_dropout_prob`` <-> ``drop_rate`` and ``attention_probs_dropout_prob`` <->
  ``attn_drop_rate``; HF drops each residual branch's output where the timm-style jaxmim code drops
  inside the MLP and after the projection: identical in evaluation, not in training. Swin's
  ``drop_path_rate`` maps; HF ViT has no drop path (jaxmim's rate is not exported).

This module needs neither PyTorch nor transformers: ``config.json`` is written from the model.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from flax import nnx

from convert import official as O
from convert import _entries as E

__all__ = ['qkv_entries', 'HF_CLASSES', 'SWIN_CONFIG_DEFAULTS',
           'VIT_CONFIG_DEFAULTS', 'VIT_MAE_CONFIG_DEFAULTS', 'hf_config', 'hf_import', 'build_from_hf_config',
           'swin_hf_entries', 'vit_layer_entries', 'vit_hf_entries', 'vit_mae_hf_entries']


# ------------------------------------------------------------------------------------------------
# Query / key / value: one fused Flax variable <-> three official tensors
# ------------------------------------------------------------------------------------------------

def qkv_entries(prefix: str, query: str, key: str, value: str, path: tuple[Any, ...], qkv: nnx.Module) -> list[O.Entry]:
    """HF ``{prefix}{query,key,value}.weight`` (each (D, D)) [and ``.bias`` (D,)] <-> the fused
    Dense at ``path`` (kernel (D, 3D), bias (3D,)): chunk s of the last Flax axis
    (:attr:`convert.official.VariableEntry.part`), in HF's order query.weight, query.bias,
    key.weight, key.bias, value.weight, value.bias."""
    names = (query, key, value)
    has_bias = getattr(qkv, 'bias', None) is not None
    out: list[O.Entry] = []
    for i, name in enumerate(names):
        out.append(O.VariableEntry(f'{prefix}{name}.weight', path + ('kernel',), O.LINEAR, part=(i, 3)))
        if has_bias:
            out.append(O.VariableEntry(f'{prefix}{name}.bias', path + ('bias',), O.COPY, part=(i, 3)))
    return out


# ------------------------------------------------------------------------------------------------
# transformers configurations (5.23.0 defaults, models/*/configuration_*.py)
# ------------------------------------------------------------------------------------------------

SWIN_CONFIG_DEFAULTS: dict[str, Any] = dict(
    image_size=224, patch_size=4, num_channels=3, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
    window_size=7, mlp_ratio=4.0, qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    drop_path_rate=0.1, hidden_act='gelu', use_absolute_embeddings=False, initializer_range=0.02,
    layer_norm_eps=1e-5, encoder_stride=32)
"""``SwinConfig`` fields and defaults (transformers 5.23.0 ``models/swin/configuration_swin.py:57-74``)."""

VIT_CONFIG_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act='gelu',
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.02, layer_norm_eps=1e-12,
    image_size=224, patch_size=16, num_channels=3, qkv_bias=True, encoder_stride=16)
"""``ViTConfig`` fields and defaults used here (``models/vit/configuration_vit.py:50-65``; the
pooler fields are left out: jaxmim ViTs have no pooler)."""

VIT_MAE_CONFIG_DEFAULTS: dict[str, Any] = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act='gelu',
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.02, layer_norm_eps=1e-12,
    image_size=224, patch_size=16, num_channels=3, qkv_bias=True, decoder_num_attention_heads=16,
    decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_intermediate_size=2048, mask_ratio=0.75,
    norm_pix_loss=False)
"""``ViTMAEConfig`` fields and defaults (``models/vit_mae/configuration_vit_mae.py:50-69``)."""

HF_CLASSES: dict[str, tuple[str, str]] = {
    'SwinModel': ('hf_swin_model', 'swin'),
    'SwinForImageClassification': ('hf_swin_for_image_classification', 'swin'),
    'SwinForMaskedImageModeling': ('hf_swin_for_masked_image_modeling', 'swin'),
    'ViTModel': ('hf_vit_model', 'vit'),
    'ViTForImageClassification': ('hf_vit_for_image_classification', 'vit'),
    'ViTMAEForPreTraining': ('hf_vit_mae_for_pretraining', 'vit_mae'),
}
"""transformers class name -> (source name, ``model_type``)."""

_HEADED = ('SwinForImageClassification', 'ViTForImageClassification')


def _field(cfg: Mapping[str, Any], defaults: Mapping[str, Any], name: str) -> Any:
    return cfg[name] if name in cfg else defaults[name]


def _square(cfg: Mapping[str, Any], defaults: Mapping[str, Any], name: str) -> int:
    """An int-or-pair config field as one int (jaxmim models are square)."""
    value = _field(cfg, defaults, name)
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or int(value[0]) != int(value[1]):
            raise ValueError(f'config.json {name}: jaxmim takes square sizes (an int or [n, n]), got {value!r}')
        value = value[0]
    return int(value)


def _gelu(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    act = _field(cfg, defaults, 'hidden_act')
    if act != 'gelu':
        raise ValueError(f'config.json hidden_act: jaxmim uses the exact (erf) GELU, i.e. "gelu"; got {act!r}')


def _num_labels(cfg: Mapping[str, Any]) -> int:
    """transformers' ``num_labels``: ``len(id2label)`` (``num_labels`` when given), default 2."""
    if 'id2label' in cfg and cfg['id2label'] is not None:
        return len(cfg['id2label'])
    return int(cfg.get('num_labels', 2))


def _labels(num_classes: int) -> dict[str, Any]:
    names = {str(i): f'LABEL_{i}' for i in range(num_classes)}
    return {'id2label': names, 'label2id': {v: int(k) for k, v in names.items()}}


def _ratio(hidden: int, dim: int, name: str) -> float:
    """The MLP ratio r with ``int(dim * r) == hidden`` (jaxmim builds ``int(dim * mlp_ratio)``)."""
    r = hidden / dim
    if int(dim * r) != hidden:
        raise ValueError(f'config.json {name}={hidden} is not int({dim} * r) for any ratio r jaxmim can build')
    return r


# ------------------------------------------------------------------------------------------------
# Swin
# ------------------------------------------------------------------------------------------------

def _swin_kwargs_from_hf(cfg: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """``SwinConfig`` fields (5.23 defaults for absent ones) -> jaxmim ``SwinTransformer`` kwargs.

    Raises:
      ValueError: a field jaxmim cannot represent (named, with what is accepted).
    """
    d = SWIN_CONFIG_DEFAULTS
    _gelu(cfg, d)
    eps = float(_field(cfg, d, 'layer_norm_eps'))
    if eps != 1e-5:
        raise ValueError(f'config.json layer_norm_eps: HF Swin fixes eps 1e-5 in embeddings.norm and downsample.norm '
                         f'and jaxmim Swin has one eps, so only 1e-5 maps; got {eps}')
    depths = tuple(int(x) for x in _field(cfg, d, 'depths'))
    kwargs = dict(img_size=_square(cfg, d, 'image_size'), patch_size=_square(cfg, d, 'patch_size'),
                  in_chans=int(_field(cfg, d, 'num_channels')), num_classes=int(num_classes),
                  embed_dim=int(_field(cfg, d, 'embed_dim')), depths=depths,
                  num_heads=tuple(int(x) for x in _field(cfg, d, 'num_heads')),
                  window_size=int(_field(cfg, d, 'window_size')), mlp_ratio=float(_field(cfg, d, 'mlp_ratio')),
                  qkv_bias=bool(_field(cfg, d, 'qkv_bias')), drop_rate=float(_field(cfg, d, 'hidden_dropout_prob')),
                  attn_drop_rate=float(_field(cfg, d, 'attention_probs_dropout_prob')),
                  drop_path_rate=float(_field(cfg, d, 'drop_path_rate')),
                  ape=bool(_field(cfg, d, 'use_absolute_embeddings')), norm_eps=eps)
    grid = kwargs['img_size'] // kwargs['patch_size']
    for i in range(len(depths)):
        res = grid // 2 ** i
        if res < kwargs['window_size']:
            raise ValueError(f'config.json window_size={kwargs["window_size"]}: stage {i} is {res}x{res}, smaller than '
                             'the window; HF Swin cannot run it (its bias table stays (2*window_size-1)^2 while the '
                             'window is clamped), so jaxmim does not build it')
    return kwargs


def _swin_hf_fields(enc: nnx.Module) -> dict[str, Any]:
    """``SwinConfig`` fields of a jaxmim Swin (classifier or SimMIM encoder).

    Raises:
      TypeError: the model has no HF Swin equivalent (the reason named).
    """
    blocks = [blk for layer in enc.layers for blk in layer.blocks]
    ratio = blocks[0].mlp.fc1.kernel.shape[1] / enc.embed_dim
    for i, layer in enumerate(enc.layers):
        dim = enc.embed_dim * 2 ** i
        for blk in layer.blocks:
            if blk.mlp.fc1.kernel.shape[1] != int(ratio * dim):
                raise TypeError(f'stage {i} MLP width {blk.mlp.fc1.kernel.shape[1]} is not int(mlp_ratio * {dim}) '
                                f'with the mlp_ratio {ratio} of stage 0; HF Swin has one mlp_ratio')
            head_dim = dim // blk.attn.num_heads
            if blk.attn.scale != head_dim ** -0.5:
                raise TypeError(f'qk_scale {blk.attn.scale} is not head_dim ** -0.5; HF Swin has no qk_scale')
    eps = enc.norm.epsilon
    if eps != 1e-5:
        raise TypeError(f'LayerNorm eps {eps}: HF Swin fixes eps 1e-5 in embeddings.norm and downsample.norm, so '
                        'only norm_eps=1e-5 maps')
    if enc.patch_embed.norm is None:
        raise TypeError('patch_norm=False: HF Swin always normalises the patch embedding (embeddings.norm)')
    grid = enc.img_size // enc.patch_size
    for i in range(enc.num_layers):
        res = grid // 2 ** i
        if res < enc.window_size:
            raise TypeError(f'stage {i} is {res}x{res}, smaller than window_size {enc.window_size}: jaxmim clamps the '
                            'window and shrinks the bias table there; HF Swin keeps a (2*window_size-1)^2 table and '
                            'cannot run that stage')
    return dict(image_size=enc.img_size, patch_size=enc.patch_size, num_channels=enc.in_chans, embed_dim=enc.embed_dim,
                depths=list(enc.depths), num_heads=list(enc.num_heads), window_size=enc.window_size,
                mlp_ratio=float(ratio), qkv_bias=blocks[0].attn.qkv.bias is not None,
                hidden_dropout_prob=float(enc.drop_rate), attention_probs_dropout_prob=float(blocks[0].attn.attn_drop),
                drop_path_rate=round(float(blocks[-1].drop_path), 6), hidden_act='gelu',
                use_absolute_embeddings=enc.absolute_pos_embed is not None, initializer_range=0.02,
                layer_norm_eps=float(eps))


def swin_hf_entries(enc: nnx.Module, key_prefix: str = '', path_prefix: tuple[Any, ...] = ()) -> list[O.Entry]:
    """HF ``SwinModel`` keys (``save_pretrained`` spelling) of a jaxmim Swin, in transformers
    4.x module order: ``embeddings.{mask_token (SimMIM encoder), position_embeddings (ape),
    patch_embeddings.projection, norm}``, per block ``encoder.layers.{i}.blocks.{j}.``
    ``layernorm_before``, ``attention.self.{relative_position_bias_table, query, key, value}``,
    ``attention.output.dense``, ``layernorm_after``, ``intermediate.dense`` (fc1), ``output.dense``
    (fc2); per stage but the last ``downsample.{reduction, norm}``; then ``layernorm``.

    Raises:
      TypeError: ``enc`` is not a jaxmim Swin or has no HF equivalent.
    """
    from jaxmim.models import swin as S
    if not isinstance(enc, S.SwinTransformer):
        raise TypeError(f'expected a jaxmim SwinTransformer, got {type(enc).__name__}')
    _swin_hf_fields(enc)
    out: list[O.Entry] = []
    if isinstance(enc, S.SwinTransformerForSimMIM):
        out.append(O.VariableEntry('embeddings.mask_token', ('mask_token',)))
    if enc.absolute_pos_embed is not None:
        out.append(O.VariableEntry('embeddings.position_embeddings', ('absolute_pos_embed',)))
    out += E.conv_entries('embeddings.patch_embeddings.projection', ('patch_embed', 'proj'), enc.patch_embed.proj)
    out += E.layer_norm_entries('embeddings.norm', ('patch_embed', 'norm'))
    for li, layer in enumerate(enc.layers):
        for bi, blk in enumerate(layer.blocks):
            k, p = f'encoder.layers.{li}.blocks.{bi}.', ('layers', li, 'blocks', bi)
            out += E.layer_norm_entries(k + 'layernorm_before', p + ('norm1',))
            out.append(O.VariableEntry(k + 'attention.self.relative_position_bias_table',
                                       p + ('attn', 'relative_position_bias_table')))
            out += qkv_entries(k + 'attention.self.', 'query', 'key', 'value', p + ('attn', 'qkv'), blk.attn.qkv)
            out += E.linear_entries(k + 'attention.output.dense', p + ('attn', 'proj'), blk.attn.proj)
            out += E.layer_norm_entries(k + 'layernorm_after', p + ('norm2',))
            out += E.linear_entries(k + 'intermediate.dense', p + ('mlp', 'fc1'), blk.mlp.fc1)
            out += E.linear_entries(k + 'output.dense', p + ('mlp', 'fc2'), blk.mlp.fc2)
        if layer.downsample is not None:
            k, p = f'encoder.layers.{li}.downsample.', ('layers', li, 'downsample')
            out += E.linear_entries(k + 'reduction', p + ('reduction',), layer.downsample.reduction)
            out += E.layer_norm_entries(k + 'norm', p + ('norm',))
    out += E.layer_norm_entries('layernorm', ('norm',))
    for i in getattr(enc, 'out_indices', None) or ():   # detection-backbone norms (built with out_indices=)
        out += [O.OmittedEntry((f'norm{i}', name), 'detection-backbone output norm, not in the HF layout')
                for name in ('scale', 'bias')]
    return E.prefixed(out, key_prefix, path_prefix)


def _swin_classifier(model: nnx.Module, cls: str):
    from jaxmim.models.swin import SwinTransformer, SwinTransformerForSimMIM
    if not isinstance(model, SwinTransformer) or isinstance(model, SwinTransformerForSimMIM):
        raise TypeError(f'{cls} holds a jaxmim SwinTransformer classifier, got {type(model).__name__}')
    if cls == 'SwinModel' and model.head is not None:
        raise TypeError(f'SwinModel has no classifier: the run\'s Swin has a {model.num_classes}-class head; export it '
                        'as SwinForImageClassification (or build the run with num_classes=0)')
    if cls == 'SwinForImageClassification' and model.head is None:
        raise TypeError('SwinForImageClassification needs a classifier head; the run\'s Swin has num_classes=0 '
                        '(export it as SwinModel)')
    return model


def _swin_model_entries(model: nnx.Module) -> list[O.Entry]:
    return swin_hf_entries(_swin_classifier(model, 'SwinModel'))


def _swin_cls_entries(model: nnx.Module) -> list[O.Entry]:
    model = _swin_classifier(model, 'SwinForImageClassification')
    return swin_hf_entries(model, 'swin.') + E.linear_entries('classifier', ('head',), model.head)


def _swin_mim_model(model: nnx.Module):
    from jaxmim.methods.simmim import SimMIM
    from jaxmim.models.swin import SwinTransformerForSimMIM
    if not isinstance(model, SimMIM) or not isinstance(model.encoder, SwinTransformerForSimMIM):
        raise TypeError('SwinForMaskedImageModeling holds a jaxmim SimMIM with a SwinTransformerForSimMIM encoder, '
                        f'got {type(model).__name__}')
    enc = model.encoder
    final = enc.img_size // enc.patch_size // 2 ** (enc.num_layers - 1)
    if final * model.encoder_stride != enc.img_size:
        raise TypeError(f'encoder_stride {model.encoder_stride} x final resolution {final} != image size '
                        f'{enc.img_size}: HF reconstructs image_size pixels')
    return model


def _swin_mim_entries(model: nnx.Module) -> list[O.Entry]:
    model = _swin_mim_model(model)
    return (swin_hf_entries(model.encoder, 'swin.', ('encoder',))
            + [O.VariableEntry('decoder.0.weight', ('decoder', 'kernel'), O.CONV2D),
               O.VariableEntry('decoder.0.bias', ('decoder', 'bias'))])


# ------------------------------------------------------------------------------------------------
# ViT and MAE
# ------------------------------------------------------------------------------------------------

def vit_layer_entries(blk: nnx.Module, key: str, path: tuple[Any, ...]) -> list[O.Entry]:
    """HF ``ViTLayer`` / ``ViTMAELayer`` keys at ``key`` (e.g. ``'vit.encoder.layer.3.'``) of a
    jaxmim ViT ``Block`` at ``path``, transformers 4.x module order: ``attention.attention.{query,
    key, value}``, ``attention.output.dense`` (proj), ``intermediate.dense`` (fc1),
    ``output.dense`` (fc2), ``layernorm_before`` (norm1), ``layernorm_after`` (norm2)."""
    return (qkv_entries(key + 'attention.attention.', 'query', 'key', 'value', path + ('attn', 'qkv'), blk.attn.qkv)
            + E.linear_entries(key + 'attention.output.dense', path + ('attn', 'proj'), blk.attn.proj)
            + E.linear_entries(key + 'intermediate.dense', path + ('mlp', 'fc1'), blk.mlp.fc1)
            + E.linear_entries(key + 'output.dense', path + ('mlp', 'fc2'), blk.mlp.fc2)
            + E.layer_norm_entries(key + 'layernorm_before', path + ('norm1',))
            + E.layer_norm_entries(key + 'layernorm_after', path + ('norm2',)))


def _check_vit_blocks(blocks, what: str) -> float:
    """The shared MLP ratio of jaxmim ViT ``blocks``; raises TypeError for a custom qk_scale."""
    dim = blocks[0].norm1.scale.shape[0]
    for blk in blocks:
        if blk.attn.scale != (dim // blk.attn.num_heads) ** -0.5:
            raise TypeError(f'{what}: qk_scale {blk.attn.scale} is not head_dim ** -0.5; HF ViT has no qk_scale')
    return blocks[0].mlp.fc1.kernel.shape[1] / dim


def _vit_classifier(model: nnx.Module, cls: str):
    from jaxmim.models.vit import VisionTransformer
    if not isinstance(model, VisionTransformer):
        raise TypeError(f'{cls} holds a jaxmim VisionTransformer, got {type(model).__name__}')
    if model.global_pool:
        raise TypeError(f'{cls} classifies the CLS token after the final layernorm; the run\'s ViT has '
                        'global_pool=True (mean of patch tokens + fc_norm), which no HF ViT class computes')
    if cls == 'ViTModel' and model.head is not None:
        raise TypeError(f'ViTModel has no classifier: the run\'s ViT has a {model.num_classes}-class head; export it '
                        'as ViTForImageClassification (or build the run with num_classes=0)')
    if cls == 'ViTForImageClassification' and model.head is None:
        raise TypeError('ViTForImageClassification needs a classifier head; the run\'s ViT has num_classes=0 '
                        '(export it as ViTModel)')
    _check_vit_blocks(model.blocks, cls)
    return model


def vit_hf_entries(model: nnx.Module, key_prefix: str = '') -> list[O.Entry]:
    """HF ``ViTModel`` keys (``add_pooling_layer=False``, ``save_pretrained`` spelling) of a jaxmim
    ViT with class-token pooling: ``embeddings.{cls_token, position_embeddings,
    patch_embeddings.projection}``, ``encoder.layer.{i}.*`` (:func:`vit_layer_entries`),
    ``layernorm``; under ``key_prefix``."""
    out: list[O.Entry] = [O.VariableEntry('embeddings.cls_token', ('cls_token',)),
                          O.VariableEntry('embeddings.position_embeddings', ('pos_embed',))]
    out += E.conv_entries('embeddings.patch_embeddings.projection', ('patch_embed', 'proj'), model.patch_embed.proj)
    for i, blk in enumerate(model.blocks):
        out += vit_layer_entries(blk, f'encoder.layer.{i}.', ('blocks', i))
    out += E.layer_norm_entries('layernorm', ('norm',))
    return E.prefixed(out, key_prefix)


def _vit_model_entries(model: nnx.Module) -> list[O.Entry]:
    return vit_hf_entries(_vit_classifier(model, 'ViTModel'))


def _vit_cls_entries(model: nnx.Module) -> list[O.Entry]:
    model = _vit_classifier(model, 'ViTForImageClassification')
    return vit_hf_entries(model, 'vit.') + E.linear_entries('classifier', ('head',), model.head)


def _vit_mae_model(model: nnx.Module):
    from jaxmim.methods.mae import MaskedAutoencoderViT
    if not isinstance(model, MaskedAutoencoderViT):
        raise TypeError(f'ViTMAEForPreTraining holds a jaxmim MaskedAutoencoderViT, got {type(model).__name__}')
    _check_vit_blocks(model.blocks, 'ViTMAEForPreTraining encoder')
    _check_vit_blocks(model.decoder_blocks, 'ViTMAEForPreTraining decoder')
    return model


def vit_mae_hf_entries(model: nnx.Module) -> list[O.Entry]:
    """HF ``ViTMAEForPreTraining`` keys (transformers 5.23 ``save_pretrained`` spelling) of a jaxmim
    MAE: ``vit.embeddings.{cls_token, position_embeddings (fixed sin-cos buffer),
    patch_embeddings.projection}``, ``vit.encoder.layer.{i}.*``, ``vit.layernorm``,
    ``decoder.{mask_token, decoder_pos_embed (buffer), decoder_embed}``,
    ``decoder.decoder_encoder.layer.{i}.*`` (5.23's spelling of ``decoder.decoder_layers.{i}``),
    ``decoder.{decoder_norm, decoder_pred}``.

    Raises:
      TypeError: ``model`` is not a jaxmim MAE, or has a custom qk_scale.
    """
    model = _vit_mae_model(model)
    out: list[O.Entry] = [O.VariableEntry('vit.embeddings.cls_token', ('cls_token',)),
                          O.VariableEntry('vit.embeddings.position_embeddings', ('pos_embed',))]
    out += E.conv_entries('vit.embeddings.patch_embeddings.projection', ('patch_embed', 'proj'), model.patch_embed.proj)
    for i, blk in enumerate(model.blocks):
        out += vit_layer_entries(blk, f'vit.encoder.layer.{i}.', ('blocks', i))
    out += E.layer_norm_entries('vit.layernorm', ('norm',))
    out += [O.VariableEntry('decoder.mask_token', ('mask_token',)),
            O.VariableEntry('decoder.decoder_pos_embed', ('decoder_pos_embed',))]
    out += E.linear_entries('decoder.decoder_embed', ('decoder_embed',), model.decoder_embed)
    for i, blk in enumerate(model.decoder_blocks):
        out += vit_layer_entries(blk, f'decoder.decoder_encoder.layer.{i}.', ('decoder_blocks', i))
    out += E.layer_norm_entries('decoder.decoder_norm', ('decoder_norm',))
    out += E.linear_entries('decoder.decoder_pred', ('decoder_pred',), model.decoder_pred)
    return out


def _vit_kwargs_from_hf(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Encoder fields shared by ``ViTConfig`` and ``ViTMAEConfig`` -> jaxmim kwargs."""
    _gelu(cfg, defaults)
    dim = int(_field(cfg, defaults, 'hidden_size'))
    heads = int(_field(cfg, defaults, 'num_attention_heads'))
    if dim % heads:
        raise ValueError(f'config.json num_attention_heads={heads} does not divide hidden_size={dim}')
    return dict(img_size=_square(cfg, defaults, 'image_size'), patch_size=_square(cfg, defaults, 'patch_size'),
                in_chans=int(_field(cfg, defaults, 'num_channels')), embed_dim=dim,
                depth=int(_field(cfg, defaults, 'num_hidden_layers')), num_heads=heads,
                mlp_ratio=_ratio(int(_field(cfg, defaults, 'intermediate_size')), dim, 'intermediate_size'),
                norm_eps=float(_field(cfg, defaults, 'layer_norm_eps')))


def _vit_cls_kwargs_from_hf(cfg: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    d = VIT_CONFIG_DEFAULTS
    kw = _vit_kwargs_from_hf(cfg, d)
    kw.update(num_classes=int(num_classes), qkv_bias=bool(_field(cfg, d, 'qkv_bias')),
              drop_rate=float(_field(cfg, d, 'hidden_dropout_prob')),
              attn_drop_rate=float(_field(cfg, d, 'attention_probs_dropout_prob')), global_pool=False)
    return kw


def _vit_mae_kwargs_from_hf(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``ViTMAEConfig`` -> (jaxmim MAE architecture kwargs, method settings ``mask_ratio`` /
    ``norm_pix_loss``)."""
    d = VIT_MAE_CONFIG_DEFAULTS
    kw = _vit_kwargs_from_hf(cfg, d)
    if not bool(_field(cfg, d, 'qkv_bias')):
        raise ValueError('config.json qkv_bias: the jaxmim MAE (as the official one) has qkv biases; got false')
    dec = int(_field(cfg, d, 'decoder_hidden_size'))
    dec_heads = int(_field(cfg, d, 'decoder_num_attention_heads'))
    if dec % dec_heads:
        raise ValueError(f'config.json decoder_num_attention_heads={dec_heads} does not divide '
                         f'decoder_hidden_size={dec}')
    dec_mlp = int(_field(cfg, d, 'decoder_intermediate_size'))
    if dec_mlp != int(dec * kw['mlp_ratio']):
        raise ValueError(f'config.json decoder_intermediate_size={dec_mlp}: jaxmim MAE uses one mlp_ratio '
                         f'(intermediate_size / hidden_size = {kw["mlp_ratio"]}), so it must be '
                         f'{int(dec * kw["mlp_ratio"])}')
    if float(_field(cfg, d, 'hidden_dropout_prob')) or float(_field(cfg, d, 'attention_probs_dropout_prob')):
        raise ValueError('config.json hidden_dropout_prob / attention_probs_dropout_prob: the jaxmim MAE has no '
                         'dropout; both must be 0')
    kw.update(decoder_embed_dim=dec, decoder_depth=int(_field(cfg, d, 'decoder_num_hidden_layers')),
              decoder_num_heads=dec_heads)
    method = dict(mask_ratio=float(_field(cfg, d, 'mask_ratio')), norm_pix_loss=bool(_field(cfg, d, 'norm_pix_loss')))
    return kw, method


def _vit_encoder_fields(model: nnx.Module, norm: nnx.Module) -> dict[str, Any]:
    blk = model.blocks[0]
    return dict(hidden_size=model.embed_dim, num_hidden_layers=len(model.blocks),
                num_attention_heads=blk.attn.num_heads, intermediate_size=int(blk.mlp.fc1.kernel.shape[1]),
                hidden_act='gelu', initializer_range=0.02, layer_norm_eps=float(norm.epsilon),
                image_size=model.img_size, patch_size=model.patch_size, num_channels=model.in_chans)


# ------------------------------------------------------------------------------------------------
# config.json, import, build, usage
# ------------------------------------------------------------------------------------------------

def hf_config(model: nnx.Module, cls: str) -> dict[str, Any]:
    """The ``config.json`` of ``model`` exported as transformers class ``cls``.

    Holds ``architectures`` ``[cls]``, ``model_type`` and every field of the class's config
    (``SwinConfig`` / ``ViTConfig`` / ``ViTMAEConfig``) that shapes the architecture or its
    numerics, so that ``cls.from_pretrained(folder)`` rebuilds the same model: sizes, depths,
    heads, window, ``mlp_ratio`` / ``intermediate_size``, ``qkv_bias``, ``layer_norm_eps`` (the
    run's, not HF's 1e-12 ViT default), ``hidden_act='gelu'`` (exact), dropout and drop-path rates,
    ``encoder_stride`` (SimMIM), ``mask_ratio`` / ``norm_pix_loss`` (MAE), and ``id2label`` /
    ``label2id`` (``LABEL_i``, the run's class count) for the classifiers.

    Raises:
      KeyError: unknown class. TypeError: ``model`` does not map to ``cls`` (the reason named).
    """
    if cls not in HF_CLASSES:
        raise KeyError(f'--hf_model: unknown transformers class {cls!r}; accepted: {sorted(HF_CLASSES)}')
    source, model_type = HF_CLASSES[cls]
    O.get_source(source).entries_fn(model)   # TypeError when the model does not map
    head: dict[str, Any] = {'architectures': [cls], 'model_type': model_type}
    if cls in ('SwinModel', 'SwinForImageClassification'):
        fields = _swin_hf_fields(model)
    elif cls == 'SwinForMaskedImageModeling':
        fields = dict(_swin_hf_fields(model.encoder), encoder_stride=int(model.encoder_stride))
    elif cls in ('ViTModel', 'ViTForImageClassification'):
        blk = model.blocks[0]
        fields = dict(_vit_encoder_fields(model, model.norm), qkv_bias=blk.attn.qkv.bias is not None,
                      hidden_dropout_prob=float(model.drop_rate),
                      attention_probs_dropout_prob=float(blk.attn.attn_drop), encoder_stride=model.patch_size)
    else:   # ViTMAEForPreTraining
        dblk = model.decoder_blocks[0]
        fields = dict(_vit_encoder_fields(model, model.norm), qkv_bias=True, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, decoder_num_attention_heads=dblk.attn.num_heads,
                      decoder_hidden_size=model.decoder_embed_dim, decoder_num_hidden_layers=len(model.decoder_blocks),
                      decoder_intermediate_size=int(dblk.mlp.fc1.kernel.shape[1]), mask_ratio=float(model.mask_ratio),
                      norm_pix_loss=bool(model.norm_pix_loss))
    out = dict(head, **fields)
    if cls in _HEADED:
        out.update(_labels(model.num_classes))
    return out


def _config_dict(config: Mapping[str, Any] | None, cls: str) -> Mapping[str, Any]:
    if config is None:
        raise ValueError(f'--format=hf needs the config.json of a save_pretrained folder to rebuild {cls}')
    if not isinstance(config, Mapping):
        raise TypeError(f'the transformers configuration must be the config.json dict, got {type(config).__name__}')
    want = HF_CLASSES[cls][1]
    if config.get('model_type', want) != want:
        raise ValueError(f'config.json model_type: {cls} needs {want!r}, got {config.get("model_type")!r}')
    arch = config.get('architectures')
    if arch and cls not in arch:
        raise ValueError(f'config.json architectures: the folder holds {list(arch)}, not {cls}; '
                         f'pass --hf_model={arch[0]}')
    return config


def build_from_hf_config(cls: str, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` of transformers class ``cls`` -> (jaxmim model constructor kwargs, method
    settings) of the same architecture. The kwargs are those of
    :class:`jaxmim.models.swin.SwinTransformer` (Swin classes; the SimMIM encoder takes them
    without ``num_classes``), :class:`jaxmim.models.vit.VisionTransformer` (ViT classes) or
    :class:`jaxmim.methods.mae.MaskedAutoencoderViT`; the method settings are ``encoder_stride``
    (SimMIM) or ``mask_ratio`` / ``norm_pix_loss`` (MAE), ``{}`` for classifiers. Absent fields
    take the transformers 5.23.0 defaults (:data:`SWIN_CONFIG_DEFAULTS`, ...); other keys of the
    file (``dtype``, ``stage_names``, ...) are ignored.

    Raises:
      KeyError: unknown class. ValueError: a field jaxmim cannot represent (one line naming it).
    """
    if cls not in HF_CLASSES:
        raise KeyError(f'--hf_model: unknown transformers class {cls!r}; accepted: {sorted(HF_CLASSES)}')
    config = _config_dict(config, cls)
    if cls == 'SwinModel':
        return _swin_kwargs_from_hf(config, 0), {}
    if cls == 'SwinForImageClassification':
        n = _num_labels(config)
        if n <= 0:
            raise ValueError('config.json id2label: SwinForImageClassification needs at least one label')
        return _swin_kwargs_from_hf(config, n), {}
    if cls == 'SwinForMaskedImageModeling':
        kw = _swin_kwargs_from_hf(config, 0)
        del kw['num_classes']
        stride = int(_field(config, SWIN_CONFIG_DEFAULTS, 'encoder_stride'))
        final = kw['img_size'] // kw['patch_size'] // 2 ** (len(kw['depths']) - 1)
        if final * stride != kw['img_size']:
            raise ValueError(f'config.json encoder_stride={stride}: x final resolution {final} must equal image_size '
                             f'{kw["img_size"]}')
        return kw, {'encoder_stride': stride}
    if cls == 'ViTModel':
        return _vit_cls_kwargs_from_hf(config, 0), {}
    if cls == 'ViTForImageClassification':
        n = _num_labels(config)
        if n <= 0:
            raise ValueError('config.json id2label: ViTForImageClassification needs at least one label')
        return _vit_cls_kwargs_from_hf(config, n), {}
    return _vit_mae_kwargs_from_hf(config)


def _ctor_defaults(cls: type) -> dict[str, Any]:
    """Keyword defaults of ``cls.__init__`` following ``**kwargs`` up the MRO."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        if '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for p in params:
            if p.default is not inspect.Parameter.empty:
                out.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return out


def _norm(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _closest_registry_model(model_cls: type, kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registered jaxmim model of class ``model_cls`` whose defaults need the fewest overrides
    to give ``kwargs`` (ties: the first name), and those overrides."""
    from jaxmim.registry import list_models, model_class, model_defaults
    best = None
    base = _ctor_defaults(model_cls)
    for name in list_models():
        if model_class(name) is not model_cls:
            continue
        defaults = dict(base, **model_defaults(name))
        overrides = {k: v for k, v in kwargs.items() if k not in defaults or _norm(defaults[k]) != _norm(v)}
        if best is None or len(overrides) < len(best[1]):
            best = (name, overrides)
    if best is None:
        raise LookupError(f'no registered jaxmim model of class {model_cls.__name__}')
    return best[0], {k: list(v) if isinstance(v, tuple) else v for k, v in best[1].items()}


def hf_import(cls: str, config: Mapping[str, Any] | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``library_import_fn`` of the HF sources: transformers class ``cls`` and its ``config.json``
    -> ``(jaxmim registry model, model_overrides, method_overrides)`` of a run with the same
    architecture (the registered model of the right class needing the fewest overrides).

    Raises:
      KeyError: unknown class. ValueError: no ``config.json``, or a field jaxmim cannot
      represent (see :func:`build_from_hf_config`).
    """
    from jaxmim.methods.mae import MaskedAutoencoderViT
    from jaxmim.models.swin import SwinTransformer, SwinTransformerForSimMIM
    from jaxmim.models.vit import VisionTransformer
    kwargs, method = build_from_hf_config(cls, config)
    model_cls = {'SwinModel': SwinTransformer, 'SwinForImageClassification': SwinTransformer,
                 'SwinForMaskedImageModeling': SwinTransformerForSimMIM, 'ViTModel': VisionTransformer,
                 'ViTForImageClassification': VisionTransformer, 'ViTMAEForPreTraining': MaskedAutoencoderViT}[cls]
    name, overrides = _closest_registry_model(model_cls, kwargs)
    return name, overrides, dict(method)


def _build(cls: str) -> Callable[..., nnx.Module]:
    def build(*, rngs: nnx.Rngs, **config: Any) -> nnx.Module:
        kwargs, method = build_from_hf_config(cls, dict(config, architectures=[cls]))
        if cls == 'SwinForMaskedImageModeling':
            from jaxmim.methods.simmim import SimMIM
            from jaxmim.models.swin import SwinTransformerForSimMIM
            return SimMIM(SwinTransformerForSimMIM(**kwargs, rngs=rngs), method['encoder_stride'], rngs=rngs)
        if cls == 'ViTMAEForPreTraining':
            from jaxmim.methods.mae import MaskedAutoencoderViT
            return MaskedAutoencoderViT(**kwargs, **method, rngs=rngs)
        if cls.startswith('Swin'):
            from jaxmim.models.swin import SwinTransformer
            return SwinTransformer(**kwargs, rngs=rngs)
        from jaxmim.models.vit import VisionTransformer
        return VisionTransformer(**kwargs, head_init_std=0.02, rngs=rngs)
    build.__name__ = f'build_{HF_CLASSES[cls][0]}'
    build.__doc__ = (f'Source ``{HF_CLASSES[cls][0]}``: the jaxmim model of transformers ``{cls}(config)``; the '
                     'keyword arguments are the config.json fields (absent ones: transformers 5.23.0 defaults). '
                     'Raises ValueError for fields jaxmim cannot represent.')
    return build


_USAGE = {
    'SwinModel': 'SwinModel.from_pretrained(DIR); its pooler_output (average pool, no weights) is jaxmim\'s '
                 'forward_features',
    'SwinForImageClassification': 'SwinForImageClassification.from_pretrained(DIR); '
                                  'logits = model(pixel_values).logits',
    'SwinForMaskedImageModeling': 'SwinForMaskedImageModeling.from_pretrained(DIR); out = model(pixel_values, '
                                  'bool_masked_pos=mask.reshape(B, -1)) with jaxmim\'s SimMIM mask '
                                  '(B, H/patch, W/patch)',
    'ViTModel': 'ViTModel.from_pretrained(DIR, add_pooling_layer=False) (jaxmim has no pooler weights)',
    'ViTForImageClassification': 'ViTForImageClassification.from_pretrained(DIR); logits = model(pixel_values).logits',
    'ViTMAEForPreTraining': 'ViTMAEForPreTraining.from_pretrained(DIR); out = model(pixel_values, noise=noise) keeps '
                            'the patches of argsort(noise) like jaxmim\'s MAE (noise (B, L))',
}


def _usage(model: nnx.Module, cls: str, **create_kwargs: Any) -> str:
    del model, create_kwargs   # transformers takes everything from config.json
    return f'from transformers import {cls}; model = {_USAGE[cls]} (pixel_values NCHW float32)'


_REFERENCE = 'transformers 5.23.0 models/{}/modeling_{}.py {} (save_pretrained key layout)'

for _cls, _entries_fn, _method in (
        ('SwinModel', _swin_model_entries, None),
        ('SwinForImageClassification', _swin_cls_entries, None),
        ('SwinForMaskedImageModeling', _swin_mim_entries, 'simmim'),
        ('ViTModel', _vit_model_entries, None),
        ('ViTForImageClassification', _vit_cls_entries, None),
        ('ViTMAEForPreTraining', vit_mae_hf_entries, 'mae')):
    _type = HF_CLASSES[_cls][1]
    O.register_source(O.Source(
        name=HF_CLASSES[_cls][0],
        reference=_REFERENCE.format(_type, _type, _cls),
        build_fn=_build(_cls),
        entries_fn=_entries_fn,
        method=_method,
        library='hf',
        library_models=(_cls,),
        library_config_fn=hf_config,
        library_import_fn=hf_import,
        library_usage_fn=_usage))
