"""fixtures_train.py — what PyTorch's optimizer and clipping compute, for tests/test_train.cpp.

Run by make_fixtures.py (from the repository root, with the pinned venv). Writes, deterministically:

  tests/fixtures/train/adamw.safetensors
      torch.optim.AdamW (betas (0.9, 0.95), eps 1e-8, foreach=False) over 6 steps on two parameter groups, as the
      DeepSeek recipe splits them (metadata "lr": the six rates, space-separated): a matrix [6, 5] with weight_decay 0.1 and a norm weight [5] with none; the
      learning rate changes every step (set in the param group before .step(), as a scheduler does).
      init.<p>, grad.<step>.<p> (step 0..5), final.<p>, exp_avg.<p>, exp_avg_sq.<p>  (f32)
  tests/fixtures/train/clip.safetensors
      torch.nn.utils.clip_grad_norm_(params, max_norm=1.0) on three gradients, once with a total norm above 1
      (clipped) and once below (untouched): <case>.grad.<i>, <case>.clipped.<i>, <case>.total_norm [1]  (f32)
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "train")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(2401)
torch.set_num_threads(1)


def adamw_fixture():
    shapes = {"matrix": (6, 5), "norm": (5,)}
    init = {"matrix": torch.randn(6, 5) * 0.5, "norm": 1.0 + 0.1 * torch.randn(5)}
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    opt = torch.optim.AdamW([{"params": [params["matrix"]], "weight_decay": 0.1},
                             {"params": [params["norm"]], "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False, fused=False)
    lrs = [1e-3, 5e-3, 2e-2, 2e-2, 6.32e-3, 2e-3]
    out = {f"init.{k}": v.clone() for k, v in init.items()}
    for step, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        for k, p in params.items():
            # gradients of very different scales, some tiny (where eps matters)
            scale = [1.0, 0.01, 3.0, 1e-6, 0.3, 1.0][step]
            p.grad = torch.randn(shapes[k]) * scale
            out[f"grad.{step}.{k}"] = p.grad.clone()
        opt.step()
    for k, p in params.items():
        st = opt.state[p]
        out[f"final.{k}"] = p.detach().clone()
        out[f"exp_avg.{k}"] = st["exp_avg"].clone()
        out[f"exp_avg_sq.{k}"] = st["exp_avg_sq"].clone()
    out = {k: v.float().contiguous() for k, v in out.items()}
    path = os.path.join(OUT, "adamw.safetensors")
    save_file(out, path, metadata={"torch": torch.__version__, "steps": str(len(lrs)),
                                   "lr": " ".join(repr(x) for x in lrs)})
    print("wrote", path)


def clip_fixture():
    out = {}
    for case, scale in (("big", 2.0), ("small", 0.05)):
        grads = [torch.randn(7, 3) * scale, torch.randn(11) * scale, torch.randn(2, 2, 2) * scale]
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0, foreach=False)
        for i, (p, g) in enumerate(zip(params, grads)):
            out[f"{case}.grad.{i}"] = g.contiguous()
            out[f"{case}.clipped.{i}"] = p.grad.clone().contiguous()
        out[f"{case}.total_norm"] = norm.reshape(1).float()
        print(f"clip {case}: total norm {norm.item():.6f}")
    path = os.path.join(OUT, "clip.safetensors")
    save_file(out, path, metadata={"torch": torch.__version__})
    print("wrote", path)


if __name__ == "__main__":
    adamw_fixture()
    clip_fixture()
