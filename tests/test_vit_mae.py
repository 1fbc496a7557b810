"""ViT (MAE fine-tuning classifier) and MAE pre-training: masking rule, loss, sin-cos tables,
pos-embed interpolation, parameter counts, hooks, PyTorch-twin parity, jitted grad."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from jaxmim import layers as L
from jaxmim.methods import create_mim_model, method_config_defaults
from jaxmim.methods import mae
from jaxmim.models import pos_embed as PE
from jaxmim.models import vit
from jaxmim.registry import classifier_for, create_model, match_any, model_data_defaults
from jaxmim.tree_util import flatten_names

TINY_MAE = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
TINY_VIT = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope='module')
def demo_mae():
    """The registered demo MAE (seed 3), built once: eager NNX init is slow on a shared CPU."""
    return create_model('mae_vit_demo_patch4_32_dec128d2b', seed=3)


def _names(model, kind=nnx.Param):
    return flatten_names(nnx.to_pure_dict(nnx.state(model, kind)))


# ----------------------------------------------------------------------------------------
# Masking.
# ----------------------------------------------------------------------------------------

def _official_masking_numpy(noise, mask_ratio):
    """models_mae.py random_masking written out in NumPy (ascending stable argsort)."""
    n, l = noise.shape
    len_keep = int(l * (1 - mask_ratio))
    ids_shuffle = np.argsort(noise, axis=1, kind='stable')
    ids_restore = np.argsort(ids_shuffle, axis=1, kind='stable')
    ids_keep = ids_shuffle[:, :len_keep]
    mask = np.ones((n, l), np.float32)
    mask[:, :len_keep] = 0
    mask = np.take_along_axis(mask, ids_restore, axis=1)
    return ids_keep, mask, ids_restore


@pytest.mark.parametrize('length,ratio,keep',
                         [(196, 0.75, 49), (64, 0.75, 16), (196, 0.6, 78), (49, 0.5, 24)])
def test_random_masking_matches_official_rule(length, ratio, keep):
    rng = np.random.default_rng(length)
    noise = rng.random((4, length), dtype=np.float32)
    # token i holds the value i
    x = np.broadcast_to(np.arange(length, dtype=np.float32)[None, :, None], (4, length, 3))
    x_masked, mask, ids_restore = mae.random_masking(jnp.asarray(x), jnp.asarray(noise), ratio)
    ids_keep, mask_np, restore_np = _official_masking_numpy(noise, ratio)
    assert x_masked.shape == (4, keep, 3)
    # same patches, same order
    np.testing.assert_array_equal(np.asarray(x_masked)[..., 0].astype(int), ids_keep)
    np.testing.assert_array_equal(np.asarray(mask), mask_np)
    np.testing.assert_array_equal(np.asarray(ids_restore), restore_np)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), length - keep)
    # brute force: the kept patches are the `keep` smallest noise values, ascending
    for b in range(4):
        order = sorted(range(length), key=lambda i: noise[b, i])[:keep]
        assert list(np.asarray(x_masked)[b, :, 0].astype(int)) == order
        assert all(mask_np[b, i] == (0.0 if i in order else 1.0) for i in range(length))
    # the PyTorch twin (official code path) on the same noise
    t_shuffle = torch.argsort(torch.from_numpy(noise), dim=1)
    np.testing.assert_array_equal(t_shuffle[:, :keep].numpy(), ids_keep)


def test_masking_inputs_shapes(demo_mae):
    model = demo_mae
    assert model.input_keys == ('noise',)
    dev = model.sample_inputs(jax.random.key(0), 3)
    host = model.host_inputs(np.random.default_rng(0), 3)
    assert dev['noise'].shape == host['noise'].shape == (3, 64)
    assert dev['noise'].dtype == jnp.float32 and host['noise'].dtype == np.float32
    assert 0.0 <= float(dev['noise'].min()) and float(dev['noise'].max()) < 1.0


# ----------------------------------------------------------------------------------------
# Loss and targets.
# ----------------------------------------------------------------------------------------

def _patch_pixels(p, grid, idx):
    """Pixel (row, col) ranges of raster patch ``idx``."""
    i, j = divmod(idx, grid)
    return slice(i * p, (i + 1) * p), slice(j * p, (j + 1) * p)


def test_patchify_order():
    imgs = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    got = np.asarray(mae.patchify(jnp.asarray(imgs), 4))
    assert got.shape == (2, 6, 48)
    for l in range(6):
        r, c = divmod(l, 3)
        for pp in range(4):
            for q in range(4):
                for ch in range(3):
                    assert got[1, l, (pp * 4 + q) * 3 + ch] == imgs[1, r * 4 + pp, c * 4 + q, ch]
    np.testing.assert_array_equal(np.asarray(mae.unpatchify(jnp.asarray(got), 4, 2, 3)), imgs)


def test_norm_pix_target_unbiased_variance():
    t = np.random.default_rng(1).normal(size=(2, 5, 48)).astype(np.float32) * 3 + 1
    exp = np.empty_like(t, dtype=np.float64)
    for b in range(2):
        for l in range(5):
            v = t[b, l].astype(np.float64)
            mean = v.sum() / v.size
            var = ((v - mean) ** 2).sum() / (v.size - 1)          # ddof = 1
            exp[b, l] = (v - mean) / math.sqrt(var + 1e-6)
    np.testing.assert_allclose(np.asarray(mae.norm_pix_target(jnp.asarray(t))), exp, rtol=1e-5, atol=1e-5)
    tt = torch.from_numpy(t)
    twin = (tt - tt.mean(-1, keepdim=True)) / (tt.var(-1, keepdim=True) + 1e-6) ** 0.5
    np.testing.assert_allclose(np.asarray(mae.norm_pix_target(jnp.asarray(t))), twin.numpy(), atol=1e-5)


@pytest.mark.parametrize('norm_pix', [False, True])
def test_loss_only_sees_masked_patches(norm_pix):
    rng = np.random.default_rng(2)
    p, grid = 4, 3
    imgs = rng.normal(size=(2, 12, 12, 3)).astype(np.float32)
    pred = rng.normal(size=(2, 9, 48)).astype(np.float32)
    mask = np.zeros((2, 9), np.float32)
    mask[0, [1, 4, 8]] = 1
    mask[1, [0, 2, 3, 7]] = 1
    loss = float(mae.mae_loss(jnp.asarray(imgs), jnp.asarray(pred), jnp.asarray(mask), p, norm_pix))
    # formula written out
    num = 0.0
    for b in range(2):
        for l in range(9):
            rs, cs = _patch_pixels(p, grid, l)
            t = imgs[b, rs, cs, :].reshape(-1).astype(np.float64)
            if norm_pix:
                t = (t - t.mean()) / math.sqrt(t.var(ddof=1) + 1e-6)
            num += ((pred[b, l] - t) ** 2).mean() * mask[b, l]
    np.testing.assert_allclose(loss, num / mask.sum(), rtol=1e-5)
    # visible patches: changing their prediction or their pixels leaves the loss unchanged
    pred2, imgs2 = pred.copy(), imgs.copy()
    pred2[0, 0] += 5.0
    pred2[1, 8] -= 3.0
    rs, cs = _patch_pixels(p, grid, 0)
    imgs2[0, rs, cs] += 7.0
    loss2 = float(mae.mae_loss(jnp.asarray(imgs2), jnp.asarray(pred2), jnp.asarray(mask), p, norm_pix))
    assert loss2 == loss
    # a masked patch changes it
    pred3 = pred.copy()
    pred3[0, 4] += 1.0
    assert float(mae.mae_loss(jnp.asarray(imgs), jnp.asarray(pred3), jnp.asarray(mask), p, norm_pix)) != loss


# ----------------------------------------------------------------------------------------
# Sin-cos tables and interpolation.
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('dim,gs', [(16, 4), (32, 3), (768, 14)])
def test_sincos_table_formula(dim, gs):
    table = PE.get_2d_sincos_pos_embed(dim, gs, cls_token=True)
    assert table.shape == (1 + gs * gs, dim) and table.dtype == np.float32
    exp = np.zeros((1 + gs * gs, dim), np.float64)     # row 0 (cls) stays zero
    q = dim // 4
    for i in range(gs):               # row (h)
        for j in range(gs):           # column (w)
            for c in range(dim):
                pos = j if c < dim // 2 else i           # first half encodes w
                k = c % q
                omega = 10000.0 ** (-k / q)
                use_sin = (c % (dim // 2)) < q                   # each half: [sin, cos]
                exp[1 + i * gs + j, c] = math.sin(pos * omega) if use_sin else math.cos(pos * omega)
    np.testing.assert_allclose(table, exp, rtol=0, atol=1e-6)
    # w-first anchors: patch (row 0, col 1) has sin(1) in channel 0; patch (row 1, col 0) in channel D/2
    assert table[1 + 1, 0] == np.float32(math.sin(1.0)) and table[1 + gs, 0] == 0.0
    assert table[1 + gs, dim // 2] == np.float32(math.sin(1.0))
    np.testing.assert_array_equal(PE.get_2d_sincos_pos_embed(dim, gs), table[1:])


def test_mae_pos_embed_buffers_are_sincos(demo_mae):
    model = demo_mae
    assert isinstance(model.pos_embed, L.Buffer) and isinstance(model.decoder_pos_embed, L.Buffer)
    np.testing.assert_array_equal(np.asarray(model.pos_embed[...])[0],
                                  PE.get_2d_sincos_pos_embed(128, 8, True))
    assert 'pos_embed' not in _names(model) and 'decoder_pos_embed' not in _names(model)
    assert set(_names(model, L.Buffer)) == {'pos_embed', 'decoder_pos_embed'}
    fixed = vit.VisionTransformer(**TINY_VIT, fixed_pos_embed=True, rngs=nnx.Rngs(0))
    assert isinstance(fixed.pos_embed, L.Buffer) and 'pos_embed' not in _names(fixed)
    assert isinstance(create_model('vit_demo_patch4_32').pos_embed, nnx.Param)


def test_interpolate_identity_when_grid_matches():
    pe = np.random.default_rng(3).normal(size=(1, 1 + 14 * 14, 24)).astype(np.float32)
    np.testing.assert_array_equal(PE.interpolate_pos_embed(pe, 14), pe)


@pytest.mark.parametrize('src,dst', [(14, 16), (16, 14), (7, 12), (14, 7), (3, 5), (2, 9)])
def test_interpolate_matches_torch_bicubic(src, dst):
    d = 12
    pe = np.random.default_rng(src * 31 + dst).normal(size=(1, 1 + src * src, d)).astype(np.float32)
    got = PE.interpolate_pos_embed(pe, dst)
    tok = torch.from_numpy(pe[:, 1:]).reshape(1, src, src, d).permute(0, 3, 1, 2)
    ref = F.interpolate(tok, size=(dst, dst), mode='bicubic', align_corners=False)
    ref = ref.permute(0, 2, 3, 1).flatten(1, 2).numpy()
    assert got.shape == (1, 1 + dst * dst, d) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, :1], pe[:, :1])          # class token kept
    np.testing.assert_allclose(got[:, 1:], ref, rtol=0, atol=1e-5)


def test_adapt_pretrained_pos_embed():
    model = vit.VisionTransformer(**{**TINY_VIT, 'img_size': 32}, rngs=nnx.Rngs(0))   # 8x8 grid
    pe = np.random.default_rng(4).normal(size=(1, 1 + 16, 32)).astype(np.float32)
    out = model.adapt_pretrained('pos_embed', pe, (1, 65, 32))
    np.testing.assert_allclose(out, PE.interpolate_pos_embed(pe, 8))
    assert out.shape == (1, 65, 32)
    with pytest.raises(ValueError, match='blocks.0.attn.qkv.kernel'):
        model.adapt_pretrained('blocks.0.attn.qkv.kernel', np.zeros((16, 48)), (32, 96))
    with pytest.raises(ValueError, match=r'pos_embed.*\(1, 17, 16\).*\(1, 65, 32\)'):
        model.adapt_pretrained('pos_embed', np.zeros((1, 17, 16)), (1, 65, 32))


# ----------------------------------------------------------------------------------------
# Registry, parameter counts, hooks.
# ----------------------------------------------------------------------------------------

def _count(name):
    abstract = nnx.eval_shape(lambda: create_model(name))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    buffers = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, L.Buffer)))
    return params, buffers, abstract


def test_parameter_counts():
    params, buffers, _ = _count('vit_base_patch16_224')
    assert (params, buffers) == (86_567_656, 0)        # MAE fine-tune ViT-B/16, global pool, 1000 classes
    params, buffers, _ = _count('mae_vit_base_patch16_dec512d8b')
    assert params + buffers == 111_907_840              # official model incl. the fixed tables
    assert buffers == 197 * 768 + 197 * 512


def test_registry_entries():
    assert classifier_for('mae_vit_base_patch16_dec512d8b') == 'vit_base_patch16_224'
    assert classifier_for('mae_vit_large_patch16_dec512d8b') == 'vit_large_patch16_224'
    assert classifier_for('mae_vit_huge_patch14_dec512d8b') == 'vit_huge_patch14_224'
    assert classifier_for('mae_vit_demo_patch4_32_dec128d2b') == 'vit_demo_patch4_32'
    assert model_data_defaults('vit_base_patch16_224')['eval_crop_ratio'] == 224 / 256
    demo = model_data_defaults('vit_demo_patch4_32')
    assert demo['image_size'] == 32 and demo['eval_crop_ratio'] == 1.0
    assert model_data_defaults('mae_vit_demo_patch4_32_dec128d2b')['image_size'] == 32


def test_vit_base_hooks_on_real_names():
    _, _, model = _count('vit_base_patch16_224')
    names = list(_names(model))
    spot = {'cls_token': 0, 'pos_embed': 0, 'patch_embed.proj.kernel': 0, 'patch_embed.proj.bias': 0,
            'blocks.0.norm1.scale': 1, 'blocks.0.attn.qkv.kernel': 1, 'blocks.5.mlp.fc1.bias': 6,
            'blocks.11.mlp.fc2.bias': 12, 'fc_norm.scale': 13, 'head.kernel': 13, 'head.bias': 13}
    for name, expected in spot.items():
        assert name in names and model.layer_id(name) == expected, name
    assert model.num_layer_ids == 14
    assert sorted({model.layer_id(n) for n in names}) == list(range(14))
    # MAE param_groups_lrd: lr scale = 0.75 ** (num_layers - id) with num_layers = depth + 1 = 13
    for n in names:
        assert 0.75 ** (model.num_layer_ids - 1 - model.layer_id(n)) == 0.75 ** (13 - model.layer_id(n))
    assert [n for n in names if match_any(n, model.no_weight_decay())] == ['cls_token', 'pos_embed']
    assert sorted(n for n in names if match_any(n, model.pretrained_fresh())) == \
        ['fc_norm.bias', 'fc_norm.scale', 'head.bias', 'head.kernel']
    assert 'norm.scale' not in names            # models_vit deletes the final norm with global_pool
    cls_model = vit.VisionTransformer(**TINY_VIT, global_pool=False, rngs=nnx.Rngs(0))
    assert cls_model.pretrained_fresh() == ('head.*',) and 'norm.scale' in _names(cls_model)
    assert 'fc_norm.scale' not in _names(cls_model)


def test_mae_weight_decay_hook_reproduces_official(demo_mae):
    model = demo_mae
    assert model.no_weight_decay() == ()
    # timm 0.3.2 add_weight_decay with no skip list: decay iff ndim > 1 and not '.bias'
    names = _names(model)
    decayed = {n for n, v in names.items() if v.ndim > 1 and not n.endswith('.bias')}
    assert {'cls_token', 'mask_token'} <= decayed


def test_method_registration_and_build():
    assert method_config_defaults('mae') == {'name': 'mae', 'inputs_from': 'step', 'mask_ratio': 0.75,
                                             'norm_pix_loss': False}
    model = create_mim_model({'name': 'mae', 'mask_ratio': 0.6, 'norm_pix_loss': True},
                             'mae_vit_demo_patch4_32_dec128d2b', overrides={'decoder_depth': 1}, seed=1)
    assert isinstance(model, mae.MaskedAutoencoderViT)
    got = (model.mask_ratio, model.norm_pix_loss, model.len_keep, len(model.decoder_blocks))
    assert got == (0.6, True, 25, 1)
    with pytest.raises(ValueError, match='mask_ratio'):
        mae.MAEMethod.build('mae_vit_demo_patch4_32_dec128d2b', overrides={'mask_ratio': 0.5}, seed=0,
                            mask_ratio=0.75, norm_pix_loss=False)


# ----------------------------------------------------------------------------------------
# Initialisation laws.
# ----------------------------------------------------------------------------------------

def test_init_laws(demo_mae):
    m = demo_mae
    conv = np.asarray(m.patch_embed.proj.kernel[...])          # (4, 4, 3, 128)
    bound = math.sqrt(6 / (4 * 4 * 3 + 128))                   # xavier on the flattened (128, 48) view
    assert np.abs(conv).max() <= bound and np.abs(conv).max() > 0.95 * bound
    np.testing.assert_allclose(conv.std(), bound / math.sqrt(3), rtol=0.05)
    qkv = np.asarray(m.blocks[0].attn.qkv.kernel[...])          # (128, 384)
    bound = math.sqrt(6 / (128 + 384))
    assert np.abs(qkv).max() <= bound and np.abs(qkv).max() > 0.95 * bound
    assert np.all(np.asarray(m.blocks[0].attn.qkv.bias[...]) == 0)
    np.testing.assert_allclose(np.asarray(m.mask_token[...]).std(), 0.02, rtol=0.3)
    v = create_model('vit_demo_patch4_32', seed=3)
    np.testing.assert_allclose(np.asarray(v.head.kernel[...]).std(), 2e-5, rtol=0.1)
    np.testing.assert_allclose(np.asarray(v.blocks[0].mlp.fc1.kernel[...]).std(), 0.02, rtol=0.05)


# ----------------------------------------------------------------------------------------
# Attention numerics and PyTorch-twin parity.
# ----------------------------------------------------------------------------------------

def test_attention_matches_einsum_formula():
    attn = vit.Attention(48, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 48))
    qkv = (x @ attn.qkv.kernel[...] + attn.qkv.bias[...]).reshape(2, 7, 3, 4, 12).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]                           # (B, nH, N, hd)
    a = jax.nn.softmax((q @ k.swapaxes(-1, -2)) * 12 ** -0.5, axis=-1)
    ref = (a @ v).transpose(0, 2, 1, 3).reshape(2, 7, 48) @ attn.proj.kernel[...] + attn.proj.bias[...]
    np.testing.assert_allclose(np.asarray(attn(x)), np.asarray(ref), rtol=0, atol=1e-6)


class _TBlock(torch.nn.Module):
    """timm 0.3.2 Block (qkv_bias, LayerNorm eps 1e-6, exact GELU), written out."""

    def __init__(self, dim, heads):
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.attn.proj((a @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class _TMae(torch.nn.Module):
    """models_mae.MaskedAutoencoderViT forward with the noise given, written out."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim, depth, num_heads, decoder_embed_dim,
                 decoder_depth, decoder_num_heads, norm_pix_loss, mask_ratio):
        super().__init__()
        nn = torch.nn
        self.p, self.mask_ratio, self.norm_pix_loss = patch_size, mask_ratio, norm_pix_loss
        n = (img_size // patch_size) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([_TBlock(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([_TBlock(decoder_embed_dim, decoder_num_heads)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)

    def forward(self, imgs, noise):
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:, :]
        n, l, d = x.shape
        len_keep = int(l * (1 - self.mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones([n, l])
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        x = torch.cat(((self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        tokens = self.mask_token.repeat(n, l + 1 - x.shape[1], 1)
        x_ = torch.gather(torch.cat([x[:, 1:, :], tokens], 1), 1,
                          ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        p, h = self.p, imgs.shape[2] // self.p
        target = torch.einsum('nchpwq->nhwpqc', imgs.reshape(n, imgs.shape[1], h, p, h, p))
        target = target.reshape(n, h * h, -1)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        return loss, pred, mask


class _TVit(torch.nn.Module):
    """models_vit.VisionTransformer(global_pool=True) forward, written out."""

    def __init__(self, img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads):
        super().__init__()
        nn = torch.nn
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch_size) ** 2 + 1, embed_dim))
        self.blocks = nn.ModuleList([_TBlock(embed_dim, num_heads) for _ in range(depth)])
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, imgs):
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.fc_norm(x[:, 1:, :].mean(dim=1)))


def _to_torch_state(model):
    """Official state-dict from the NNX state: Dense kernel (in,out) -> weight (out,in), conv HWIO ->
    OIHW, LayerNorm scale -> weight (the rules of :mod:`convert.official`)."""
    out = {}
    for name, value in flatten_names(nnx.to_pure_dict(nnx.state(model))).items():
        value = np.asarray(value)
        if name.endswith('.kernel'):
            name = name[:-len('kernel')] + 'weight'
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        elif name.endswith('.scale'):
            name = name[:-len('scale')] + 'weight'
        out[name] = torch.from_numpy(np.array(value))
    return out


@pytest.mark.parametrize('norm_pix', [False, True])
def test_mae_matches_pytorch_twin(norm_pix):
    model = mae.MaskedAutoencoderViT(**TINY_MAE, norm_pix_loss=norm_pix, rngs=nnx.Rngs(5))
    twin = _TMae(**TINY_MAE, norm_pix_loss=norm_pix, mask_ratio=0.75)
    twin.load_state_dict(_to_torch_state(model), strict=True)      # also checks the official key names
    imgs = np.random.default_rng(6).normal(size=(3, 16, 16, 3)).astype(np.float32)
    noise = np.random.default_rng(7).random((3, 16), dtype=np.float32)
    out = model(jnp.asarray(imgs), noise=jnp.asarray(noise))
    with torch.no_grad():
        loss, pred, mask = twin(torch.from_numpy(imgs).permute(0, 3, 1, 2), torch.from_numpy(noise))
    np.testing.assert_array_equal(np.asarray(out['mask']), mask.numpy())
    np.testing.assert_allclose(np.asarray(out['pred']), pred.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(out['loss']), float(loss), rtol=1e-5)
    assert out['latent'].shape == (3, 1 + 4, 32)


def test_vit_matches_pytorch_twin():
    model = vit.VisionTransformer(**TINY_VIT, global_pool=True, rngs=nnx.Rngs(8))
    twin = _TVit(**TINY_VIT)
    twin.load_state_dict(_to_torch_state(model), strict=True)
    imgs = np.random.default_rng(9).normal(size=(2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        ref = twin(torch.from_numpy(imgs).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(imgs))), ref, rtol=1e-5, atol=1e-6)


def test_official_vit_b_keys():
    _, _, model = _count('vit_base_patch16_224')
    names = set(_names(model))
    torch_names = {n.replace('.kernel', '.weight').replace('.scale', '.weight') for n in names}
    expected = {'cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias',
                'fc_norm.weight', 'fc_norm.bias', 'head.weight', 'head.bias'}
    for i in range(12):
        for sub in ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1', 'mlp.fc2'):
            expected |= {f'blocks.{i}.{sub}.weight', f'blocks.{i}.{sub}.bias'}
    assert torch_names == expected


# ----------------------------------------------------------------------------------------
# Jitted forward + grad of the demo models.
# ----------------------------------------------------------------------------------------

def test_demo_mae_jit_grad(demo_mae):
    model = nnx.clone(demo_mae)
    model.norm_pix_loss = True
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, rest, imgs, key):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest)
            return m(imgs, **m.sample_inputs(key, imgs.shape[0]), train=True, rng=key)['loss']
        return jax.value_and_grad(loss_fn)(params)

    imgs = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    loss, grads = step(params, rest, imgs, jax.random.key(1))
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert set(flatten_names(nnx.to_pure_dict(grads))) == set(_names(model))
    assert 'pos_embed' not in flatten_names(nnx.to_pure_dict(grads))
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    for name in ('mask_token', 'cls_token'):
        assert float(jnp.abs(grads[name][...]).sum()) > 0


def test_demo_vit_jit_grad():
    model = create_model('vit_demo_patch4_32')
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, imgs, labels, key):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p, rest)(imgs, train=True, rng=key)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
        return jax.value_and_grad(loss_fn)(params)

    imgs = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    loss, grads = step(params, imgs, jnp.arange(4), jax.random.key(2))
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), math.log(10), rtol=1e-3)   # head init std 2e-5: uniform logits
    assert set(flatten_names(nnx.to_pure_dict(grads))) == set(_names(model))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
