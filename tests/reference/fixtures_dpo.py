"""fixtures_dpo.py — TRL's DPO loss (sigmoid) and its gradient on fixture log-probabilities.

Run by make_fixtures.py (from the repository root, with the pinned venv); writes

  tests/fixtures/dpo_trl.safetensors

What TRL computes here is its own code, not a re-statement of the formula: DPOTrainer._compute_loss (the
method the trainer calls every step) runs on a stand-in `self` and a stand-in model whose per-token
log-probabilities are a leaf tensor. Each sequence gets one completion token whose log-probability is the
fixture's sequence log-probability, so TRL's sum over completion tokens returns it unchanged and autograd's
gradient with respect to that leaf is the gradient with respect to the sequence log-probability log π(y|x).

Cases (float64 throughout; inputs are rounded to float32 first, since that is what the fixture stores):
  case0  N=8 pairs, β=0.1 (the default), log-probs of sequences of ~10-60 tokens (−5 … −120)
  case1  N=5 pairs, β=0.5, policy close to the reference (differences ~1e-2)
  case2  N=4 pairs, β=0.1, extreme margins (|β·Δ| up to ~50) where a naive log(σ(x)) under/overflows

Tensors per case: policy_chosen, policy_rejected, ref_chosen, ref_rejected [N] (inputs); loss [1] (TRL's
mean over pairs); grad_policy_chosen, grad_policy_rejected [N] (d loss / d log π); reward_accuracy [1],
reward_margin [1], reward_chosen [1], reward_rejected [1] (TRL's logged metrics); beta [1].
All stored as float32 (computed in float64).
"""

import collections
import os
import sys
import types

import torch
import trl
from trl.trainer.dpo_trainer import DPOTrainer

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import FIXTURES, save_fixture  # noqa: E402


class _Accelerator:
    """The two collectives _compute_loss calls, for one process."""
    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x


class _Model:
    """Returns the given per-token log-probabilities as the fused-LM-head output TRL reads."""

    def __init__(self, log_probs):
        self.log_probs = log_probs
        self.training = True

    def __call__(self, **kwargs):
        lp = self.log_probs
        return types.SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp),
                                     is_top1=torch.zeros_like(lp, dtype=torch.bool))


def trl_dpo(pc, pr, rc, rr, beta):
    """TRL's sigmoid DPO loss, gradient w.r.t. the policy log-probs, and its logged reward metrics."""
    n = pc.numel()
    leaf = torch.cat([pc, pr]).clone().unsqueeze(1).requires_grad_(True)  # [2N, 1]: chosen rows, then rejected
    model = _Model(leaf)
    self = types.SimpleNamespace(
        model=model, accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, use_weighting=False,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    inputs = {
        "input_ids": torch.zeros(2 * n, 2, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, 2, dtype=torch.long),
        "completion_mask": torch.ones(2 * n, 2, dtype=torch.long),  # shifted: one completion token per row
        "ref_chosen_logps": rc, "ref_rejected_logps": rr,
    }
    loss = DPOTrainer._compute_loss(self, model, inputs, return_outputs=False)
    loss.backward()
    g = leaf.grad.squeeze(1)
    m = self._metrics["train"]
    return loss.detach(), g[:n], g[n:], m


def make_case(gen, n, beta, kind):
    if kind == "typical":
        pc = -(5 + 115 * torch.rand(n, generator=gen, dtype=torch.float64))
        pr = -(5 + 115 * torch.rand(n, generator=gen, dtype=torch.float64))
        rc = pc + 4 * torch.randn(n, generator=gen, dtype=torch.float64)
        rr = pr + 4 * torch.randn(n, generator=gen, dtype=torch.float64)
    elif kind == "near":
        rc = -(5 + 60 * torch.rand(n, generator=gen, dtype=torch.float64))
        rr = -(5 + 60 * torch.rand(n, generator=gen, dtype=torch.float64))
        pc = rc + 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
        pr = rr + 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
    else:  # extreme: β·Δ = ±50, ±20
        rc = torch.full((n,), -30.0, dtype=torch.float64)
        rr = torch.full((n,), -30.0, dtype=torch.float64)
        pc = rc + torch.tensor([250.0, -250.0, 100.0, -100.0], dtype=torch.float64)
        pr = rr + torch.tensor([-250.0, 250.0, -100.0, 100.0], dtype=torch.float64)
    # the fixture stores float32: compute from the float32-rounded values
    return [t.float().double() for t in (pc, pr, rc, rr)]


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(4242)
    print(f"trl {trl.__version__}, torch {torch.__version__}")
    out = {}
    for name, n, beta, kind in [("case0", 8, 0.1, "typical"), ("case1", 5, 0.5, "near"), ("case2", 4, 0.1, "extreme")]:
        pc, pr, rc, rr = make_case(gen, n, beta, kind)
        loss, gc, gr, m = trl_dpo(pc, pr, rc, rr, beta)
        if not torch.isfinite(loss) or not torch.isfinite(gc).all():
            print(f"{name}: TRL gave a non-finite value")
            return 1
        print(f"{name}: beta {beta} loss {loss.item():.6f} reward accuracy {m['rewards/accuracies'][0]:.3f} "
              f"margin {m['rewards/margins'][0]:.4f}")
        f32 = lambda t: t.detach().reshape(-1).float().contiguous()  # noqa: E731
        out.update({
            f"{name}.policy_chosen": f32(pc), f"{name}.policy_rejected": f32(pr),
            f"{name}.ref_chosen": f32(rc), f"{name}.ref_rejected": f32(rr),
            f"{name}.loss": f32(loss), f"{name}.grad_policy_chosen": f32(gc), f"{name}.grad_policy_rejected": f32(gr),
            f"{name}.reward_accuracy": f32(torch.tensor(m["rewards/accuracies"][0])),
            f"{name}.reward_margin": f32(torch.tensor(m["rewards/margins"][0])),
            f"{name}.reward_chosen": f32(torch.tensor(m["rewards/chosen"][0])),
            f"{name}.reward_rejected": f32(torch.tensor(m["rewards/rejected"][0])),
            f"{name}.beta": f32(torch.tensor(beta)),
        })
    save_fixture(out, os.path.join(FIXTURES, "dpo_trl.safetensors"),
                 {"trl": trl.__version__, "torch": torch.__version__, "cases": "case0,case1,case2"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
