"""Forward + backward of transformers' MixtralSparseMoeBlock at moe-bench's sizes, in bf16, for the GPU
target "moetrain's MoE layer at least 3x transformers' MixtralSparseMoeBlock" (docs/gpu.md). Prints one
JSON line per experts implementation, the last one being the one the target is judged against.

The GPU machine may have no transformers (no network there). Then the block is the copy below of
transformers 5.23.0's MixtralTopKRouter + MixtralExperts (eager) + MixtralSparseMoeBlock forward
(models/mixtral/modeling_mixtral.py, Apache License 2.0), which the dry run checks output-for-output
against the installed transformers on the dev machine (--verify-copy). With transformers installed
both of its implementations run: "eager" (the loop over experts below) and "grouped_mm"
(torch._grouped_mm, what from_pretrained picks on GPUs that support it).

usage: mixtral_bench.py [--device cpu|cuda] [--tokens N] [--d-model D] [--experts E] [--top-k K]
                        [--hidden F] [--warmup N] [--iters N] [--verify-copy]"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn


class CopiedMixtralBlock(nn.Module):
    """transformers 5.23.0 MixtralSparseMoeBlock with MixtralTopKRouter and eager MixtralExperts (SiLU),
    inference of jitter off; parameter names and layouts as there."""

    def __init__(self, hidden, intermediate, experts, top_k):
        super().__init__()
        self.top_k, self.num_experts, self.hidden_dim = top_k, experts, hidden
        self.gate_weight = nn.Parameter(torch.empty(experts, hidden))
        self.gate_up_proj = nn.Parameter(torch.empty(experts, 2 * intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(experts, hidden, intermediate))

    def router(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = F.linear(hidden_states, self.gate_weight)
        router_probs = torch.nn.functional.softmax(router_logits.float(), dim=-1)
        router_top_value, router_indices = torch.topk(router_probs, self.top_k, dim=-1)
        router_top_value /= router_top_value.sum(dim=-1, keepdim=True)
        return router_logits, router_top_value, router_indices

    def experts(self, hidden_states, top_k_index, top_k_weights):
        final_hidden_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
            expert_mask = expert_mask.permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            expert_idx = expert_idx[0]
            if expert_idx == self.num_experts:
                continue
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[token_idx]
            gate, up = nn.functional.linear(current_state, self.gate_up_proj[expert_idx]).chunk(2, dim=-1)
            current_hidden_states = nn.functional.silu(gate) * up
            current_hidden_states = nn.functional.linear(current_hidden_states, self.down_proj[expert_idx])
            current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, current_hidden_states.to(final_hidden_states.dtype))
        return final_hidden_states

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        _, top_k_weights, top_k_index = self.router(hidden_states)
        hidden_states = self.experts(hidden_states, top_k_index, top_k_weights)
        return hidden_states.reshape(batch_size, sequence_length, hidden_dim)


def transformers_block(a, implementation):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    config = MixtralConfig(hidden_size=a.d_model, intermediate_size=a.hidden, num_local_experts=a.experts,
                           num_experts_per_tok=a.top_k, router_jitter_noise=0.0)
    config._experts_implementation = implementation
    return MixtralSparseMoeBlock(config)


def init(block):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.02)
    return block


def time_block(block, a, dev):
    block = block.to(device=dev, dtype=torch.bfloat16)
    x = torch.randn(1, a.tokens, a.d_model, device=dev, dtype=torch.bfloat16, requires_grad=True)

    def step():
        block(x).float().square().mean().backward()

    for _ in range(a.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / a.iters


def verify_copy(a):
    """The copy against the installed transformers block, same weights, on the CPU in fp32."""
    from transformers.models.mixtral import modeling_mixtral
    ours = init(CopiedMixtralBlock(a.d_model, a.hidden, a.experts, a.top_k))
    theirs = transformers_block(a, "eager")
    with torch.no_grad():
        theirs.gate.weight.copy_(ours.gate_weight)
        theirs.experts.gate_up_proj.copy_(ours.gate_up_proj)
        theirs.experts.down_proj.copy_(ours.down_proj)
    x = torch.randn(2, 16, a.d_model)
    same = torch.equal(ours(x), theirs(x))
    print(json.dumps({"verify_copy": same, "transformers_file": modeling_mixtral.__file__}))
    return same


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    for name, default in (("tokens", 4096), ("d-model", 256), ("experts", 8), ("top-k", 2), ("hidden", 512),
                          ("warmup", 2), ("iters", 10)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--wheels", help="ignored (kept for older gpu_check.py)")
    ap.add_argument("--verify-copy", action="store_true")
    a = ap.parse_args()
    if a.verify_copy:
        raise SystemExit(0 if verify_copy(a) else 1)
    dev = torch.device(a.device)
    try:
        import transformers
        runs = [(f"transformers {transformers.__version__} eager", lambda: transformers_block(a, "eager"))]
        if dev.type == "cuda":
            runs.append((f"transformers {transformers.__version__} grouped_mm", lambda: transformers_block(a, "grouped_mm")))
    except ImportError:
        runs = [("copy of transformers 5.23.0 eager (transformers not installed)",
                 lambda: CopiedMixtralBlock(a.d_model, a.hidden, a.experts, a.top_k))]
    for label, make in runs:
        try:
            seconds = time_block(init(make()), a, dev)
        except Exception as e:  # grouped_mm may not dispatch on this GPU or torch: say so, keep eager
            print(json.dumps({"bench": "mixtral-block", "implementation": label, "error": f"{type(e).__name__}: {e}"}))
            continue
        print(json.dumps({"bench": "mixtral-block", "implementation": label, "device": a.device, "precision": "bf16",
                          "tokens": a.tokens, "d_model": a.d_model, "experts": a.experts, "top_k": a.top_k,
                          "hidden": a.hidden, "iters": a.iters, "ms_per_iter": round(1e3 * seconds, 3),
                          "tokens_per_s": round(a.tokens / seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
