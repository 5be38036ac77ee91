"""How the frozen LLM's reading of a prompt becomes the DiT's condition, and how the DiT's output becomes a velocity.

    class Head(PromptConditioning):                   # GenHead and the exported MllmGenHead both do this
        def __init__(...):
            self.init_conditioning(cond_cfg, llm_hidden_size, cond_dim)
    cond, mask, pooled = head.encode_prompt(language_model, input_ids, attention_mask)   # (B,T,D) (B,T) (B,D)
    latents = head.sample_latents(noise, cond, mask, pooled, steps=10, cfg_scale=3.0)

The condition options (``CONDITION_KEYS``; ``mllm.gen.head.GenHeadConfig`` documents and checks them):
  condition       "queries": K learned query embeddings appended after the prompt, their states only
                  (MetaQuery); "prompt": the prompt tokens' own states; "prompt+queries": both, in that order
  llm_layers      hidden-state indices read (0 = the LLM's input embeddings, -1 = the last layer after the
                  final norm); several are each normalised and concatenated on channels
  refiner_layers  trainable transformer layers over the condition tokens (with learned positions) after the
                  MLP: the prompt's words can be bound to each other here even when the LLM binds them poorly
  prediction      what the DiT outputs: "velocity" (rectified flow's v = noise - x0) or "x0" (the clean
                  latent; converted to a velocity for the sampler)
  pooled          the vector added to the DiT's timestep embedding (its adaLN input, which modulates every
                  patch alike): "mean" of the condition tokens, or "none" (zeros), which leaves the prompt
                  to the per-patch cross-attention alone

The exported model copies this file verbatim next to ``gen_head_mllm.py`` (it imports only torch), so the
source model and its export compute the condition and the sampler by the same code.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .flow import euler_sample, guidance, velocity_from_x0

CONDITIONS = ("queries", "prompt", "prompt+queries")
PREDICTIONS = ("velocity", "x0")
POOLINGS = ("mean", "none")
CONDITION_KEYS = ("num_queries", "condition", "llm_layers", "refiner_layers", "prediction", "pooled")
MAX_COND_TOKENS = 256  # learned refiner positions; prompts are short descriptions
# What a gen_head written before these options existed means: MetaQuery on the last layer, v-prediction.
LEGACY_CONDITION = {"condition": "queries", "llm_layers": [-1], "refiner_layers": 0, "prediction": "velocity",
                    "pooled": "mean"}


def base_decoder(llm: nn.Module) -> nn.Module:
    """The causal LM's transformer body (no LM head), also through a peft wrapper."""
    if hasattr(llm, "get_base_model"):
        llm = llm.get_base_model()
    return llm.get_decoder()


class PromptConditioning(nn.Module):
    """The trainable conditioning parameters (top-level names ``queries``, ``connector.*``, ``refiner.*``,
    ``refiner_pos``, ``null_cond``, ``null_pooled``) and the maths that uses them."""

    def init_conditioning(self, cfg: Dict[str, Any], llm_hidden_size: int, cond_dim: int) -> None:
        self.condition = str(cfg["condition"])
        self.num_queries = int(cfg["num_queries"]) if "queries" in self.condition else 0
        self.llm_layers = [int(i) for i in cfg["llm_layers"]]
        self.prediction = str(cfg["prediction"])
        self.pooled = str(cfg["pooled"])
        h, d, k = llm_hidden_size, cond_dim, self.num_queries
        if k:
            self.queries = nn.Parameter(torch.randn(k, h) * 0.02)  # (K, H): LLM-embedding scale
        width = h * len(self.llm_layers)
        self.connector = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d), nn.GELU(), nn.Linear(d, d))
        n_refine = int(cfg["refiner_layers"])
        if n_refine:
            heads = next(n for n in (4, 2, 1) if d % n == 0)
            layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.refiner = nn.TransformerEncoder(layer, n_refine, enable_nested_tensor=False)
            self.refiner_pos = nn.Parameter(torch.randn(MAX_COND_TOKENS, d) * 0.02)  # (P, D)
        else:
            self.refiner = None
        # the learned "no prompt" condition: K tokens in queries mode, else one
        self.null_cond = nn.Parameter(torch.zeros(max(k, 1) if self.condition == "queries" else 1, d))
        self.null_pooled = nn.Parameter(torch.zeros(d))

    # ---- prompt -> condition ------------------------------------------------------------------------
    def encode_prompt(self, language_model: nn.Module, input_ids: torch.Tensor,
                      attention_mask: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LEFT-padded prompts (B, L) -> cond (B, T, D), cond_mask (B, T) bool, pooled (B, D)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape[0] > 1 and bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("encode_prompt: prompts must be LEFT-padded (the queries follow the last prompt "
                             "token); some rows end in padding")
        embeds = language_model.get_input_embeddings()(input_ids)  # (B, L, H)
        b, n_prompt, k = input_ids.shape[0], input_ids.shape[1], self.num_queries
        mask = attention_mask.to(torch.long)
        if k:
            queries = self.queries.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)  # (B, K, H)
            embeds = torch.cat([embeds, queries], dim=1)  # (B, L+K, H)
            mask = torch.cat([mask, mask.new_ones(b, k)], dim=1)  # (B, L+K)
        # positions count real tokens only, so left padding does not move the queries
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L+K)
        need_hidden = self.llm_layers != [-1]
        # without queries nothing trainable sits before the LLM: when it is frozen too, its forward needs no
        # graph (the gen stage's steps then cost the DiT's backward only)
        needs_graph = torch.is_grad_enabled() and (k > 0 or any(p.requires_grad for p in language_model.parameters()))
        with torch.set_grad_enabled(needs_graph):
            out = base_decoder(language_model)(inputs_embeds=embeds, attention_mask=mask,
                                               position_ids=position_ids, use_cache=False,
                                               output_hidden_states=need_hidden)
        if need_hidden:
            states = [out.hidden_states[i] for i in self.llm_layers]  # each (B, L+K, H)
            # each layer on its own scale (embeddings are ~0.02, the last layer ~1) before they are mixed
            hidden = torch.cat([F.layer_norm(s.float(), s.shape[-1:]) for s in states], dim=-1)
        else:
            hidden = out.last_hidden_state  # (B, L+K, H), after the final norm
        keep = {"queries": slice(n_prompt, None), "prompt": slice(0, n_prompt),
                "prompt+queries": slice(0, None)}[self.condition]
        hidden, cond_mask = hidden[:, keep], mask[:, keep].bool()  # (B, T, H*n), (B, T)
        dtype = self.null_cond.dtype
        cond = self.connector(hidden.to(dtype))  # (B, T, D)
        if self.refiner is not None:
            pos = position_ids[:, keep].clamp(max=MAX_COND_TOKENS - 1)  # (B, T)
            cond = self.refiner(cond + self.refiner_pos[pos], src_key_padding_mask=~cond_mask)
        if self.pooled == "none":
            return cond, cond_mask, cond.new_zeros(cond.shape[0], cond.shape[-1])
        weights = cond_mask.to(cond.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (cond * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, D): mean over real tokens
        return cond, cond_mask, pooled

    def null_condition(self, batch: int, length: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The learned "no prompt" condition, padded (masked) to ``length`` tokens: (B, T, D), (B, T), (B, D)."""
        n, d = self.null_cond.shape
        t = max(length, n)
        cond = self.null_cond.new_zeros(batch, t, d)
        cond[:, :n] = self.null_cond
        mask = torch.zeros(batch, t, dtype=torch.bool, device=cond.device)
        mask[:, :n] = True
        return cond, mask, self.null_pooled.unsqueeze(0).expand(batch, -1)

    def drop_condition(self, cond: torch.Tensor, cond_mask: torch.Tensor, pooled: torch.Tensor, p: float,
                       generator: Optional[torch.Generator] = None):
        """Replace each sample's condition by the null one with probability ``p`` (classifier-free guidance)."""
        b, t = cond.shape[:2]
        gen_device = generator.device if generator is not None else cond.device
        drop = (torch.rand(b, generator=generator, device=gen_device) < p).to(cond.device)
        null_cond, null_mask, null_pooled = self.null_condition(b, t)
        if null_cond.shape[1] > t:  # more null tokens than prompt tokens: pad the prompt side
            extra = null_cond.shape[1] - t
            cond = F.pad(cond, (0, 0, 0, extra))
            cond_mask = F.pad(cond_mask, (0, extra), value=False)
        cond = torch.where(drop[:, None, None], null_cond.to(cond.dtype), cond)
        cond_mask = torch.where(drop[:, None], null_mask, cond_mask)
        pooled = torch.where(drop[:, None], null_pooled.to(pooled.dtype), pooled)
        return cond, cond_mask, pooled

    # ---- DiT output -> velocity, and the sampler ------------------------------------------------------
    def velocity(self, dit: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                 cond_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        out = dit(x, t, cond, pooled, cond_mask)
        return out if self.prediction == "velocity" else velocity_from_x0(x, out.to(x.dtype), t)

    @torch.no_grad()
    def sample_latents(self, dit: nn.Module, noise: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor,
                       pooled: torch.Tensor, *, steps: int, cfg_scale: float, shift: float) -> torch.Tensor:
        """Euler steps from ``noise`` (B, C, h, w) to latents, with classifier-free guidance unless cfg_scale == 1."""
        b = cond.shape[0]
        if cfg_scale == 1.0:
            def velocity(x, t):
                return self.velocity(dit, x, t, cond, cond_mask, pooled)
        else:
            null_cond, null_mask, null_pooled = self.null_condition(b, cond.shape[1])
            if null_cond.shape[1] > cond.shape[1]:
                extra = null_cond.shape[1] - cond.shape[1]
                cond, cond_mask = F.pad(cond, (0, 0, 0, extra)), F.pad(cond_mask, (0, extra), value=False)
            cond2 = torch.cat([cond, null_cond.to(cond.dtype)])  # (2B, T, D)
            mask2 = torch.cat([cond_mask, null_mask])  # (2B, T)
            pooled2 = torch.cat([pooled, null_pooled.to(pooled.dtype)])  # (2B, D)

            def velocity(x, t):
                v_c, v_u = self.velocity(dit, torch.cat([x, x]), torch.cat([t, t]), cond2, mask2, pooled2).chunk(2)
                return guidance(v_c, v_u, cfg_scale)
        return euler_sample(velocity, noise, steps=steps, shift=shift)


def condition_config(cfg: Any) -> Dict[str, Any]:
    """The condition options of a GenHeadConfig or its dict, as a plain dict (``CONDITION_KEYS``)."""
    get = cfg.get if isinstance(cfg, dict) else (lambda k, default=None: getattr(cfg, k, default))
    return {k: get(k, LEGACY_CONDITION.get(k)) for k in CONDITION_KEYS}


def check_condition(cfg: Dict[str, Any], where: str = "gen_head") -> None:
    problems = []
    if cfg["condition"] not in CONDITIONS:
        problems.append(f"condition {cfg['condition']!r} is not one of {', '.join(CONDITIONS)}")
    elif "queries" in cfg["condition"] and int(cfg["num_queries"]) < 1:
        problems.append(f"condition {cfg['condition']!r} needs num_queries >= 1, got {cfg['num_queries']}")
    layers: Sequence = cfg["llm_layers"]
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(i, int) for i in layers):
        problems.append(f"llm_layers must be a non-empty list of hidden-state indices, got {layers!r}")
    if int(cfg["refiner_layers"]) < 0:
        problems.append(f"refiner_layers must be >= 0, got {cfg['refiner_layers']}")
    if cfg["prediction"] not in PREDICTIONS:
        problems.append(f"prediction {cfg['prediction']!r} is not one of {', '.join(PREDICTIONS)}")
    if cfg["pooled"] not in POOLINGS:
        problems.append(f"pooled {cfg['pooled']!r} is not one of {', '.join(POOLINGS)}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
