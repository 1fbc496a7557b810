"""Tests for the PyTorch twin in convert/swin.py (pure-PyTorch microsoft/SimMIM Swin + SimMIM).

Every expectation here is computed independently of the code under test: key lists and shapes from
the official modules' registration order (``microsoft/SimMIM@d3e29bc models/swin_transformer.py``,
``models/simmim.py:19-54``), written out by hand, masks / indices / channel orders by explicit loops
over coordinates, attention by a per-token brute-force reference, the loss by a NumPy float64
re-computation.  CPU only and small; the CUDA test runs only where CUDA exists.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.swin import (  # noqa: E402
    DropPath,
    PatchMerging,
    SimMIM,
    SwinTransformer,
    SwinTransformerBlock,
    SwinTransformerForSimMIM,
    build_torch_simmim_swin,
    make_relative_position_index,
    make_shift_attn_mask,
)

TINY = dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4)
SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
SWIN_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))


# ------------------------------------------------------------------------------------------------
# Expected state_dict layout, written out from the official code by hand (not from the module tree)
# ------------------------------------------------------------------------------------------------


def expected_swin_layout(embed, depths, heads, tables, index_n, masks, num_classes, prefix=""):
    """[(key, shape)] in official order. tables[l] = table rows, index_n[l] = tokens per window,
    masks[l] = mask shape for stage l's odd blocks or None."""
    out = [("patch_embed.proj.weight", (embed, 3, 4, 4)), ("patch_embed.proj.bias", (embed,)),
           ("patch_embed.norm.weight", (embed,)), ("patch_embed.norm.bias", (embed,))]
    for l, (depth, nh) in enumerate(zip(depths, heads)):
        D = embed * 2 ** l
        for b in range(depth):
            p = f"layers.{l}.blocks.{b}."
            if b % 2 == 1 and masks[l] is not None:
                out.append((p + "attn_mask", masks[l]))
            out += [(p + "norm1.weight", (D,)), (p + "norm1.bias", (D,)),
                    (p + "attn.relative_position_bias_table", (tables[l], nh)),
                    (p + "attn.relative_position_index", (index_n[l], index_n[l])),
                    (p + "attn.qkv.weight", (3 * D, D)), (p + "attn.qkv.bias", (3 * D,)),
                    (p + "attn.proj.weight", (D, D)), (p + "attn.proj.bias", (D,)),
                    (p + "norm2.weight", (D,)), (p + "norm2.bias", (D,)),
                    (p + "mlp.fc1.weight", (4 * D, D)), (p + "mlp.fc1.bias", (4 * D,)),
                    (p + "mlp.fc2.weight", (D, 4 * D)), (p + "mlp.fc2.bias", (D,))]
        if l < len(depths) - 1:
            out += [(f"layers.{l}.downsample.reduction.weight", (2 * D, 4 * D)),
                    (f"layers.{l}.downsample.norm.weight", (4 * D,)),
                    (f"layers.{l}.downsample.norm.bias", (4 * D,))]
    F_ = embed * 2 ** (len(depths) - 1)
    out += [("norm.weight", (F_,)), ("norm.bias", (F_,))]
    if num_classes:
        out += [("head.weight", (num_classes, F_)), ("head.bias", (num_classes,))]
    return [(prefix + k, s) for k, s in out]


def _layout(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_swin_b_224_w7_state_dict_matches_spec():
    with torch.device("meta"):
        m = SwinTransformer(img_size=224, window_size=7, num_classes=1000, **SWIN_B)
    exp = expected_swin_layout(128, (2, 2, 18, 2), (4, 8, 16, 32), tables=[169] * 4, index_n=[49] * 4,
                               masks=[(64, 49, 49), (16, 49, 49), (4, 49, 49), None], num_classes=1000)
    sd = m.state_dict()
    assert _layout(m) == exp
    assert len(sd) == 364
    assert sum(p.numel() for p in m.parameters()) == 87_768_224
    assert len(list(m.parameters())) == 329
    idx = [k for k in sd if k.endswith("relative_position_index")]
    msk = [k for k in sd if k.endswith("attn_mask")]
    assert len(idx) == 24 and len(msk) == 11
    assert all(sd[k].dtype == torch.int64 for k in idx)
    assert all(sd[k].dtype == torch.float32 for k in msk)
    assert isinstance(m.layers[3].blocks[1].drop_path, nn.Module)
    assert m.layers[3].blocks[1].shift_size == 0 and m.layers[3].blocks[1].window_size == 7


def test_simmim_swin_b_192_w6_state_dict_matches_spec():
    with torch.device("meta"):
        model = build_torch_simmim_swin(dict(img_size=192, window_size=6, drop_path_rate=0.0, **SWIN_B), 32)
    exp = ([("encoder.mask_token", (1, 1, 128))]
           + expected_swin_layout(128, (2, 2, 18, 2), (4, 8, 16, 32), tables=[121] * 4, index_n=[36] * 4,
                                  masks=[(64, 36, 36), (16, 36, 36), (4, 36, 36), None], num_classes=0,
                                  prefix="encoder.")
           + [("decoder.0.weight", (3072, 1024, 1, 1)), ("decoder.0.bias", (3072,))])
    assert _layout(model) == exp
    assert len(exp) == 365
    assert sum(p.numel() for p in model.parameters()) == 89_874_104
    assert isinstance(model.encoder.head, nn.Identity)
    assert isinstance(model.decoder[1], nn.PixelShuffle) and model.decoder[1].upscale_factor == 32


def test_swin_l_224_w14_clamped_stages():
    with torch.device("meta"):
        m = SwinTransformer(img_size=224, window_size=14, num_classes=1000, **SWIN_L)
    exp = expected_swin_layout(192, (2, 2, 18, 2), (6, 12, 24, 48), tables=[729, 729, 729, 169],
                               index_n=[196, 196, 196, 49], masks=[(16, 196, 196), (4, 196, 196), None, None],
                               num_classes=1000)
    assert _layout(m) == exp
    assert sum(p.numel() for p in m.parameters()) == 196_794_556


def test_tiny_clamp_and_ape_keys():
    m = SwinTransformer(num_classes=5, ape=True, **TINY)  # stage resolutions 16, 8, 4; window 4
    sd = m.state_dict()
    assert list(sd)[0] == "absolute_pos_embed" and sd["absolute_pos_embed"].shape == (1, 256, 16)
    assert "layers.0.blocks.1.attn_mask" in sd and "layers.1.blocks.1.attn_mask" in sd
    assert "layers.2.blocks.1.attn_mask" not in sd  # 4x4 stage <= window 4: one unshifted window
    assert m.layers[2].blocks[1].shift_size == 0 and m.layers[2].blocks[1].attn_mask is None
    assert sd["layers.0.blocks.1.attn_mask"].shape == (16, 16, 16)
    assert sd["layers.1.blocks.1.attn_mask"].shape == (4, 16, 16)
    # window 6 at a 16x16 grid cannot partition
    with pytest.raises(ValueError, match="window"):
        SwinTransformer(**dict(TINY, window_size=6))


# ------------------------------------------------------------------------------------------------
# Buffers against explicit loops
# ------------------------------------------------------------------------------------------------


def _loop_rel_index(wh, ww):
    n = wh * ww
    out = np.zeros((n, n), np.int64)
    for i in range(n):
        hi, wi = divmod(i, ww)
        for j in range(n):
            hj, wj = divmod(j, ww)
            out[i, j] = (hi - hj + wh - 1) * (2 * ww - 1) + (wi - wj + ww - 1)
    return out


@pytest.mark.parametrize("wh,ww", [(4, 4), (7, 7), (2, 3)])
def test_relative_position_index_matches_loops(wh, ww):
    got = make_relative_position_index((wh, ww))
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), _loop_rel_index(wh, ww))


def test_block_index_buffer_matches_loops():
    m = SwinTransformer(num_classes=0, **TINY)
    for layer in m.layers:
        for blk in layer.blocks:
            ws = blk.window_size
            np.testing.assert_array_equal(blk.attn.relative_position_index.numpy(), _loop_rel_index(ws, ws))
            assert blk.attn.relative_position_bias_table.shape == ((2 * ws - 1) ** 2, blk.num_heads)


def _loop_shift_mask(H, W, ws, s):
    """Brute force: after rolling by -s, the token at rolled (r, c) came from original row (r+s) mod H,
    which wrapped around iff r >= H - s (same for columns). Two tokens of one window may attend to
    each other iff they agree on both wrap flags."""
    nwh, nww = H // ws, W // ws
    out = np.zeros((nwh * nww, ws * ws, ws * ws), np.float32)
    for wr in range(nwh):
        for wc in range(nww):
            w = wr * nww + wc
            for i in range(ws * ws):
                ri, ci = wr * ws + i // ws, wc * ws + i % ws
                for j in range(ws * ws):
                    rj, cj = wr * ws + j // ws, wc * ws + j % ws
                    same = (ri >= H - s) == (rj >= H - s) and (ci >= W - s) == (cj >= W - s)
                    out[w, i, j] = 0.0 if same else -100.0
    return out


@pytest.mark.parametrize("H,W,ws,s", [(8, 8, 4, 2), (12, 8, 4, 2), (9, 6, 3, 1)])
def test_shift_mask_matches_brute_force(H, W, ws, s):
    got = make_shift_attn_mask((H, W), ws, s)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), _loop_shift_mask(H, W, ws, s))


def test_block_mask_buffers_match_brute_force():
    m = SwinTransformer(num_classes=0, **TINY)
    for l, res in enumerate((16, 8)):
        blk = m.layers[l].blocks[1]
        assert blk.shift_size == 2
        np.testing.assert_array_equal(blk.attn_mask.numpy(), _loop_shift_mask(res, res, 4, 2))


# ------------------------------------------------------------------------------------------------
# Shifted-window block against a per-token brute-force reference (float64)
# ------------------------------------------------------------------------------------------------


def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _reference_block(blk, x, H, W, ws, s, heads):
    """x: (B, H*W, C) float64. Token (y, x) sits at rolled position ((y-s)%H, (x-s)%W); it attends to
    tokens in the same rolled window with equal wrap flags; bias uses in-window offsets."""
    B, L, C = x.shape
    hd = C // heads
    a = blk.attn
    h = _ln(x, blk.norm1.weight, blk.norm1.bias)
    qkv = h @ a.qkv.weight.T + a.qkv.bias
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    table = a.relative_position_bias_table
    pos = []
    for t in range(L):
        y, xx = divmod(t, W)
        r, c = (y - s) % H, (xx - s) % W
        pos.append((r, c, r >= H - s if s else False, c >= W - s if s else False))
    out = torch.zeros_like(x)
    for t in range(L):
        r, c, fr, fc = pos[t]
        keys = [u for u in range(L) if pos[u][0] // ws == r // ws and pos[u][1] // ws == c // ws
                and pos[u][2] == fr and pos[u][3] == fc]
        rows = [((r % ws) - (pos[u][0] % ws) + ws - 1) * (2 * ws - 1) + ((c % ws) - (pos[u][1] % ws) + ws - 1)
                for u in keys]
        for hh in range(heads):
            sl = slice(hh * hd, (hh + 1) * hd)
            logits = torch.einsum("bd,bkd->bk", q[:, t, sl] * hd ** -0.5, k[:, keys, sl])
            logits = logits + table[rows, hh]
            p = torch.softmax(logits, -1)
            out[:, t, sl] = torch.einsum("bk,bkd->bd", p, v[:, keys, sl])
    x = x + out @ a.proj.weight.T + a.proj.bias
    h2 = _ln(x, blk.norm2.weight, blk.norm2.bias) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
    h2 = 0.5 * h2 * (1.0 + torch.erf(h2 / math.sqrt(2.0)))  # exact GELU
    return x + h2 @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


@pytest.mark.parametrize("H,W,ws,shift", [(8, 8, 4, 2), (8, 12, 4, 2), (8, 8, 4, 0)])
def test_block_matches_brute_force_attention(H, W, ws, shift):
    torch.manual_seed(0)
    blk = SwinTransformerBlock(dim=8, input_resolution=(H, W), num_heads=2, window_size=ws, shift_size=shift)
    with torch.no_grad():  # non-trivial norms and biases
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))
    blk = blk.double().eval()
    x = torch.randn(2, H * W, 8, dtype=torch.float64)
    with torch.no_grad():
        got = blk(x)
        ref = _reference_block(blk, x, H, W, ws, shift, 2)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# PatchMerging channel order
# ------------------------------------------------------------------------------------------------


def test_patch_merging_channel_order():
    H, W = 4, 6
    pm = PatchMerging((H, W), dim=2)
    assert [k for k in pm.state_dict()] == ["reduction.weight", "norm.weight", "norm.bias"]
    assert pm.reduction.bias is None and pm.reduction.weight.shape == (4, 8)
    x = torch.zeros(1, H * W, 2)
    for r in range(H):
        for c in range(W):
            x[0, r * W + c] = torch.tensor([r, c], dtype=torch.float32)
    seen = {}
    pm.norm.register_forward_pre_hook(lambda mod, args: seen.setdefault("cat", args[0].clone()))
    out = pm(x)
    assert out.shape == (1, (H // 2) * (W // 2), 4)
    cat = seen["cat"][0]
    offsets = [(0, 0), (1, 0), (0, 1), (1, 1)]  # official: row offset fastest
    for i in range(H // 2):
        for j in range(W // 2):
            tok = cat[i * (W // 2) + j]
            for k, (dr, dc) in enumerate(offsets):
                assert tok[2 * k].item() == 2 * i + dr and tok[2 * k + 1].item() == 2 * j + dc
    ref = _ln(seen["cat"], pm.norm.weight, pm.norm.bias) @ pm.reduction.weight.T
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# SimMIM: pred layout, loss, masking
# ------------------------------------------------------------------------------------------------


def _tiny_simmim(seed=0):
    torch.manual_seed(seed)
    return build_torch_simmim_swin(dict(TINY, drop_path_rate=0.0), encoder_stride=8).eval()


def _mask(B, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    cells = (torch.rand(B, 4, 4, generator=g) < 0.6).long()  # 4x4 cells of 4x4 patches = 8x8 pixels
    return cells.repeat_interleave(n // 4, 1).repeat_interleave(n // 4, 2)


def test_pred_layout_matches_pixel_shuffle_and_x_rec():
    model = _tiny_simmim()
    x = torch.randn(2, 3, 32, 32)
    mask = _mask(2, 16)
    seen = {}
    model.decoder[0].register_forward_hook(lambda mod, a, o: seen.setdefault("conv", o.clone()))
    with torch.no_grad():
        out = model.forward_with_outputs(x, mask)
    r, conv, pred, x_rec = 8, seen["conv"], out["pred"], out["x_rec"]
    assert x_rec.shape == (2, 3, 32, 32) and pred.shape == (2, 16, r * r * 3) and conv.shape == (2, 192, 4, 4)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 3, 1)]:
        unit = i * 4 + j
        for p in range(r):
            for q in range(r):
                for c in range(3):
                    v = pred[b, unit, (p * r + q) * 3 + c]
                    assert v == x_rec[b, c, i * r + p, j * r + q]
                    assert v == conv[b, c * r * r + p * r + q, i, j]  # colour-major PixelShuffle


def test_loss_matches_independent_formula():
    model = _tiny_simmim()
    x = torch.randn(2, 3, 32, 32)
    mask = _mask(2, 16, seed=3)
    with torch.no_grad():
        out = model.forward_with_outputs(x, mask)
        loss_fwd = model(x, mask)
    M = np.stack([np.kron(mask[b].numpy(), np.ones((2, 2))) for b in range(2)])[:, None]  # (B,1,32,32)
    diff = np.abs(x.numpy().astype(np.float64) - out["x_rec"].numpy().astype(np.float64))
    ref = (diff * M).sum() / (M.sum() + 1e-5) / 3
    assert loss_fwd.ndim == 0
    np.testing.assert_allclose(out["loss"].item(), ref, rtol=1e-5)
    np.testing.assert_allclose(loss_fwd.item(), ref, rtol=1e-5)


def test_loss_gradient_only_on_masked_pixels():
    model = _tiny_simmim()
    x = torch.randn(1, 3, 32, 32)
    mask = _mask(1, 16, seed=5)
    x_rec = {}

    def keep(mod, a, o):
        o.retain_grad()
        x_rec["t"] = o

    model.decoder.register_forward_hook(keep)
    model(x, mask).backward()
    g = x_rec["t"].grad[0]
    pix = np.kron(mask[0].numpy(), np.ones((2, 2))).astype(bool)
    assert torch.all(g[:, torch.from_numpy(~pix)] == 0)
    assert torch.all(g[:, torch.from_numpy(pix)] != 0)


def test_full_mask_ignores_image_and_zero_mask_matches_classifier():
    model = _tiny_simmim()
    enc = model.encoder
    ones = torch.ones(2, 16, 16, dtype=torch.long)
    with torch.no_grad():
        a = enc(torch.randn(2, 3, 32, 32), ones)
        b = enc(torch.randn(2, 3, 32, 32), ones)
    assert a.shape == (2, 64, 4, 4)
    torch.testing.assert_close(a, b)
    # unmasked encoder == classifier trunk with the same weights (strict load, mask token dropped)
    clf = SwinTransformer(num_classes=0, **TINY).eval()
    sd = {k: v for k, v in enc.state_dict().items() if k != "mask_token"}
    clf.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = enc(x, torch.zeros(2, 16, 16, dtype=torch.bool))
        feats = clf.forward_features(x)
    torch.testing.assert_close(fmap.mean((2, 3)), feats, rtol=1e-5, atol=1e-6)

    # partial mask == classifier trunk fed with a hand-made blend of the normalised embedding
    mask = _mask(2, 16, seed=7)
    tok = mask.flatten(1).bool()  # (B, L) row-major over the 16x16 patch grid
    clf.patch_embed.register_forward_hook(
        lambda mod, a, o: torch.where(tok[..., None], enc.mask_token.expand_as(o), o))
    final = {}
    clf.norm.register_forward_hook(lambda mod, a, o: final.setdefault("t", o.clone()))
    with torch.no_grad():
        fmap = enc(x, mask)
        clf.forward_features(x)
    tokens = final["t"]  # (B, 16, 64), row-major over the 4x4 final grid
    torch.testing.assert_close(fmap, tokens.transpose(1, 2).reshape(2, 64, 4, 4), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Initialisation, stochastic depth, checkpointing, errors, devices
# ------------------------------------------------------------------------------------------------


def test_initialisation_statistics():
    torch.manual_seed(0)
    enc = SwinTransformerForSimMIM(img_size=64, patch_size=4, embed_dim=128, depths=(2, 2), num_heads=(4, 8),
                                   window_size=4)
    lin = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    w = torch.cat([m.weight.flatten() for m in lin])
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert all(m.bias is None or torch.all(m.bias == 0) for m in lin)
    for m in enc.modules():
        if isinstance(m, nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = enc.patch_embed.proj.weight
    bound = 1 / math.sqrt(3 * 4 * 4)
    assert conv.abs().max().item() <= bound
    assert abs(conv.std().item() - bound / math.sqrt(3)) < 0.15 * bound  # uniform, not N(0, .02)
    tables = torch.cat([m.attn.relative_position_bias_table.flatten() for l in enc.layers for m in l.blocks])
    assert abs(tables.std().item() - 0.02) < 0.003
    assert enc.mask_token.shape == (1, 1, 128) and 0.012 < enc.mask_token.std().item() < 0.028


def test_stochastic_depth_rates_and_drop_path():
    m = SwinTransformer(num_classes=0, drop_path_rate=0.3, **TINY)
    blocks = [b for l in m.layers for b in l.blocks]
    assert isinstance(blocks[0].drop_path, nn.Identity)
    for k, b in enumerate(blocks[1:], start=1):
        assert isinstance(b.drop_path, DropPath)
        assert abs(b.drop_path.drop_prob - 0.3 * k / 5) < 1e-6
    dp = DropPath(0.5).train()
    x = torch.ones(4000, 3)
    y = dp(x)
    rows = y[:, 0]
    assert torch.all((rows == 0) | (rows == 2.0)) and torch.all(y == y[:, :1])
    assert 0.45 < (rows == 0).float().mean().item() < 0.55
    assert torch.equal(dp.eval()(x), x)


def test_use_checkpoint_is_numerically_neutral():
    torch.manual_seed(0)
    a = SwinTransformer(num_classes=3, drop_path_rate=0.0, **TINY)
    b = SwinTransformer(num_classes=3, drop_path_rate=0.0, use_checkpoint=True, **TINY)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    ya, yb = a(x), b(x)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(a.head.weight.grad, b.head.weight.grad)


def test_input_validation():
    m = SwinTransformer(num_classes=2, **TINY)
    with pytest.raises(ValueError, match="doesn't match"):
        m(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="even"):
        SwinTransformer(**dict(TINY, img_size=36, window_size=3))  # 18 -> 9 -> merge of an odd grid
    with pytest.raises(ValueError, match="num_heads"):
        SwinTransformer(**dict(TINY, num_heads=(3, 2, 4)))
    with pytest.raises(ValueError, match="equal length"):
        SwinTransformer(**dict(TINY, num_heads=(1, 2)))
    with pytest.raises(ValueError, match="num_classes"):
        SwinTransformerForSimMIM(num_classes=10, **TINY)
    with pytest.raises(ValueError, match="encoder_stride"):
        SimMIM(SwinTransformerForSimMIM(**TINY), encoder_stride=32)
    model = _tiny_simmim()
    with pytest.raises(ValueError, match="mask"):
        model(torch.randn(1, 3, 32, 32), torch.zeros(1, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = _tiny_simmim()
    x = torch.randn(2, 3, 32, 32)
    mask = _mask(2, 16)
    with torch.no_grad():
        ref = model.forward_with_outputs(x, mask)
        model = model.cuda()
        got = model.forward_with_outputs(x.cuda(), mask.cuda())
    for k in ("loss", "x_rec", "pred"):
        torch.testing.assert_close(got[k].cpu(), ref[k], rtol=1e-3, atol=1e-4)
    assert model.encoder.layers[0].blocks[1].attn_mask.is_cuda
    assert model.encoder.layers[0].blocks[0].attn.relative_position_index.is_cuda
