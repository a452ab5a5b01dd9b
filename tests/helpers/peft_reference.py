"""A reference LoRA trainer: transformers' LlamaForCausalLM + `peft` + `torch.optim.AdamW`,
started from the adapters of a lima_jax LoRA model, trained on lima_jax's packed batches.

Layouts: our adapter A is [in..., R] and B is [R, out...] (the weight's own input and output
axes, as `lima_jax.model.hf.tensor_maps` lays the weights out: q/k heads with no permutation,
`wo`'s input axes (N, H) flattened in order); PEFT's lora_A.weight is [R, in] and lora_B.weight
[out, R], so A goes over as `a.reshape(-1, R).T` and B as `b.reshape(R, -1).T`.

Packed rows: each token's position inside its own example goes in as `position_ids`, and a 4-D
additive mask [B, 1, T, T] (0 where visible, the float32 minimum elsewhere) that transformers 5
passes to the eager attention as it is: a query sees a key of its own segment at or before its
position, padding (segment 0) sees only padding (`lima_jax.kernels.reference.attention_mask`).
"""

from __future__ import annotations

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

# our LoRA target -> (module of the decoder layer, its projection)
PEFT_MODULES = {
    "q": ("self_attn", "q_proj"),
    "k": ("self_attn", "k_proj"),
    "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"),
    "gate": ("mlp", "gate_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}


def block_causal_mask(segment_ids: np.ndarray, positions: np.ndarray) -> torch.Tensor:
    """[B, 1, T, T] float32 additive mask for packed rows."""
    seg = torch.tensor(np.asarray(segment_ids))
    pos = torch.tensor(np.asarray(positions))
    visible = (seg[:, :, None] == seg[:, None, :]) & (pos[:, None, :] <= pos[:, :, None])
    mask = torch.zeros(visible.shape, dtype=torch.float32)
    mask.masked_fill_(~visible, torch.finfo(torch.float32).min)
    return mask[:, None]


class PeftReference:
    """LoRA training of a Hugging Face checkpoint the way a PEFT user runs it, in float32."""

    def __init__(self, hf_dir, lora, adapters: dict, *, lr: float, b1: float, b2: float,
                 eps: float, weight_decay: float, threads: int = 1):
        """`lora`: our LoraSpec; `adapters`: our trainable parameters (`lima_jax.model.lora.
        trainable`), copied into PEFT's adapters. AdamW decays every adapter (all matrices)."""
        torch.set_num_threads(threads)  # several OpenMP threads crawl on a loaded 2-core machine
        model = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager",
                                                 dtype=torch.float32)
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=[PEFT_MODULES[t][1] for t in lora.targets], bias="none")
        self.model = get_peft_model(model, config).train()
        self.rank = lora.rank
        self.copy_adapters(adapters, lora.targets)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(b1, b2), eps=eps,
                                           weight_decay=weight_decay)

    def layers(self):
        return self.model.base_model.model.model.layers

    def projection(self, layer, target: str):
        module, name = PEFT_MODULES[target]
        return getattr(getattr(layer, module), name)

    def copy_adapters(self, adapters: dict, targets) -> None:
        from lima_jax.model.lora import LORA_A, LORA_B, TARGET_WEIGHTS

        r = self.rank
        with torch.no_grad():
            for target in targets:
                module, name, _ = TARGET_WEIGHTS[target]
                a = np.asarray(adapters["layers"][module][name + LORA_A], np.float32)  # [L, in..., R]
                b = np.asarray(adapters["layers"][module][name + LORA_B], np.float32)  # [L, R, out...]
                for i, layer in enumerate(self.layers()):
                    proj = self.projection(layer, target)
                    a_peft, b_peft = proj.lora_A["default"].weight, proj.lora_B["default"].weight
                    a_i = torch.from_numpy(np.ascontiguousarray(a[i].reshape(-1, r).T))
                    b_i = torch.from_numpy(np.ascontiguousarray(b[i].reshape(r, -1).T))
                    assert a_i.shape == a_peft.shape and b_i.shape == b_peft.shape, (
                        target, a_i.shape, a_peft.shape, b_i.shape, b_peft.shape)
                    a_peft.copy_(a_i)
                    b_peft.copy_(b_i)

    def adapters_as_ours(self, targets) -> dict[str, np.ndarray]:
        """PEFT's adapters back in our layouts: {'<name>_lora_a'|'<name>_lora_b': [L, ...]}
        without the out-axis shapes (flattened: A [L, IN, R], B [L, R, OUT])."""
        from lima_jax.model.lora import LORA_A, LORA_B, TARGET_WEIGHTS

        out = {}
        for target in targets:
            name = TARGET_WEIGHTS[target][1]
            projs = [self.projection(layer, target) for layer in self.layers()]
            out[name + LORA_A] = np.stack([p.lora_A["default"].weight.detach().numpy().T for p in projs])
            out[name + LORA_B] = np.stack([p.lora_B["default"].weight.detach().numpy().T for p in projs])
        return out

    def loss(self, batch: dict) -> torch.Tensor:
        """Masked cross-entropy summed over the batch / its loss tokens."""
        logits = self.model(
            input_ids=torch.as_tensor(batch["tokens"], dtype=torch.long),
            position_ids=torch.as_tensor(batch["positions"], dtype=torch.long),
            attention_mask=block_causal_mask(batch["segment_ids"], batch["positions"]),
        ).logits.float()
        targets = torch.as_tensor(batch["targets"], dtype=torch.long)
        mask = torch.as_tensor(batch["loss_mask"], dtype=torch.float32)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                               reduction="none").reshape(targets.shape)
        return (ce * mask).sum() / mask.sum().clamp(min=1.0)

    def step(self, batch: dict, lr: float) -> tuple[float, float]:
        """One AdamW update at learning rate `lr`; (loss, global L2 norm of the adapters' grads)
        before the update."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in self.params)).item()
        self.optimizer.step()
        return loss.item(), grad_norm
