"""Reference side of bench/vlm3r_forward.py: the official VLM-3R PyTorch code (a user's checkout,
imported at run time; nothing of it is part of this repository), timed per stage on CPU float32.

Run by vlm3r_forward.py in a subprocess (the official code needs transformers 4.40); prints one
``RESULT {json}`` line. Set-up that does not change the arithmetic: random weights instead of the
hub SigLIP and the CUT3R ``.pth`` (``from_pretrained`` is patched to build from the bench shapes),
a torch stand-in for CUT3R's CUDA RoPE when ``curope`` is not compiled, and empty stand-ins for
optional imports that the code path never calls (open_clip, decord, open3d, ...).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import logging
import os
import sys
import time
import types

# optional dependencies imported at module level by files the VLM-3R path does not use
_OPTIONAL = {"open_clip", "einops_exts", "imagebind", "s2wrapper", "decord", "open3d", "accelerate", "deepspeed",
             "flash_attn", "torchvision", "cv2"}


class _Anything(types.ModuleType):
    """A module whose every attribute is a callable placeholder (never called on the VLM-3R path)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "get_logger":
            return lambda n, log_level=None: logging.getLogger(n)
        return _Anything(f"{self.__name__}.{name}")

    def __call__(self, *a, **k):
        raise RuntimeError(f"{self.__name__} is a benchmark stand-in for a missing optional dependency")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in _OPTIONAL:
            return None
        for finder in sys.meta_path:  # a real installation wins
            if finder is self:
                continue
            try:
                spec = finder.find_spec(name, path, target)
            except (ImportError, AttributeError, ValueError):
                spec = None
            if spec is not None:
                return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        m = _Anything(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module):
        pass


def setup(src: str, cut3r: str, s: dict) -> tuple:
    import torch
    import transformers

    if not transformers.__version__.startswith("4."):
        raise SystemExit(f"the official VLM-3R code needs transformers 4.40 (found {transformers.__version__} at "
                         f"{transformers.__file__}); pass --reference-site <dir with transformers==4.40.0>")
    sys.meta_path.append(_StubFinder())
    sys.path[:0] = [src, cut3r, os.path.join(cut3r, "src")]
    os.chdir(src)  # the official code appends the relative path 'CUT3R'
    import dust3r.utils.path_to_croco  # noqa: F401

    notes = []
    try:
        from models.curope import cuRoPE2D  # noqa: F401
        notes.append("compiled curope")
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from cut3r_vs_reference import _torch_rope_standin

        stub = types.ModuleType("models.curope")
        stub.cuRoPE2D = _torch_rope_standin()
        sys.modules["models.curope"] = stub
        notes.append("torch stand-in for curope")

    from src.dust3r.model import ARCroco3DStereo, ARCroco3DStereoConfig

    inf = float("inf")
    c3 = s["cut3r"]

    def cut3r_random(cls, path, **kw):
        kwargs = dict(output_mode="pts3d+pose", head_type="dpt", depth_mode=("exp", -inf, inf),
                      conf_mode=("exp", 1, inf), pose_mode=("exp", -inf, inf), landscape_only=False,
                      patch_embed_cls="PatchEmbedDust3R", state_pe="2d", rgb_head=True, pose_head=True,
                      img_size=(512, 512), patch_size=16, pos_embed="RoPE100", **c3)
        return cls(ARCroco3DStereoConfig(**kwargs)).eval()

    ARCroco3DStereo.from_pretrained = classmethod(cut3r_random)

    import llava.model.multimodal_encoder.siglip_encoder as se

    sl = s["siglip"]

    def siglip_random(cls, name, **kw):
        return cls(se.SigLipVisionConfig(**sl))

    se.SigLipVisionModel.from_pretrained = classmethod(siglip_random)
    from llava.model.language_model.llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM

    lm = s["llm"]
    cfg = LlavaQwenConfig(
        **lm, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=32768,
        use_sliding_window=False, mm_vision_tower="bench-random-siglip", mm_hidden_size=sl["hidden_size"],
        mm_projector_type="mlp2x_gelu", mm_spatial_pool_mode="bilinear", mm_spatial_pool_stride=2,
        mm_patch_merge_type="spatial_unpad", mm_newline_position="grid", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", mm_use_im_patch_token=False, mm_use_im_start_end=False,
        image_aspect_ratio="anyres_max_9", spatial_tower="cut3r", mm_spatial_tower="cut3r",
        spatial_feature_dim=c3["dec_embed_dim"], spatial_tower_select_feature="all", fusion_block="cross_attention",
        tokenizer_model_max_length=32768, use_cache=True)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlavaQwenForCausalLM(cfg)
    model.get_model().get_spatial_tower().load_model()
    model = model.float().eval()
    return model, notes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--cut3r", default=None)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-heads", action="store_true",
                    help="skip CUT3R's DPT/pose heads (the official code runs them and discards the output)")
    a = ap.parse_args()
    s = json.loads(a.spec)
    src = os.path.abspath(a.src)
    cut3r = os.path.abspath(a.cut3r or os.path.join(src, "CUT3R"))
    if not os.path.isdir(os.path.join(src, "llava")):
        raise SystemExit(f"{src} is not a VLM-3R checkout (no llava/ package)")
    if not os.path.isdir(os.path.join(cut3r, "src", "dust3r")):
        raise SystemExit(f"no CUT3R at {cut3r} (src/dust3r missing): init the CUT3R submodule or pass --reference-cut3r")

    import numpy as np
    import torch
    import transformers

    model, notes = setup(src, cut3r, s)
    if a.no_heads:
        cut3r_model = model.get_model().get_spatial_tower().spatial_tower.spatial_model.encoder.cut3r
        cut3r_model._downstream_head = lambda *args, **kw: {}
        notes.append("CUT3R heads skipped")
    rng = np.random.default_rng(0)
    ids = rng.integers(10, s["llm"]["vocab_size"] - 10, size=(1, s["prompt_len"])).astype(np.int64)
    ph = s["prompt_len"] // 2
    ids[0, ph] = -200
    frames = rng.uniform(-1, 1, size=(s["frames"], 384, 384, 3)).astype(np.float32)
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    ids_t = torch.from_numpy(ids)
    nt = s["new_tokens"]
    mm = model.get_model()
    gen_kw = dict(max_new_tokens=nt, min_new_tokens=nt, do_sample=False, num_beams=1, pad_token_id=0, use_cache=True)

    def best(fn):
        out = fn()
        t = float("inf")
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            out = fn()
            t = min(t, time.perf_counter() - t0)
        return t, out

    r: dict = {"s": {}, "torch": torch.__version__, "transformers": transformers.__version__,
               "threads": torch.get_num_threads(), "notes": notes,
               "params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        r["s"]["siglip"], feats = best(lambda: mm.get_vision_tower()(images))
        r["s"]["cut3r"], (cam, patch) = best(lambda: mm.get_spatial_tower()(images))
        geo = torch.cat([cam, patch], dim=1)
        r["s"]["fusion"], fused = best(lambda: mm.get_fusion_block()(feats, geo)[0])

        def splice():
            x = model.get_2dPool(mm.mm_projector(fused))
            video = model.add_token_per_grid(x)
            emb = mm.embed_tokens
            return torch.cat([emb(ids_t[:, :ph]), video[None], emb(ids_t[:, ph + 1:])], dim=1)

        r["s"]["projector_splice"], emb = best(splice)
        r["s"]["llm_prefill"], _ = best(lambda: model(inputs_embeds=emb, use_cache=True))
        gen_s, _ = best(lambda: super(type(model), model).generate(inputs_embeds=emb, **gen_kw))
        r["s"]["decode"] = max(gen_s - r["s"]["llm_prefill"], 0.0)
        r["s"]["end_to_end"], out = best(lambda: model.generate(inputs=ids_t, images=[images], modalities=["video"],
                                                                **gen_kw))
    r["spliced_len"] = int(emb.shape[1])
    r["new_tokens"] = int(out.shape[1])
    print("RESULT " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
