"""GreenMIM-Twins (jaxmim/methods/greenmim/twins.py): every visible-token operation against a
brute-force dense reference and the Twins-L parameter count from a written-out formula (the
pre-training run is in ``test_greenmim_twins_train.py``, the conversion in
``test_convert_greenmim_twins.py``).

Demo model: 32 px, patch 2 (16x16 tokens), 8-px mask units (4x4, 4 visible), 3 stages with
(16x16, 8x8, 4x4) tokens, window 4 (stage 1 grouped, stages 2-3 masking mode), sr (4, 2, 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmim.methods.greenmim.twins import GreenTwinsPlanner
from jaxmim.registry import create_model

DEMO = 'green_mim_twins_demo_patch2_32_dec64b1'
SMALL = dict(embed_dims=(16, 32, 64), num_heads=(1, 2, 4), decoder_embed_dim=32)


@pytest.fixture(scope='module')
def model():
    return create_model(DEMO, **SMALL)


def _plans(planner, seeds):
    """``(len(seeds), P)`` plans of random unit masks (one per seed) and the keep masks."""
    keeps = []
    for s in seeds:
        keep = np.zeros(planner.units ** 2, bool)
        keep[np.random.default_rng(s).permutation(planner.units ** 2)[:planner.len_keep]] = True
        keeps.append(keep)
    return np.stack([planner.plan(k) for k in keeps]), keeps


def _vis_map(keep, units, res):
    """(res, res) bool visible map of the unit mask ``keep``."""
    return np.kron(keep.reshape(units, units), np.ones((res // units, res // units), bool))


def _dense_conv_at_visible(x, vis, kernel, bias, k):
    """Brute force: scatter ``x`` (B, N, C) into a zero canvas, dense conv stride k, read the
    output sites whose k x k block is fully visible (raster order)."""
    b, _, c = x.shape
    h, w = vis.shape
    canvas = np.zeros((b, h * w, c), np.float32)
    canvas[:, np.flatnonzero(vis.reshape(-1))] = x
    out = jax.lax.conv_general_dilated(jnp.asarray(canvas.reshape(b, h, w, c)), jnp.asarray(kernel), (k, k), 'VALID',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    full = vis.reshape(h // k, k, w // k, k).all(axis=(1, 3)).reshape(-1)
    return np.asarray(out).reshape(b, -1, kernel.shape[-1])[:, full] + bias


def _ln(x, scale, bias, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def test_sparse_convs_equal_dense_convs_at_visible_sites(model):
    """SparsePatchEmbed (k=2, stages 2-3) and GSA reduction (k=sr, stages 1-2) on per-sample plans
    equal a dense conv of the zero-filled canvas at the fully visible output sites."""
    from jaxmim.methods.greenmim.twins import sparse_conv_visible
    enc = model.encoder
    pl = enc.planner
    plans, keeps = _plans(pl, [0, 1])
    rng = np.random.default_rng(5)
    cases = [(s, 2, f'embed{s}', s - 1) for s in (1, 2)] + [(s, pl.sr_ratios[s], f'sr{s}', s) for s in (0, 1)]
    for s, k, entry, in_stage in cases:
        st_in = pl.stages[in_stage]
        cin, cout = enc.embed_dims[in_stage], 7
        x = rng.standard_normal((2, st_in.num_tokens, cin)).astype(np.float32)
        kernel = rng.standard_normal((k, k, cin, cout)).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)
        out = np.asarray(sparse_conv_visible(jnp.asarray(x), jnp.asarray(pl.get(plans, entry)), jnp.asarray(kernel),
                                             jnp.asarray(bias)))
        for i in range(2):
            vis = _vis_map(keeps[i], pl.units, st_in.resolution[0])
            ref = _dense_conv_at_visible(x[i:i + 1], vis, kernel, bias, k)[0]
            np.testing.assert_allclose(out[i], ref, rtol=1e-4, atol=1e-4, err_msg=entry)
        if entry.startswith('embed'):     # the embed's output is in raster order of the next stage's visible tokens
            assert out.shape[1] == pl.stages[s].num_tokens


@pytest.mark.parametrize('stage', [0, 1])
def test_lsa_equals_brute_force_window_attention(model, stage):
    """LSA (grouping mode at stage 1, masking mode at stage 2; per-sample plans) equals
    attention of every visible token over the visible tokens of its own ws x ws window."""
    enc = model.encoder
    pl = enc.planner
    st = pl.stages[stage]
    part = st.partitions[0]
    assert part.mode == ('grouping' if stage == 0 else 'masking')
    blk = enc.blocks[stage][0]
    plans, keeps = _plans(pl, [2, 3])
    c = enc.embed_dims[stage]
    y = np.random.default_rng(6).standard_normal((2, st.num_tokens, c)).astype(np.float32)
    arrays = {'gid': jnp.asarray(pl.get(plans, f'gid{stage}_0'))}
    if part.mode == 'grouping':
        arrays.update(idx=jnp.asarray(pl.get(plans, f'idx{stage}_0')), inv=jnp.asarray(pl.get(plans, f'inv{stage}_0')))
    out = np.asarray(blk.group_attention(jnp.asarray(y), part, arrays))
    wqkv, bqkv = np.asarray(blk.attn.qkv.kernel[...]), np.asarray(blk.attn.qkv.bias[...])
    wp, bp = np.asarray(blk.attn.proj.kernel[...]), np.asarray(blk.attn.proj.bias[...])
    nh, ws = blk.attn.num_heads, enc.window_size
    hd = c // nh
    res = st.resolution[0]
    for i in range(2):
        pos = np.flatnonzero(_vis_map(keeps[i], pl.units, res).reshape(-1))
        win = (pos // res) // ws * 1000 + (pos % res) // ws
        qkv = (y[i] @ wqkv + bqkv).reshape(-1, 3, nh, hd)
        ref = np.zeros((len(pos), nh, hd), np.float32)
        for t in range(len(pos)):
            members = np.flatnonzero(win == win[t])
            for h in range(nh):
                logits = (qkv[t, 0, h] * hd ** -0.5) @ qkv[members, 1, h].T
                ref[t, h] = _softmax(logits) @ qkv[members, 2, h]
        np.testing.assert_allclose(out[i], ref.reshape(-1, c) @ wp + bp, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('stage', [0, 2])
def test_gsa_equals_attention_over_dense_spatial_reduction(model, stage):
    """GSA with sr=4 (stage 1) and sr=1 (stage 3): keys/values from the dense conv of the
    zero-filled canvas at the visible units, LayerNorm, kv projection; queries of every token."""
    enc = model.encoder
    pl = enc.planner
    st = pl.stages[stage]
    a = enc.blocks[stage][1].attn
    sr = pl.sr_ratios[stage]
    plans, keeps = _plans(pl, [4])
    c = enc.embed_dims[stage]
    rng = np.random.default_rng(7)
    y = rng.standard_normal((1, st.num_tokens, c)).astype(np.float32)
    if sr > 1:    # non-trivial LN and conv bias
        a.norm.scale[...] = jnp.asarray(1 + 0.1 * rng.standard_normal(c), jnp.float32)
        a.sr.bias[...] = jnp.asarray(0.1 * rng.standard_normal(c), jnp.float32)
    out = np.asarray(a(jnp.asarray(y), jnp.asarray(pl.get(plans, f'sr{stage}')) if sr > 1 else None))
    g = lambda m: np.asarray(m[...])
    if sr > 1:
        vis = _vis_map(keeps[0], pl.units, st.resolution[0])
        red = _dense_conv_at_visible(y, vis, g(a.sr.kernel), g(a.sr.bias), sr)[0]
        assert red.shape[0] == pl.len_keep          # sr equals the unit: one key per visible unit
        src = _ln(red, g(a.norm.scale), g(a.norm.bias), a.norm.epsilon)
    else:
        src = y[0]
    nh, hd = a.num_heads, c // a.num_heads
    q = (y[0] @ g(a.q.kernel) + g(a.q.bias)).reshape(-1, nh, hd)
    kv = (src @ g(a.kv.kernel) + g(a.kv.bias)).reshape(-1, 2, nh, hd)
    ref = np.stack([_softmax(q[:, h] @ kv[:, 0, h].T * hd ** -0.5) @ kv[:, 1, h] for h in range(nh)], 1)
    np.testing.assert_allclose(out[0], ref.reshape(-1, c) @ g(a.proj.kernel) + g(a.proj.bias), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('residual', [False, True])
def test_peg_equals_scatter_dense_depthwise_conv_gather(residual):
    """PosCNN (per-sample positions): neighbour loop over the 3x3 window of every visible token,
    masked neighbours 0, bias; plus the input only with ``peg_residual=True`` (official: no
    residual)."""
    from jaxmim.methods.greenmim.twins import PosCNN
    c, res = 5, 8
    peg = PosCNN(c, residual, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(8)
    peg.proj[0].bias[...] = jnp.asarray(rng.standard_normal(c), jnp.float32)
    kernel, bias = np.asarray(peg.proj[0].kernel[...]), np.asarray(peg.proj[0].bias[...])
    keeps = [rng.permutation(16)[:6] for _ in range(2)]
    pos = []
    for kk in keeps:
        keep = np.zeros(16, bool)
        keep[kk] = True
        pos.append(np.flatnonzero(_vis_map(keep, 4, res).reshape(-1)))
    pos = np.stack(pos)
    x = rng.standard_normal((2, pos.shape[1], c)).astype(np.float32)
    out = np.asarray(peg(jnp.asarray(x), jnp.asarray(pos), (res, res)))
    for i in range(2):
        lookup = {int(p): t for t, p in enumerate(pos[i])}
        for t, p in enumerate(pos[i]):
            r, col = divmod(int(p), res)
            acc = bias.astype(np.float64).copy()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    q = (r + dr) * res + col + dc
                    if 0 <= r + dr < res and 0 <= col + dc < res and q in lookup:
                        acc += kernel[dr + 1, dc + 1, 0] * x[i, lookup[q]]
            np.testing.assert_allclose(out[i, t], acc + (x[i, t] if residual else 0), rtol=1e-5, atol=1e-5)


def test_twins_large_parameter_count():
    """green_mim_twins_large_patch4_dec512b1: trainable parameters from the per-layer formula.

    Encoder (embed_dims d_s = 128..1024, depths 2,2,18,2, sr 8,4,2,1, mlp 4, qkv_bias):
      patch_embeds.0: conv 3*4*4*d0 + d0, LN 2 d0; patch_embeds.s: sparse conv 2*2*d_{s-1}*d_s + d_s, LN 2 d_s;
      pos_block.s: depthwise 9 d_s + d_s;
      every block: norm1 + norm2 4d, mlp (d*4d + 4d) + (4d*d + d);
      LSA (even j): qkv 3d^2 + 3d, proj d^2 + d;  GSA (odd j): q d^2 + d, kv 2d^2 + 2d, proj d^2 + d,
      plus with sr > 1: sr conv sr^2 d^2 + d and its LN 2d;   final norm 2 d3.
    Decoder (512 wide, 1 block): decoder_embed 1024*512 + 512, mask_token 512, block (2 LN 4*512,
      qkv 3*512^2 + 3*512, proj 512^2 + 512, mlp 8*512^2 + 5*512), decoder_norm 2*512,
      decoder_pred 512*3072 + 3072 (the fixed sin-cos decoder_pos_embed is a buffer, not counted).
    Cross-check: the encoder plus a 1000-class head (1024*1000 + 1000) is 99.27M, Twins-SVT-L's
    published 99.2M (the paper's table truncates).
    """
    dims, depths, sr = (128, 256, 512, 1024), (2, 2, 18, 2), (8, 4, 2, 1)
    enc = 3 * 16 * dims[0] + dims[0] + 2 * dims[0]
    for s in range(1, 4):
        enc += 4 * dims[s - 1] * dims[s] + dims[s] + 2 * dims[s]
    for s, d in enumerate(dims):
        enc += 9 * d + d
        for j in range(depths[s]):
            enc += 4 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
            if j % 2 == 0:
                enc += 3 * d * d + 3 * d + d * d + d
            else:
                enc += d * d + d + 2 * d * d + 2 * d + d * d + d
                if sr[s] > 1:
                    enc += sr[s] ** 2 * d * d + d + 2 * d
    enc += 2 * dims[-1]
    e = 512
    dec = 1024 * e + e + e + (4 * e + 3 * e * e + 3 * e + e * e + e + 8 * e * e + 5 * e) + 2 * e + e * 3072 + 3072
    m = nnx.eval_shape(lambda: create_model('green_mim_twins_large_patch4_dec512b1'))
    count = lambda state: sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(state))
    assert count(nnx.state(m.encoder, nnx.Param)) == enc
    assert count(nnx.state(m, nnx.Param)) == enc + dec == 103_501_056
    assert 99.2e6 <= enc + 1024 * 1000 + 1000 < 99.3e6     # Twins-SVT-L: 99.2M (Chu et al. 2021, truncated)


def test_initialisation_follows_the_official_order():
    """Official init (``CPVTV2._init_weights``, then ``MaskedAutoencoder.initialize_weights``): every
    Linear and dense conv kernel xavier-uniform on its flattened view, bound sqrt(6 / (fan_in +
    fan_out)); dense conv biases (patch_embeds.0, the PEGs) zero; the spconv weights
    (patch_embeds.1-2, attn.sr) spconv 2.3.8's own: kernel and bias U(+-1/sqrt(k*k*C_in)), a
    bound below xavier's for these shapes, so a re-initialised kernel would exceed it."""
    m = create_model(DEMO, embed_dims=(32, 64, 128), num_heads=(1, 2, 4), decoder_embed_dim=32)
    enc = m.encoder

    def check_bound(x, bound, what):
        x = np.abs(np.asarray(x))
        assert x.max() <= bound and x.max() > 0.8 * bound, (what, x.max(), bound)

    sparse = [(f'patch_embeds.{s}.proj', enc.patch_embeds[s].proj) for s in (1, 2)]
    sparse += [(f'blocks.{s}.{j}.attn.sr', blk.attn.sr) for s, stage in enumerate(enc.blocks)
               for j, blk in enumerate(stage) if getattr(blk.attn, 'sr', None) is not None]
    assert len(sparse) == 4        # stages 1-2 embeds; the GSA blocks of stages 1-2 (sr 4, 2)
    for name, conv in sparse:
        k, _, cin, cout = conv.kernel.shape
        bound = 1 / np.sqrt(k * k * cin)
        assert np.sqrt(6 / (k * k * (cin + cout))) > 1.2 * bound, name   # distinguishable from xavier
        check_bound(conv.kernel[...], bound, name)
        check_bound(conv.bias[...], bound, name + '.bias')
    dense = enc.patch_embeds[0].proj
    kh, kw, cin, cout = dense.kernel.shape
    check_bound(dense.kernel[...], np.sqrt(6 / (kh * kw * cin + cout)), 'patch_embeds.0.proj')
    assert not np.any(np.asarray(dense.bias[...]))
    for peg in enc.pos_block:
        assert not np.any(np.asarray(peg.proj[0].bias[...]))
    for path, lin in nnx.iter_graph(m):
        if isinstance(lin, nnx.Linear):
            fan_in, fan_out = lin.kernel.shape
            check_bound(lin.kernel[...], np.sqrt(6 / (fan_in + fan_out)), path)


def test_planner_static_shapes_and_bad_sr():
    """Twins-L plan: 768 / 192 / 48 / 12 visible tokens, LSA grouped at stages 1-2 and masked at
    3-4, one window size 7 with no shift; an sr that splits a mask unit is refused."""
    m = nnx.eval_shape(lambda: create_model('green_mim_twins_large_patch4_dec512b1'))
    pl = m.planner
    assert [st.num_tokens for st in pl.stages] == [768, 192, 48, 12]
    assert [st.partitions[0].mode for st in pl.stages] == ['grouping', 'grouping', 'masking', 'masking']
    assert all(len(st.partitions) == 1 and st.partitions[0].shift_size == 0 for st in pl.stages)
    plan = pl.plan(pl.keep_from_noise(np.random.default_rng(0).random(49)))
    assert plan.shape == (pl.plan_length,)
    assert pl.get(plan, 'sr0').shape == (768,) and pl.get(plan, 'embed3').shape == (48,)
    with pytest.raises(ValueError, match='sr_ratios'):
        GreenTwinsPlanner(224, 4, 32, 12, 7, 4, (8, 16, 32, 64), (16, 4, 2, 1))


@pytest.mark.parametrize('variant,model,blr,batch,epochs,save_every', [
    ('swin_base_win7', 'green_mim_swin_base_patch4_dec512b1', 1.0e-4, 2048, 800, 20),
    ('swin_base_win14', 'green_mim_swin_base_patch4_win14_dec512b1', 1.5e-4, 2048, 800, 20),
    ('swin_large_win14', 'green_mim_swin_large_patch4_win14_dec512b1', 1.0e-4, 2048, 800, 20),
    ('twins_large', 'green_mim_twins_large_patch4_dec512b1', 1.5e-4, 4096, 100, 25),
])
def test_pretrain_configs(variant, model, blr, batch, epochs, save_every):
    """``configs/pretrain/greenmim.py:<variant>`` is the official launcher's recipe: the srun_*
    Swin scripts (256 images x 8 GPUs, 800 epochs of 1_281_167 // 2048 = 625 steps) and
    run_greenmim_twins_large.sh (512 x 8 = 4096 images, blr 1.5e-4 so lr 2.4e-3, 100 epochs of
    312 steps, saves every 25); every variant warms up 40 epochs, masks 0.75, norm-pix targets."""
    import os

    from jaxmim.config import check_config, load_config_file
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs/pretrain')
    c = load_config_file(os.path.join(root, f'greenmim.py:{variant}'))
    check_config(c)
    steps = 1_281_167 // batch
    assert c.model.name == model and c.batch_size == batch and c.optim.base_lr == blr
    assert c.total_steps == epochs * steps and c.optim.warmup_steps == 40 * steps
    assert c.checkpoint_every == save_every * steps
    assert c.method.norm_pix_loss and c.method.mask_ratio == 0.75 and c.optim.betas == (0.9, 0.95)
    if variant == 'twins_large':
        assert c.optim.base_lr * c.batch_size / c.optim.lr_scale_batch == pytest.approx(2.4e-3)
    with pytest.raises(ValueError, match='variant must be one of'):
        load_config_file(os.path.join(root, 'greenmim.py:swin_tiny'))


def test_simmim_baseline_config_for_the_greenmim_benchmark():
    """The SimMIM side of the GreenMIM benchmark is Swin-B at GreenMIM's geometry (224 px, window
    7, 32-px mask units): ``:100ep`` at SimMIM's own ratio 0.6, ``:mask75`` at GreenMIM's 0.75,
    otherwise the same recipe; a bad variant names the accepted ones."""
    import os

    from jaxmim.config import check_config, load_config_file
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs/pretrain')
    own = load_config_file(os.path.join(root, 'simmim_swin_base_img224_window7.py:100ep'))
    like = load_config_file(os.path.join(root, 'simmim_swin_base_img224_window7.py:mask75'))
    for c in (own, like):
        check_config(c)
        assert c.model.overrides.img_size == 224 and c.model.overrides.window_size == 7
        assert c.data.image_size == 224 and c.method.mask_patch_size == 32
    assert own.method.mask_ratio == 0.6 and like.method.mask_ratio == 0.75
    like.method.mask_ratio = 0.6
    assert like.to_dict() == own.to_dict()
    with pytest.raises(ValueError, match="'mask75'"):
        load_config_file(os.path.join(root, 'simmim_swin_base_img224_window7.py:mask60'))


@pytest.mark.parametrize('variant,model,lrs,layer_decay,drop_path', [
    ('swin_base_win7', 'swin_base_patch4_window7_224', (1.25e-3, 2.5e-7, 2.5e-7), 0.9, 0.1),
    ('swin_large_win14', 'swin_large_patch4_window14_224', (1.0e-3, 2.0e-7, 3.5e-7), 0.8, 0.3),
])
def test_finetune_configs(variant, model, lrs, layer_decay, drop_path):
    """``configs/finetune/greenmim.py:<variant>`` is ft_configs/greenmim_finetune_*.yaml under
    SimMIM's main_finetune.py: batch 768, 100 epochs of 1_281_167 // 768 = 1668 steps, 20 warm-up,
    clip 5, the timm recipe (mixup 0.8 / cutmix 1.0, erasing 0.25, label smoothing 0.1)."""
    import os

    from jaxmim.config import check_config, load_config_file
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs/finetune')
    c = load_config_file(os.path.join(root, f'greenmim.py:{variant}'))
    check_config(c)
    assert c.model.name == model and c.model.overrides.drop_path_rate == drop_path
    assert (c.optim.base_lr, c.optim.warmup_lr, c.optim.min_lr) == lrs and c.optim.layer_decay == layer_decay
    assert c.batch_size == 768 and c.total_steps == 100 * 1668 and c.optim.warmup_steps == 20 * 1668
    assert c.optim.clip_grad == 5.0 and c.label_smoothing == 0.1
    assert c.mixup.mixup_alpha == 0.8 and c.mixup.cutmix_alpha == 1.0 and c.data.reprob == 0.25


def test_sample_mask_mode_equals_batch_mode_row_by_row():
    """``mask_mode='sample'`` (every sample its own mask: per-sample gathers, block indices and
    canvases through the whole encoder) equals the batch-mode model run on each sample alone
    with that sample's mask."""
    per = create_model(DEMO, **SMALL, mask_mode='sample')
    one = create_model(DEMO, **SMALL, mask_mode='batch')
    fwd = nnx.jit(lambda m, x, n: m(x, noise=n))
    x = jnp.asarray(np.random.default_rng(11).standard_normal((2, 32, 32, 3)), jnp.float32)
    noise = jnp.asarray(np.random.default_rng(12).random((2, 16)), jnp.float32)
    out = fwd(per, x, noise)
    assert not np.array_equal(np.asarray(out['mask'][0]), np.asarray(out['mask'][1]))
    for i in range(2):
        ref = fwd(one, x[i:i + 1], noise[i:i + 1])
        np.testing.assert_allclose(np.asarray(out['pred'][i]), np.asarray(ref['pred'][0]), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(out['mask'][i]), np.asarray(ref['mask'][0]))


def test_planner_pool_plans_equal_the_in_process_plans():
    """``method.planner_workers = N >= 2`` makes per-sample plans on N spawned processes: the
    pipeline's ``host_inputs`` are bit-identical to the in-process ones for the Swin and the Twins
    GreenMIM (same generator state), and so are the plans of the step's host callback; the pool is
    made once and reused, and a bad worker count names the field."""
    from jaxmim.methods.greenmim import grouping as gwa
    from jaxmim.methods import create_mim_model

    block = {'name': 'greenmim', 'mask_ratio': 0.75, 'mask_mode': 'sample'}
    for name, kw in (('green_mim_swin_demo_patch2_32_dec64b1', {}), (DEMO, SMALL)):
        serial = nnx.eval_shape(lambda: create_mim_model(block, name, overrides=kw))
        pooled = nnx.eval_shape(lambda: create_mim_model({**block, 'planner_workers': 2}, name, overrides=kw))
        assert serial.planner_workers == 0 and pooled.planner_workers == 2
        a = serial.host_inputs(np.random.default_rng(5), 24)
        b = pooled.host_inputs(np.random.default_rng(5), 24)
        assert a['plan'].shape == (24, serial.planner.plan_length) and a['plan'].dtype == np.int32
        np.testing.assert_array_equal(a['noise'], b['noise'])
        np.testing.assert_array_equal(a['plan'], b['plan'])
        # Rows differ (per-sample masks), and each row is the planner's plan of that row's noise.
        assert len({row.tobytes() for row in b['plan']}) > 1
        np.testing.assert_array_equal(b['plan'][7], serial.planner.plan(serial.planner.keep_from_noise(b['noise'][7])))
        assert gwa.planner_pool(pooled.planner, 2) is gwa.planner_pool(pooled.planner, 2)
    # The step's host callback (inputs_from='step') uses the pool too, inside jit.
    real_serial = create_mim_model(block, 'green_mim_swin_demo_patch2_32_dec64b1')
    real_pooled = create_mim_model({**block, 'planner_workers': 2}, 'green_mim_swin_demo_patch2_32_dec64b1')
    key = jax.random.key(3)
    a = jax.jit(lambda k: real_serial.sample_inputs(k, 6))(key)
    b = jax.jit(lambda k: real_pooled.sample_inputs(k, 6))(key)
    np.testing.assert_array_equal(np.asarray(a['plan']), np.asarray(b['plan']))
    with pytest.raises(ValueError, match='planner_workers must be an integer >= 0'):
        create_mim_model({**block, 'planner_workers': -1}, 'green_mim_swin_demo_patch2_32_dec64b1')
    with pytest.raises(ValueError, match='planner_workers must be >= 2'):
        gwa.PlannerPool(serial.planner, 1)
