"""CUT3R model pieces and execution modes: RoPE2D against the reference kernel's loop, align-corners
upsampling, scan vs Python loop, streaming vs whole-video, 1 device vs an 8-device mesh."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.infer.cut3r_geometry import Cut3rGeometry
from vlm3r_jax.models.cut3r import init_cut3r, tiny_config
from vlm3r_jax.models.cut3r.dpt import upsample2x_align_corners
from vlm3r_jax.models.cut3r.rope2d import apply_rope2d, state_positions
from vlm3r_jax.sharding import make_mesh

# odd sizes: head_dim 12 (Q = 3), 1 decoder head, state of 10 tokens, 2x3 patch grid
ODD = dict(enc_embed_dim=24, enc_num_heads=2, dec_embed_dim=24, dec_num_heads=1, dec_depth=2, state_size=10,
           state_dec_num_heads=2, local_mem_size=3, dpt_feature_dim=6, dpt_last_dim=5, dpt_layer_dims=(3, 5, 7, 9),
           rope_fp16_rounding=False, enc_depth=1, local_mem_depth=1)  # fmt: skip


def _rope_reference_loop(tokens, pos, base, f0):
    """Transliteration of the reference's rope_2d_cpu loop (curope.cpp), float32."""
    t = tokens.astype(np.float32).copy()
    b_, n_, h_, d4 = t.shape[0], t.shape[1], t.shape[2], t.shape[3] // 4
    for b in range(b_):
        for x in range(2):
            for n in range(n_):
                p = pos[b, n, x]
                for h in range(h_):
                    for d in range(d4):
                        u = t[b, n, h, d + x * 2 * d4]
                        v = t[b, n, h, d + d4 + x * 2 * d4]
                        ang = np.float32(f0 * p) / np.float32(math.pow(base, d / float(d4)))
                        c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
                        t[b, n, h, d + x * 2 * d4] = u * c - v * s
                        t[b, n, h, d + d4 + x * 2 * d4] = v * c + u * s
    return t


@pytest.mark.parametrize("head_dim", [8, 12, 6, 10])  # 6, 10: the CPU kernel leaves the last 2 values alone
def test_rope2d_matches_reference_kernel(head_dim):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 3, head_dim)).astype(np.float32)
    pos = rng.integers(-1, 30, size=(2, 7, 2)).astype(np.int64)
    pos[:, 0] = -1  # the pose token's position
    want = _rope_reference_loop(x, pos, 100.0, 1.0)
    got = np.asarray(apply_rope2d(jnp.asarray(x), jnp.asarray(pos), 100.0, 1.0))
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
    # fp16 emulation: f32(f16(rope(f32(f16(x)))))
    want16 = _rope_reference_loop(x.astype(np.float16).astype(np.float32), pos, 100.0, 1.0).astype(np.float16)
    got16 = np.asarray(apply_rope2d(jnp.asarray(x), jnp.asarray(pos), 100.0, 1.0, fp16_rounding=True))
    assert np.mean(got16 == want16.astype(np.float32)) > 0.99
    np.testing.assert_allclose(got16, want16.astype(np.float32), atol=4e-3)


def test_state_positions_2d():
    # S = 10: w = int(sqrt(10)) = 3 -> odd -> 4
    np.testing.assert_array_equal(np.asarray(state_positions(10))[:6], [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1]])
    assert np.asarray(state_positions(16)).max(0).tolist() == [3, 3]


def test_upsample_align_corners():
    rng = np.random.default_rng(1)
    for h, w in ((1, 3), (2, 2), (3, 5)):
        x = rng.normal(size=(1, h, w, 2)).astype(np.float32)
        got = np.asarray(upsample2x_align_corners(jnp.asarray(x)))

        # explicit formula: out[i] samples in[i * (n - 1) / (2n - 1)]
        def axis_w(n):
            m = np.zeros((2 * n, n))
            for i in range(2 * n):
                s = i * (n - 1) / (2 * n - 1) if n > 1 else 0.0
                i0 = min(int(np.floor(s)), n - 1)
                i1 = min(i0 + 1, n - 1)
                m[i, i0] += 1 - (s - i0)
                m[i, i1] += s - i0
            return m

        want = np.einsum("ih,jw,bhwc->bijc", axis_w(h), axis_w(w), x)
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.torch
def test_upsample_align_corners_vs_torch():
    import torch

    x = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=True)
    got = upsample2x_align_corners(jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=1e-6)


@pytest.fixture(scope="module")
def odd_geo():
    return Cut3rGeometry(init_cut3r(tiny_config(**ODD), seed=1))


@pytest.fixture(scope="module")
def video():
    return np.random.default_rng(0).uniform(-1, 1, size=(2, 2, 32, 48, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def whole(odd_geo, video):
    """Unsharded whole-video rollout (B = 2, no heads), shared by several tests to save compiles."""
    return {k: np.asarray(v) for k, v in odd_geo.stream_batch(video, with_heads=False).items()}


def test_scan_equals_python_loop(odd_geo, video):
    """jax.lax.scan over frames == a Python loop calling the same pure step."""
    graphdef, state = odd_geo.graphdef, odd_geo.state

    @jax.jit
    def both(state, images):
        model = nnx.merge(graphdef, state)
        _, scanned = model.rollout(images, with_heads=False)
        b, t = images.shape[:2]
        feats, pos = model.encode(images.reshape((b * t,) + images.shape[2:]))
        feats = feats.reshape(b, t, *feats.shape[1:])
        carry = model.init_carry(b)
        loop = []
        for i in range(t):
            carry, out = model.step(carry, feats[:, i], pos, None)
            loop.append(out)
        return scanned, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs, 1), *loop)

    scanned, loop = both(state, jnp.asarray(video))
    assert scanned.keys() == loop.keys()
    for k in scanned:
        # same ops, different XLA fusion inside/outside the scan: measured max |diff| ~2e-6
        np.testing.assert_allclose(np.asarray(scanned[k]), np.asarray(loop[k]), atol=1e-5, rtol=1e-5, err_msg=k)


def test_streaming_matches_whole_video(odd_geo, video, whole):
    """init_stream + step (one frame at a time, per-frame encoder) == stream (batched encoder + scan)."""
    carry = odd_geo.init_stream(batch=2)
    for i in range(video.shape[1]):
        carry, out = odd_geo.step(carry, video[:, i], with_heads=False)
        for k in ("dec_pose_token_out", "dec_img_tokens_out", "state_after_frame", "mem_after_frame"):
            np.testing.assert_allclose(np.asarray(out[k]), whole[k][:, i], atol=1e-4, rtol=1e-4, err_msg=k)
    last = whole["dec_img_layer2"]  # what .tokens() returns: camera token first
    assert last.shape == (2, 2, 1 + 6, 24)
    np.testing.assert_array_equal(last[:, :, :1], whole["dec_pose_token_out"])
    np.testing.assert_array_equal(last[:, :, 1:], whole["dec_img_tokens_out"])


def test_one_device_vs_8_device_mesh(odd_geo, video, whole):
    assert len(jax.devices()) >= 8
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = Cut3rGeometry(odd_geo.model, mesh=mesh)
    specs = {str(v.get_value().sharding.spec) for v in jax.tree_util.tree_leaves(
        sharded.state, is_leaf=lambda x: isinstance(x, nnx.Variable))}  # fmt: skip
    assert len(specs) > 1, "expected some parameters to be sharded"
    from vlm3r_jax.sharding import shard_batch

    x = shard_batch(jnp.asarray(video), mesh)
    b = sharded.stream_batch(x, with_heads=False)
    for k in whole:
        np.testing.assert_allclose(whole[k], np.asarray(b[k]), atol=1e-5, rtol=1e-5, err_msg=k)


def test_update_and_reset_masks(odd_geo, video):
    model = odd_geo.model
    upd = jnp.asarray([[True, False], [True, True]])
    rst = jnp.asarray([[False, False], [False, True]])
    carry, out = jax.jit(lambda im: model.rollout(im, with_heads=False, update=upd, reset=rst))(jnp.asarray(video))
    init = model.init_carry(2)
    s = np.asarray(out["state_after_frame"])
    np.testing.assert_array_equal(s[0, 1], s[0, 0])  # no update at frame 1 -> state kept
    np.testing.assert_allclose(s[1, 1], np.asarray(init.state[1]), atol=1e-6)  # reset at frame 1
    np.testing.assert_allclose(np.asarray(out["mem_after_frame"])[1, 1], np.asarray(init.mem[1]), atol=1e-6)


def test_input_validation(odd_geo):
    with pytest.raises(ValueError, match="hold no pixels"):
        odd_geo.stream(np.zeros((0, 32, 48, 3), np.float32))
    with pytest.raises(TypeError, match="float"):
        odd_geo.stream(np.zeros((2, 32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="multiple of the patch"):
        odd_geo.stream(np.zeros((2, 30, 48, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        odd_geo.stream(np.zeros((32, 48, 3), np.float32))


@pytest.mark.parametrize("overrides", [dict(patch_size=8), dict(dec_depth=1)])
def test_heads_refuse_what_the_reference_cannot_run(overrides):
    """The reference's DPT head crashes on both; we say why, and the tokens still work."""
    geo = Cut3rGeometry(init_cut3r(tiny_config(**dict(ODD, **overrides)), seed=0))
    frames = np.zeros((1, 32, 48, 3), np.float32)
    with pytest.raises(ValueError, match="patch_size 16 and dec_depth >= 2"):
        geo.stream(frames)
    assert geo.tokens(frames).shape[0] == 1


def test_configs_the_reference_accepts():
    """depth_head / pose_conf_head do nothing for the dpt 'pts3d+pose' head; head widths that are
    not a multiple of 4 run through the CPU kernel's partial rotation."""
    geo = Cut3rGeometry(init_cut3r(tiny_config(**dict(ODD, depth_head=True, pose_conf_head=True, enc_num_heads=4,
                                                       dec_embed_dim=20, dec_num_heads=2)), seed=0))
    out = geo.stream(np.zeros((2, 32, 48, 3), np.float32))
    assert out["pts3d_in_self_view"].shape == (2, 32, 48, 3)
