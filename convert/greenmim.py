"""GreenMIM (LayneH/GreenMIM) <-> jaxmim: official key tables and a pure-PyTorch twin (Swin).

Source ``greenmim_swin``: ``MaskedAutoencoder(encoder=SwinTransformer(**encoder), ...)`` of
``LayneH/GreenMIM@b981012 modeling/base_green_models.py:57-92`` around
``modeling/green_swin_models.py:287-407``, as :class:`jaxmim.methods.greenmim.GreenMIMSwin`
(constructors ``base_green_models.py:60-92`` and ``green_swin_models.py:313-318``; factories in
``modeling/model_factory.py``).

State-dict order (``torch.nn.Module.state_dict``): the wrapper's own parameters ``mask_token``
(1, 1, Dd) and ``decoder_pos_embed`` (1, L, Dd) (a ``requires_grad=False`` Parameter: stored), then
``encoder.*`` with the official Swin names (``patch_embed.proj``, ``patch_embed.norm``, per block
``norm1``, ``attn.relative_position_bias_table``, ``attn.relative_position_index`` (int64 buffer of
the block's clamped window), ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``; per
stage but the last ``downsample.reduction`` then ``downsample.norm``; ``norm``; no ``attn_mask``,
no ``head``), then ``decoder_embed``, ``decoder_blocks.{i}.*`` (timm ``Block``),
``decoder_norm``, ``decoder_pred``.

The twin (:class:`GreenMIMSwinTwin`) is written independently of the JAX grouping: each block
attends inside every (shifted) window of the visible tokens with a Python loop over windows
(dynamic shapes, no grouping, no -100 leakage), merging is the dense Swin merge on a zero-filled
canvas followed by a gather, and the decoder follows the official code (``decoder_placement``
``'official'``, the default) or the corrected raster placement. Call convention of the jaxmim model:
``twin(images NCHW, noise=(1 or B, L), plan=ignored)`` -> dict ``loss``, ``pred``, ``mask``.

**Official behaviour by default.** The sources build the model the official code runs:
``decoder_placement='official'`` unless asked otherwise, i.e. the decoder input is the official
``cat([x_vis, mask_tokens])`` unshuffled with ``ids_restore`` (``base_green_models.py:192-202``),
which puts the raster-ordered visible features at the units of ``ids_shuffle`` order, permuting
them among the visible units (the released checkpoints were trained with it;
``LayneH/GreenMIM@e33a941 models_swin.py:909-929`` has the same code). The correction is the
explicit jaxmim choice ``decoder_placement='raster'``, which is also the default of the jaxmim
training models (:class:`jaxmim.methods.greenmim.GreenMIMSwin`, registry and ``configs/``); a run
imported with ``convert.import`` therefore uses the registry default unless
``--model_overrides='{"decoder_placement": "official"}'`` is given.

Released checkpoints (v1 era) concatenate merged neighbours row-first; build with
``merge_order='v1'`` to load them layer-exactly (``LayneH/GreenMIM@e33a941 models_swin.py:244-246``
against the fixed order of ``LayneH/GreenMIM@b981012 modeling/green_swin_models.py:134-137``).

Source ``greenmim_twins``: ``MaskedAutoencoder(encoder=ALTGVT(**encoder), ...)`` around
``modeling/green_twins_models.py:382-408`` as :class:`jaxmim.methods.greenmim.twins.GreenMIMTwins`
(constructor ``green_twins_models.py:386-389``); twin :class:`GreenTwinsTwin` (sparse convs as
dense convs of the zero-filled canvas read at the active sites; see the section at the end of this
file).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
from flax import nnx

from convert import official as O
from convert import _entries as E
from convert._common import Mlp, mlp_ratio_of, square
from convert.swin import PatchEmbed, PatchMerging, WindowAttention
from convert.vit import Block, get_2d_sincos_pos_embed

__all__ = ['build_greenmim_swin', 'greenmim_swin_entries', 'GreenSwinTwin', 'GreenMIMSwinTwin',
           'build_greenmim_twins', 'greenmim_twins_entries', 'GreenTwinsTwin', 'SPCONV',
           'v1_to_swin_merge_order']


# ------------------------------------------------------------------------------------------------
# PyTorch twin
# ------------------------------------------------------------------------------------------------

class _TwinBlock(nn.Module):
    """Official ``SwinTransformerBlock`` state (norm1, attn, norm2, mlp) with a per-window
    attention over visible tokens. ``window_size``/``shift_size`` after the clamp rule."""

    def __init__(self, dim, num_heads, window_size, shift_size, mlp_ratio, qkv_bias, norm_layer):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, (window_size, window_size), num_heads, qkv_bias)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def window_attention(self, y: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``y`` (B, N, C) visible tokens, ``coords`` (N, 2) -> (B, N, C): token i attends to the
        visible tokens of its window of the offset partition (boundaries at s, s + ws, ...)."""
        ws, s = self.window_size, self.shift_size
        a = self.attn
        B, N, C = y.shape
        nh = a.num_heads
        shifted = coords + (ws - s) % ws
        win = (shifted[:, 0] // ws) * 10_000 + shifted[:, 1] // ws
        local = (shifted % ws)
        local = local[:, 0] * ws + local[:, 1]
        qkv = a.qkv(y).reshape(B, N, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * a.scale, qkv[1], qkv[2]
        out = torch.zeros(B, nh, N, C // nh, dtype=y.dtype, device=y.device)
        for w in torch.unique(win):
            idx = torch.nonzero(win == w).reshape(-1)
            lo = local[idx]
            bias = a.relative_position_bias_table[a.relative_position_index[lo][:, lo].reshape(-1)]
            bias = bias.reshape(len(idx), len(idx), nh).permute(2, 0, 1)
            attn = (q[:, :, idx] @ k[:, :, idx].transpose(-2, -1) + bias[None]).softmax(-1)
            out[:, :, idx] = attn @ v[:, :, idx]
        return a.proj(out.transpose(1, 2).reshape(B, N, C))

    def forward(self, x, coords):
        x = x + self.window_attention(self.norm1(x), coords)
        return x + self.mlp(self.norm2(x))


class _TwinLayer(nn.Module):
    def __init__(self, dim, res, depth, num_heads, window_size, mlp_ratio, qkv_bias, norm_layer, downsample):
        super().__init__()
        if res <= window_size:
            ws, shift = res, 0
        else:
            ws, shift = window_size, window_size // 2
        self.blocks = nn.ModuleList([_TwinBlock(dim, num_heads, ws, 0 if i % 2 == 0 else shift, mlp_ratio, qkv_bias,
                                                norm_layer) for i in range(depth)])
        self.downsample = PatchMerging((res, res), dim, norm_layer) if downsample else None


class GreenSwinTwin(nn.Module):
    """Visible-token Swin with the official ``SwinTransformer`` state (``green_swin_models.py``).

    ``forward(images (B, C, H, W), keep_units (U*U,) bool)`` -> (B, len_keep, num_features) in
    raster order of the visible units. ``merge_order`` ``'swin'`` (HEAD) or ``'v1'`` (row-first).
    """

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=nn.LayerNorm, ape=False,
                 patch_norm=True, use_checkpoint=False, merge_order='swin'):
        super().__init__()
        del num_classes, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, ape, use_checkpoint
        self.patch_size, self.merge_order = patch_size, merge_order
        self.num_layers = len(depths)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer if patch_norm else None)
        grid = img_size // patch_size
        self.grid = grid
        self.layers = nn.ModuleList([
            _TwinLayer(embed_dim * 2 ** i, grid // 2 ** i, depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias,
                       norm_layer, i < self.num_layers - 1) for i in range(self.num_layers)])
        self.num_features = embed_dim * 2 ** (self.num_layers - 1)
        self.norm = norm_layer(self.num_features)

    def forward(self, images: torch.Tensor, keep_units: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)                              # (B, grid^2, C)
        units = int(round(keep_units.numel() ** 0.5))
        vis = keep_units.reshape(units, units)
        res = self.grid
        for i, layer in enumerate(self.layers):
            rep = res // units
            vmap = vis.repeat_interleave(rep, 0).repeat_interleave(rep, 1).reshape(-1)
            pos = torch.nonzero(vmap).reshape(-1)
            if i == 0:
                x = x[:, pos]
            coords = torch.stack([pos // res, pos % res], -1)
            for blk in layer.blocks:
                x = blk(x, coords)
            if layer.downsample is not None:
                B, _, C = x.shape
                canvas = x.new_zeros(B, res * res, C)
                canvas[:, pos] = x
                canvas = canvas.reshape(B, res, res, C)
                parts = [canvas[:, 0::2, 0::2], canvas[:, 1::2, 0::2], canvas[:, 0::2, 1::2], canvas[:, 1::2, 1::2]]
                if self.merge_order == 'v1':
                    parts = [parts[0], parts[2], parts[1], parts[3]]
                merged = torch.cat(parts, -1).reshape(B, -1, 4 * C)
                res //= 2
                vnext = vis.repeat_interleave(res // units, 0).repeat_interleave(res // units, 1).reshape(-1)
                x = layer.downsample.reduction(layer.downsample.norm(merged[:, torch.nonzero(vnext).reshape(-1)]))
        return self.norm(x)


class GreenMIMSwinTwin(nn.Module):
    """Official ``MaskedAutoencoder`` state around :class:`GreenSwinTwin`.

    ``forward(images NCHW, noise (1 or B, L), plan=None)`` -> ``{'loss', 'pred' (B, L, p*p*C),
    'mask' (B, L)}``; one mask per batch from ``noise[:1]`` (official ``random_masking``).
    ``decoder_placement`` ``'official'`` (default: ``base_green_models.py:192-202``) or
    ``'raster'`` (the correction).
    """

    def __init__(self, encoder: GreenSwinTwin, embed_dim, patch_size, in_chans=3, decoder_num_patches=196,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, norm_layer=nn.LayerNorm,
                 norm_pix_loss=False, mlp_ratio=4, mask_ratio=0.75, decoder_placement='official'):
        super().__init__()
        self.encoder = encoder
        self.num_patches, self.final_patch_size = decoder_num_patches, patch_size
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        grid = int(round(decoder_num_patches ** 0.5))
        self.decoder_pos_embed = nn.Parameter(
            torch.from_numpy(get_2d_sincos_pos_embed(decoder_embed_dim, grid)).float()[None], requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                                                   norm_layer=norm_layer) for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
        self.norm_pix_loss, self.mask_ratio, self.decoder_placement = norm_pix_loss, mask_ratio, decoder_placement

    def forward(self, images: torch.Tensor, noise: torch.Tensor, plan: Optional[torch.Tensor] = None,
                train: bool = False) -> dict:
        del plan, train
        B = images.shape[0]
        L = self.num_patches
        len_keep = int(L * (1 - self.mask_ratio))
        ids_shuffle = torch.argsort(noise[:1], dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
        mask = torch.ones(1, L, device=noise.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore).expand(B, L)
        keep = mask[0] == 0
        latent = self.encoder(images, keep)
        x = self.decoder_embed(latent)
        tokens = self.mask_token.expand(B, L, -1)
        if self.decoder_placement == 'official':   # base_green_models.py:192-202
            x_ = torch.cat([x, tokens[:, len_keep:]], 1)
            x = torch.gather(x_, 1, ids_restore.expand(B, L)[..., None].expand(-1, -1, x.shape[-1]))
        else:
            dec = tokens.clone()
            dec[:, torch.nonzero(keep).reshape(-1)] = x
            x = dec
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        p = self.final_patch_size
        h = images.shape[2] // p
        target = images.reshape(B, images.shape[1], h, p, h, p)
        target = torch.einsum('nchpwq->nhwpqc', target).reshape(B, h * h, -1)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(-1)
        loss = (loss * mask).sum() / mask.sum()
        return {'loss': loss, 'pred': pred, 'mask': mask}


def v1_to_swin_merge_order(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrites a checkpoint trained with v1's row-first patch merging
    [(0,0),(0,1),(1,0),(1,1)] into Swin's order [(0,0),(1,0),(0,1),(1,1)] (self-inverse).

    Swaps the 2nd and 3rd C-sized blocks of the 4C axis of every ``*downsample.norm.{weight,bias}``
    and of the input axis of ``*downsample.reduction.weight`` (v1 order:
    ``LayneH/GreenMIM@e33a941 models_swin.py:244-246``; Swin order: ``LayneH/GreenMIM@b981012
    modeling/green_swin_models.py:134-137``); every
    other tensor is returned as is. Works with or without the ``encoder.`` prefix, on torch
    tensors or NumPy arrays.

    Raises:
      ValueError: a 4C axis that is not a multiple of 4.
    """
    out = dict(state_dict)
    for key, value in state_dict.items():
        if '.downsample.' not in f'.{key}' or not key.endswith(('norm.weight', 'norm.bias', 'reduction.weight')):
            continue
        n = value.shape[-1]
        if n % 4:
            raise ValueError(f'{key}: last axis {n} is not 4C')
        c = n // 4
        order = np.concatenate([np.arange(c), np.arange(2 * c, 3 * c), np.arange(c, 2 * c), np.arange(3 * c, 4 * c)])
        out[key] = value[..., torch.from_numpy(order)] if isinstance(value, torch.Tensor) else value[..., order]
    return out


# ------------------------------------------------------------------------------------------------
# Source
# ------------------------------------------------------------------------------------------------

def build_greenmim_swin(*, rngs: nnx.Rngs, encoder: Mapping[str, Any], embed_dim: int, patch_size: int = 32,
                        in_chans: int = 3, decoder_num_patches: int = 49, decoder_embed_dim: int = 512,
                        decoder_depth: int = 1, decoder_num_heads: int = 16, norm_layer: Any = None,
                        norm_pix_loss: bool = False, mlp_ratio: float = 4.0, mask_ratio: float = 0.75,
                        decoder_placement: str = 'official', merge_order: str = 'swin', mask_mode: str = 'batch',
                        **ignored: Any) -> nnx.Module:
    """Source ``'greenmim_swin'``: official ``MaskedAutoencoder(encoder=SwinTransformer(**encoder),
    embed_dim, patch_size, ...)`` (``model_factory.py:25-140``) as
    :class:`jaxmim.methods.greenmim.GreenMIMSwin`.

    ``encoder`` holds the official Swin arguments (``img_size``, ``patch_size``, ``embed_dim``,
    ``depths``, ``num_heads``, ``window_size``, ``mlp_ratio``, ``qkv_bias``, ``norm_layer`` ...);
    the wrapper's ``norm_layer`` is the decoder's. ``mask_ratio`` is the forward's argument;
    ``decoder_placement``, ``merge_order``, ``mask_mode`` are jaxmim choices (see the model) whose
    defaults are the official behaviour: ``'official'`` decoder placement (the concatenate-and-
    unshuffle of ``base_green_models.py:192-202``; pass ``'raster'`` for the correction), HEAD's
    Swin merge order (``green_swin_models.py:134-137``; ``'v1'`` for the released v1
    checkpoints), one mask per batch (``base_green_models.py:160-181``).
    Extra keyword arguments are swallowed, as the official ``**kwargs``.

    Raises:
      ValueError: ``embed_dim`` differing from the encoder's output width, a decoder grid that is
        not the mask-unit grid, encoder and decoder LayerNorm eps that differ, or sizes the model
        rejects.
    """
    from jaxmim.methods.greenmim import GreenMIMSwin
    del ignored
    enc = dict(encoder)
    depths = tuple(int(d) for d in enc.get('depths', (2, 2, 6, 2)))
    enc_embed = int(enc.get('embed_dim', 96))
    if enc_embed * 2 ** (len(depths) - 1) != int(embed_dim):
        raise ValueError(f'embed_dim {embed_dim} must equal the encoder output width {enc_embed * 2 ** (len(depths) - 1)}')
    img_size = square(enc.get('img_size', 224), 'img_size', 'GreenMIM Swin')
    if (img_size // int(patch_size)) ** 2 != int(decoder_num_patches):
        raise ValueError(f'decoder_num_patches {decoder_num_patches} must be (img_size / patch_size)^2 = '
                         f'{(img_size // int(patch_size)) ** 2}')
    eps_enc, eps_dec = E.layer_norm_eps(enc.get('norm_layer')), E.layer_norm_eps(norm_layer)
    if eps_enc != eps_dec:
        raise ValueError(f'encoder and decoder LayerNorm eps differ ({eps_enc} vs {eps_dec}); jaxmim uses one norm_eps')
    return GreenMIMSwin(img_size=img_size, patch_size=square(enc.get('patch_size', 4), 'patch_size', 'GreenMIM Swin'),
                        in_chans=int(in_chans), embed_dim=enc_embed, depths=depths,
                        num_heads=tuple(int(h) for h in enc.get('num_heads', (3, 6, 12, 24))),
                        window_size=int(enc.get('window_size', 7)), mlp_ratio=float(enc.get('mlp_ratio', 4.0)),
                        qkv_bias=bool(enc.get('qkv_bias', True)), qk_scale=enc.get('qk_scale'),
                        drop_path_rate=float(enc.get('drop_path_rate', 0.0)), norm_eps=eps_enc,
                        mask_unit=int(patch_size), decoder_embed_dim=int(decoder_embed_dim),
                        decoder_depth=int(decoder_depth), decoder_num_heads=int(decoder_num_heads),
                        norm_pix_loss=bool(norm_pix_loss), mask_ratio=float(mask_ratio), mask_mode=mask_mode,
                        decoder_placement=decoder_placement, merge_order=merge_order, rngs=rngs)


def greenmim_swin_entries(model: nnx.Module) -> list[O.Entry]:
    """Official state_dict entries of a jaxmim :class:`~jaxmim.methods.greenmim.GreenMIMSwin`, in
    official order (module docstring).

    Raises:
      TypeError: another model type.
    """
    from jaxmim.methods.greenmim import GreenMIMSwin
    from jaxmim.models.windows import relative_position_index
    from jaxmim.methods.greenmim import GreenSwinTransformer
    if not isinstance(model, GreenMIMSwin) or not isinstance(model.encoder, GreenSwinTransformer):
        raise TypeError(f'source greenmim_swin expects a jaxmim GreenMIMSwin (Swin encoder), got {type(model).__name__}')
    enc = model.encoder
    out: list[O.Entry] = [O.VariableEntry('mask_token', ('mask_token',)),
                          O.VariableEntry('decoder_pos_embed', ('decoder_pos_embed',))]
    e: list[O.Entry] = E.conv_entries('patch_embed.proj', ('patch_embed', 'proj'), enc.patch_embed.proj)
    e += E.layer_norm_entries('patch_embed.norm', ('patch_embed', 'norm'))
    for li, layer in enumerate(enc.layers):
        for bi, blk in enumerate(layer.blocks):
            k, p = f'layers.{li}.blocks.{bi}.', ('layers', li, 'blocks', bi)
            e += E.layer_norm_entries(k + 'norm1', p + ('norm1',))
            e.append(O.VariableEntry(k + 'attn.relative_position_bias_table', p + ('attn', 'relative_position_bias_table')))
            e.append(O.BufferEntry(k + 'attn.relative_position_index',
                                   relative_position_index(blk.window_size).astype(np.int64), f'window {blk.window_size}'))
            e += E.linear_entries(k + 'attn.qkv', p + ('attn', 'qkv'), blk.attn.qkv)
            e += E.linear_entries(k + 'attn.proj', p + ('attn', 'proj'), blk.attn.proj)
            e += E.layer_norm_entries(k + 'norm2', p + ('norm2',))
            e += E.linear_entries(k + 'mlp.fc1', p + ('mlp', 'fc1'), blk.mlp.fc1)
            e += E.linear_entries(k + 'mlp.fc2', p + ('mlp', 'fc2'), blk.mlp.fc2)
        if layer.downsample is not None:
            k, p = f'layers.{li}.downsample.', ('layers', li, 'downsample')
            e += E.linear_entries(k + 'reduction', p + ('reduction',), layer.downsample.reduction)
            e += E.layer_norm_entries(k + 'norm', p + ('norm',))
    e += E.layer_norm_entries('norm', ('norm',))
    out += E.prefixed(e, 'encoder.', ('encoder',))
    return out + _decoder_entries(model)


def _decoder_entries(model: nnx.Module) -> list:
    """Key-table entries of the MAE decoder (``decoder_embed``, ``decoder_blocks.*``,
    ``decoder_norm``, ``decoder_pred``), shared by the Swin and Twins sources."""
    from convert.vit import vit_block_entries

    out = E.linear_entries('decoder_embed', ('decoder_embed',), model.decoder_embed)
    for i, blk in enumerate(model.decoder_blocks):
        out += vit_block_entries(blk, f'decoder_blocks.{i}.', ('decoder_blocks', i))
    out += E.layer_norm_entries('decoder_norm', ('decoder_norm',))
    out += E.linear_entries('decoder_pred', ('decoder_pred',), model.decoder_pred)
    return out


def greenmim_swin_twin(model: nnx.Module) -> nn.Module:
    """The twin of a jaxmim GreenMIMSwin, configured from its attributes and variable shapes."""
    enc = model.encoder
    norm_layer = functools.partial(nn.LayerNorm, eps=enc.norm.epsilon)
    blk = enc.layers[0].blocks[0]
    tenc = GreenSwinTwin(img_size=enc.img_size, patch_size=enc.patch_size, in_chans=enc.in_chans,
                         embed_dim=enc.embed_dim, depths=list(enc.depths), num_heads=list(enc.num_heads),
                         window_size=enc.window_size, mlp_ratio=blk.mlp.fc1.kernel.shape[1] / enc.embed_dim,
                         qkv_bias=blk.attn.qkv.bias is not None, norm_layer=norm_layer, merge_order=enc.merge_order)
    return _wrap_twin(model, tenc, norm_layer)


def _wrap_twin(model, tenc, norm_layer) -> 'GreenMIMSwinTwin':
    """The MAE wrapper twin (decoder, loss, masking) around an encoder twin ``tenc``, sized from the
    jaxmim pre-training model's decoder (shared by the Swin and Twins sources)."""
    dblk = model.decoder_blocks[0]
    return GreenMIMSwinTwin(tenc, model.encoder.num_features, model.mask_unit, model.in_chans, model.num_patches,
                            model.decoder_embed.kernel.shape[1], len(model.decoder_blocks), dblk.attn.num_heads,
                            norm_layer, model.norm_pix_loss, dblk.mlp.fc1.kernel.shape[1] // dblk.mlp.fc1.kernel.shape[0],
                            model.mask_ratio, model.decoder_placement)


O.register_source(O.Source(
    name='greenmim_swin',
    reference='LayneH/GreenMIM@b981012 modeling/base_green_models.py MaskedAutoencoder(green_swin_models.SwinTransformer)',
    build_fn=build_greenmim_swin,
    entries_fn=greenmim_swin_entries,
    method='greenmim',
    twin_fn=greenmim_swin_twin,
    # an imported released checkpoint runs the decoder as trained (the training models default to
    # the corrected 'raster' placement; --model_overrides='{"decoder_placement": "raster"}' for it)
    import_model_overrides={'decoder_placement': 'official'}))


# ------------------------------------------------------------------------------------------------
# Twins-SVT (ALTGVT): source 'greenmim_twins'
# ------------------------------------------------------------------------------------------------
#
# Official ``MaskedAutoencoder(encoder=ALTGVT(**encoder), ...)`` (``model_factory.py:142-175``,
# ``green_twins_models.py:382-408``) as :class:`jaxmim.methods.greenmim.twins.GreenMIMTwins`.
# Encoder state-dict order (module registration order of ``PyramidVisionTransformer`` / ``CPVTV2``
# / ``ALTGVT``, which deletes and re-adds ``blocks``): ``patch_embeds.{s}.{proj, norm}``, ``norm``,
# ``pos_block.{s}.proj.0``, ``blocks.{s}.{j}``; inside a block (timm ``Block`` whose ``attn`` is
# deleted and re-added) ``norm1``, ``norm2``, ``mlp.{fc1, fc2}``, ``attn.*`` (LSA ``qkv``, ``proj``;
# GSA ``q``, ``kv``, ``proj`` [, ``sr``, ``norm``]). Sparse convs (``patch_embeds.{s>=1}.proj``,
# ``attn.sr``) are spconv 2.x ``SparseConv2d`` weights, layout (C_out, kh, kw, C_in) ("KRSC";
# ``sparse_conv_spconv.py:21-29`` subclasses ``spconv.SparseConv2d``), plus a bias.

SPCONV = O.Layout('spconv2_krsc', (3, 0, 1, 2))
"""spconv 2.x ``SparseConv2d.weight`` (C_out, kh, kw, C_in) <-> Flax kernel (kh, kw, C_in, C_out)."""


def _dense_conv_at_active_sites(x: torch.Tensor, vis: torch.Tensor, weight_krsc: torch.Tensor,
                                bias: Optional[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """spconv's regular ``SparseConv2d`` (kernel = stride = k, no padding) evaluated densely: ``x``
    (B, N, C_in) active features in raster order of the (H, W) bool map ``vis`` -> the dense conv of
    the zero-filled canvas at every output site whose receptive field touches an active input
    (raster order) (B, N_out, C_out), and the new (H/k, W/k) active map."""
    B, _, C = x.shape
    H, W = vis.shape
    canvas = x.new_zeros(B, C, H, W)
    canvas[:, :, vis] = x.transpose(1, 2)
    y = torch.nn.functional.conv2d(canvas, weight_krsc.permute(0, 3, 1, 2), bias, stride=k)
    active = torch.nn.functional.max_pool2d(vis.float()[None, None], k, k)[0, 0] > 0
    return y[:, :, active].transpose(1, 2), active


class _SparseConv(nn.Module):
    """spconv ``SparseConv2d(cin, cout, k, stride=k)`` state: ``weight`` (cout, k, k, cin), ``bias``."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.randn(cout, k, k, cin) * 0.02)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, vis):
        return _dense_conv_at_active_sites(x, vis, self.weight, self.bias, self.k)


class _TwinsPatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim, norm_layer):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, images):
        return self.norm(self.proj(images).flatten(2).transpose(1, 2))


class _TwinsSparsePatchEmbed(nn.Module):
    def __init__(self, cin, cout, norm_layer):
        super().__init__()
        self.proj = _SparseConv(cin, cout, 2)
        self.norm = norm_layer(cout)

    def forward(self, x, vis):
        y, active = self.proj(x, vis)
        return self.norm(y), active


class _TwinsPosCNN(nn.Module):
    """``PosCNN``: ``proj.0`` depthwise 3x3 Conv2d; conv of the zero-filled canvas at the active
    sites, without (official) or with the residual."""

    def __init__(self, dim, residual):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim))
        self.residual = residual

    def forward(self, x, vis):
        B, N, C = x.shape
        canvas = x.new_zeros(B, C, *vis.shape)
        canvas[:, :, vis] = x.transpose(1, 2)
        y = self.proj[0](canvas)[:, :, vis].transpose(1, 2)
        return y + x if self.residual else y


class _TwinsAttnLSA(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, y, coords, ws):
        """Attention inside each window of the unshifted ``ws`` partition, a Python loop over
        the windows that hold visible tokens (no grouping, no padding, no bias)."""
        B, N, C = y.shape
        nh = self.num_heads
        win = (coords[:, 0] // ws) * 100_000 + coords[:, 1] // ws
        qkv = self.qkv(y).reshape(B, N, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        out = torch.zeros(B, nh, N, C // nh, dtype=y.dtype, device=y.device)
        for w in torch.unique(win):
            idx = torch.nonzero(win == w).reshape(-1)
            attn = (q[:, :, idx] @ k[:, :, idx].transpose(-2, -1)).softmax(-1)
            out[:, :, idx] = attn @ v[:, :, idx]
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class _TwinsAttnGSA(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias, sr_ratio, norm_layer):
        super().__init__()
        self.num_heads, self.scale, self.sr_ratio = num_heads, (dim // num_heads) ** -0.5, sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = _SparseConv(dim, dim, sr_ratio)
            self.norm = norm_layer(dim)

    def forward(self, y, vis):
        B, N, C = y.shape
        nh = self.num_heads
        q = self.q(y).reshape(B, N, nh, C // nh).permute(0, 2, 1, 3)
        src = self.norm(self.sr(y, vis)[0]) if self.sr_ratio > 1 else y
        kv = self.kv(src).reshape(B, -1, 2, nh, C // nh).permute(2, 0, 3, 1, 4)
        attn = ((q @ kv[0].transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ kv[1]).transpose(1, 2).reshape(B, N, C))


class _TwinsBlock(nn.Module):
    """``GroupBlock`` state order: ``norm1``, ``norm2``, ``mlp``, ``attn`` (re-added last)."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, norm_layer, sr_ratio, lsa):
        super().__init__()
        self.lsa = lsa
        self.norm1 = norm_layer(dim)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn = _TwinsAttnLSA(dim, num_heads, qkv_bias) if lsa else _TwinsAttnGSA(dim, num_heads, qkv_bias,
                                                                                       sr_ratio, norm_layer)

    def forward(self, x, vis, coords, ws):
        y = self.norm1(x)
        x = x + (self.attn(y, coords, ws) if self.lsa else self.attn(y, vis))
        return x + self.mlp(self.norm2(x))


class GreenTwinsTwin(nn.Module):
    """Visible-token Twins-SVT (``ALTGVT``) with the official state (``green_twins_models.py``),
    pure PyTorch: sparse convs are dense convs of the zero-filled canvas read at the active sites
    (spconv's regular-conv rule), LSA attends per window with a loop, GSA reduces with the sparse
    conv, PEG convolves the canvas (``peg_residual`` False = official, no residual).

    ``forward(images (B, C, H, W), keep_units (U*U,) bool)`` -> (B, len_keep, embed_dims[-1]) in
    raster order of the visible units.
    """

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dims=(64, 128, 256),
                 num_heads=(1, 2, 4), mlp_ratios=(4, 4, 4), qkv_bias=False, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=nn.LayerNorm, depths=(4, 4, 4),
                 sr_ratios=(4, 2, 1), wss=(7, 7, 7), peg_residual=False):
        super().__init__()
        del num_classes, qk_scale, drop_rate, attn_drop_rate, drop_path_rate
        self.grid, self.window_size, self.depths = img_size // patch_size, wss[0], tuple(depths)
        n = len(depths)
        self.patch_embeds = nn.ModuleList(
            [_TwinsPatchEmbed(patch_size, in_chans, embed_dims[0], norm_layer)]
            + [_TwinsSparsePatchEmbed(embed_dims[s - 1], embed_dims[s], norm_layer) for s in range(1, n)])
        self.norm = norm_layer(embed_dims[-1])
        self.pos_block = nn.ModuleList([_TwinsPosCNN(d, peg_residual) for d in embed_dims])
        self.blocks = nn.ModuleList([
            nn.ModuleList([_TwinsBlock(embed_dims[s], num_heads[s], mlp_ratios[s], qkv_bias, norm_layer, sr_ratios[s],
                                       j % 2 == 0) for j in range(depths[s])]) for s in range(n)])

    def forward(self, images: torch.Tensor, keep_units: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeds[0](images)                         # (B, grid^2, C0)
        units = int(round(keep_units.numel() ** 0.5))
        rep = self.grid // units
        vis = keep_units.reshape(units, units).repeat_interleave(rep, 0).repeat_interleave(rep, 1)
        x = x[:, vis.reshape(-1)]
        for s, stage in enumerate(self.blocks):
            if s > 0:
                x, vis = self.patch_embeds[s](x, vis)
            pos = torch.nonzero(vis.reshape(-1)).reshape(-1)
            coords = torch.stack([pos // vis.shape[1], pos % vis.shape[1]], -1)
            for j, blk in enumerate(stage):
                x = blk(x, vis, coords, self.window_size)
                if j == 0:
                    x = self.pos_block[s](x, vis)
        return self.norm(x)


def build_greenmim_twins(*, rngs: nnx.Rngs, encoder: Mapping[str, Any], embed_dim: int, patch_size: int = 32,
                         in_chans: int = 3, decoder_num_patches: int = 49, decoder_embed_dim: int = 512,
                         decoder_depth: int = 1, decoder_num_heads: int = 16, norm_layer: Any = None,
                         norm_pix_loss: bool = False, mlp_ratio: float = 4.0, mask_ratio: float = 0.75,
                         decoder_placement: str = 'official', mask_mode: str = 'batch', peg_residual: bool = False,
                         **ignored: Any) -> nnx.Module:
    """Source ``'greenmim_twins'``: official ``MaskedAutoencoder(encoder=ALTGVT(**encoder),
    embed_dim, patch_size, ...)`` (``model_factory.py:142-175``) as
    :class:`jaxmim.methods.greenmim.twins.GreenMIMTwins`.

    ``encoder`` holds the official ``ALTGVT`` arguments (``img_size``, ``patch_size``,
    ``in_chans``, ``embed_dims``, ``num_heads``, ``mlp_ratios``, ``depths``, ``wss``,
    ``sr_ratios``, ``qkv_bias``, ``qk_scale``, ``drop_path_rate``, ``norm_layer``; ALTGVT defaults
    otherwise). ``mask_ratio`` is the forward's argument; ``decoder_placement``, ``mask_mode`` and
    ``peg_residual`` are jaxmim choices whose defaults are the official behaviour (``'official'``
    decoder placement as :func:`build_greenmim_swin`; one mask per batch; the PEG without its
    residual, ``green_twins_models.py:285-287``). Extra keyword arguments are swallowed.

    Raises:
      ValueError: ``embed_dim`` differing from ``embed_dims[-1]``, a decoder grid that is not the
        mask-unit grid, decoder ``mlp_ratio`` other than 4, encoder and decoder LayerNorm eps
        that differ, or sizes the model rejects.
    """
    from jaxmim.methods.greenmim.twins import GreenMIMTwins
    del ignored
    enc = dict(encoder)
    embed_dims = tuple(int(d) for d in enc.get('embed_dims', (64, 128, 256)))
    if embed_dims[-1] != int(embed_dim):
        raise ValueError(f'embed_dim {embed_dim} must equal the encoder output width embed_dims[-1] = {embed_dims[-1]}')
    img_size = square(enc.get('img_size', 224), 'img_size', 'GreenMIM Twins')
    if (img_size // int(patch_size)) ** 2 != int(decoder_num_patches):
        raise ValueError(f'decoder_num_patches {decoder_num_patches} must be (img_size / patch_size)^2 = '
                         f'{(img_size // int(patch_size)) ** 2}')
    if float(mlp_ratio) != 4.0:
        raise ValueError(f'decoder mlp_ratio must be 4 (the jaxmim GreenMIM-Twins decoder), got {mlp_ratio}')
    eps_enc, eps_dec = E.layer_norm_eps(enc.get('norm_layer')), E.layer_norm_eps(norm_layer)
    if eps_enc != eps_dec:
        raise ValueError(f'encoder and decoder LayerNorm eps differ ({eps_enc} vs {eps_dec}); jaxmim uses one norm_eps')
    return GreenMIMTwins(
        img_size=img_size, patch_size=square(enc.get('patch_size', 4), 'patch_size', 'GreenMIM Twins'),
        in_chans=int(enc.get('in_chans', in_chans)), embed_dims=embed_dims,
        num_heads=tuple(int(h) for h in enc.get('num_heads', (1, 2, 4))),
        mlp_ratios=tuple(float(r) for r in enc.get('mlp_ratios', (4, 4, 4))),
        depths=tuple(int(d) for d in enc.get('depths', (4, 4, 4))),
        sr_ratios=tuple(int(r) for r in enc.get('sr_ratios', (4, 2, 1))),
        wss=tuple(int(w) for w in enc.get('wss', (7, 7, 7))), qkv_bias=bool(enc.get('qkv_bias', False)),
        qk_scale=enc.get('qk_scale'), drop_path_rate=float(enc.get('drop_path_rate', 0.0)), norm_eps=eps_enc,
        peg_residual=bool(peg_residual), mask_unit=int(patch_size), decoder_embed_dim=int(decoder_embed_dim),
        decoder_depth=int(decoder_depth), decoder_num_heads=int(decoder_num_heads), norm_pix_loss=bool(norm_pix_loss),
        mask_ratio=float(mask_ratio), mask_mode=mask_mode, decoder_placement=decoder_placement, rngs=rngs)


def _sparse_conv_entries(key: str, path: tuple[Any, ...]) -> list[O.Entry]:
    return [O.VariableEntry(key + '.weight', path + ('kernel',), SPCONV), O.VariableEntry(key + '.bias', path + ('bias',))]


def greenmim_twins_entries(model: nnx.Module) -> list[O.Entry]:
    """Official state_dict entries of a jaxmim
    :class:`~jaxmim.methods.greenmim.twins.GreenMIMTwins`, in official order (see above).

    Raises:
      TypeError: another model type.
    """
    from jaxmim.methods.greenmim.twins import GreenMIMTwins
    if not isinstance(model, GreenMIMTwins):
        raise TypeError(f'source greenmim_twins expects a jaxmim GreenMIMTwins, got {type(model).__name__}')
    enc = model.encoder
    out: list[O.Entry] = [O.VariableEntry('mask_token', ('mask_token',)),
                          O.VariableEntry('decoder_pos_embed', ('decoder_pos_embed',))]
    e: list[O.Entry] = E.conv_entries('patch_embeds.0.proj', ('patch_embeds', 0, 'proj'), enc.patch_embeds[0].proj)
    e += E.layer_norm_entries('patch_embeds.0.norm', ('patch_embeds', 0, 'norm'))
    for s in range(1, enc.num_layers):
        e += _sparse_conv_entries(f'patch_embeds.{s}.proj', ('patch_embeds', s, 'proj'))
        e += E.layer_norm_entries(f'patch_embeds.{s}.norm', ('patch_embeds', s, 'norm'))
    e += E.layer_norm_entries('norm', ('norm',))
    for s in range(enc.num_layers):
        e += E.conv_entries(f'pos_block.{s}.proj.0', ('pos_block', s, 'proj', 0), enc.pos_block[s].proj[0])
    for s, stage in enumerate(enc.blocks):
        for j, blk in enumerate(stage):
            k, p = f'blocks.{s}.{j}.', ('blocks', s, j)
            e += E.layer_norm_entries(k + 'norm1', p + ('norm1',))
            e += E.layer_norm_entries(k + 'norm2', p + ('norm2',))
            e += E.linear_entries(k + 'mlp.fc1', p + ('mlp', 'fc1'), blk.mlp.fc1)
            e += E.linear_entries(k + 'mlp.fc2', p + ('mlp', 'fc2'), blk.mlp.fc2)
            a = blk.attn
            names = ('qkv', 'proj') if j % 2 == 0 else ('q', 'kv', 'proj')
            for n in names:
                e += E.linear_entries(k + 'attn.' + n, p + ('attn', n), getattr(a, n))
            if j % 2 == 1 and a.sr is not None:
                e += _sparse_conv_entries(k + 'attn.sr', p + ('attn', 'sr'))
                e += E.layer_norm_entries(k + 'attn.norm', p + ('attn', 'norm'))
    out += E.prefixed(e, 'encoder.', ('encoder',))
    return out + _decoder_entries(model)


def greenmim_twins_twin(model: nnx.Module) -> nn.Module:
    """The twin of a jaxmim GreenMIMTwins (:class:`GreenMIMSwinTwin` wrapper around
    :class:`GreenTwinsTwin`), configured from its attributes and variable shapes."""
    enc = model.encoder
    norm_layer = functools.partial(nn.LayerNorm, eps=enc.norm.epsilon)
    mlp_ratios = [mlp_ratio_of(stage[0]) for stage in enc.blocks]
    tenc = GreenTwinsTwin(img_size=enc.img_size, patch_size=enc.patch_size, in_chans=enc.in_chans,
                          embed_dims=list(enc.embed_dims), num_heads=list(enc.num_heads), mlp_ratios=mlp_ratios,
                          qkv_bias=enc.blocks[0][0].attn.qkv.bias is not None, norm_layer=norm_layer,
                          depths=list(enc.depths), sr_ratios=list(enc.sr_ratios), wss=[enc.window_size],
                          peg_residual=enc.peg_residual)
    return _wrap_twin(model, tenc, norm_layer)


O.register_source(O.Source(
    name='greenmim_twins',
    reference='LayneH/GreenMIM@b981012 modeling/base_green_models.py MaskedAutoencoder(green_twins_models.ALTGVT)',
    build_fn=build_greenmim_twins,
    entries_fn=greenmim_twins_entries,
    method='greenmim',
    twin_fn=greenmim_twins_twin,
    # an imported released checkpoint runs the decoder as trained (the training models default to
    # the corrected 'raster' placement; --model_overrides='{"decoder_placement": "raster"}' for it)
    import_model_overrides={'decoder_placement': 'official'}))
