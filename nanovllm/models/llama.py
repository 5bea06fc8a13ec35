"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3): one implementation, per-architecture flags."""
import torch
from torch import nn
from transformers import PretrainedConfig

from kernels.epilogue import GATED, PLAIN, Epilogue, rotary
from nanovllm.layers.activation import SiluAndMul
from nanovllm.layers.attention import Attention
from nanovllm.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from nanovllm.layers.fused_norm_linear import linear_add_residual, norm_linear_rotary, norm_linear_silu
from nanovllm.layers.layernorm import RMSNorm
from nanovllm.layers.linear import LinearBase, MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from nanovllm.layers.rotary_embedding import RotaryEmbedding, rope_parameters


def sliding_window(config: PretrainedConfig, layer_idx: int) -> int | None:
    """Qwen2/Qwen3 mark sliding layers in `layer_types`; Mistral applies `sliding_window` to every layer."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and layer_types[layer_idx] != "sliding_attention":
        return None
    return getattr(config, "sliding_window", None)


class LlamaAttention(nn.Module):
    """This rank's heads: its 1/tp of the q heads and of the KV heads, or one KV head where there are fewer of them
    than ranks (QKVParallelLinear)."""

    def __init__(self, config: PretrainedConfig, layer_idx: int, max_position: int, qkv_bias: bool,
                 o_bias: bool, qk_norm: bool):
        super().__init__()
        total_num_heads, total_num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // total_num_heads
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, total_num_heads, total_num_kv_heads,
                                          qkv_bias)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(total_num_heads * self.head_dim, config.hidden_size, o_bias)
        rotary_emb = RotaryEmbedding(self.head_dim, max_position, rope_parameters(config))
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5, self.num_kv_heads, rotary_emb,
                              sliding_window(config, layer_idx))
        self.q_norm = self.k_norm = None
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, qkv: torch.Tensor, residual: torch.Tensor, rotated: bool):
        """rotated: qkv is q alone, rotated, and this step's K/V are in the cache (the fused QKV epilogue)."""
        if rotated:
            o = self.attn.attend(qkv)
        else:
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = q.view(-1, self.num_heads, self.head_dim)
            k = k.view(-1, self.num_kv_heads, self.head_dim)
            v = v.view(-1, self.num_kv_heads, self.head_dim)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            o = self.attn(positions, q, k, v)
        return linear_add_residual(self.o_proj, o.view(-1, self.q_size), residual)


class LlamaMLP(nn.Module):
    def __init__(self, config: PretrainedConfig, bias: bool):
        super().__init__()
        if config.hidden_act != "silu":
            raise NotImplementedError(f"hidden_act {config.hidden_act!r} is not supported; supported: 'silu'")
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, bias)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias)
        self.act_fn = SiluAndMul()

    def forward(self, act: torch.Tensor, residual: torch.Tensor):
        """act: silu(gate) * up, from the decoder layer's `mlp_input`."""
        return linear_add_residual(self.down_proj, act, residual)


class LlamaDecoderLayer(nn.Module):
    """Each RMSNorm sits next to the projection it feeds (`attention_input`, `mlp_input`), ready to be fused.
    Between layers the residual stream travels as (hidden, residual, sumsq): either the last projection's output
    and the stream it has yet to be added to, or (sumsq set) the stream itself with its rows' sums of squares
    (nanovllm.layers.fused_norm_linear.linear_add_residual)."""

    def __init__(self, config: PretrainedConfig, layer_idx: int, max_position: int, flags: dict):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx, max_position, flags["qkv_bias"], flags["o_bias"],
                                        flags["qk_norm"])
        self.mlp = LlamaMLP(config, flags["mlp_bias"])
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def norm_linear_sites(self) -> list[tuple[RMSNorm, LinearBase, Epilogue]]:
        """Each RMSNorm with the projection it feeds and the epilogue the site runs after it: QKV rotates q and k
        and writes the KV cache (plain where q and k are normalized before the rotary embedding, as in Qwen3),
        gate/up ends in SiLU-and-mul."""
        attn = self.self_attn
        qkv = rotary(attn.head_dim, attn.num_kv_heads) if attn.q_norm is None else PLAIN
        return [(self.input_layernorm, attn.qkv_proj, qkv), (self.post_attention_layernorm, self.mlp.gate_up_proj,
                                                             GATED)]

    def plain_linears(self) -> list[RowParallelLinear]:
        """The linears no norm feeds, which may run the norm-free tuned GEMM: o_proj and down_proj."""
        return [self.self_attn.o_proj, self.mlp.down_proj]

    def attention_input(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None,
                        sumsq: torch.Tensor | None):
        return norm_linear_rotary(self.input_layernorm, self.self_attn.qkv_proj, self.self_attn.attn, positions,
                                  hidden_states, residual, sumsq)

    def mlp_input(self, hidden_states: torch.Tensor, residual: torch.Tensor | None, sumsq: torch.Tensor | None):
        return norm_linear_silu(self.post_attention_layernorm, self.mlp.gate_up_proj, self.mlp.act_fn, hidden_states,
                                residual, sumsq)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None,
                sumsq: torch.Tensor | None):
        qkv, residual, rotated = self.attention_input(positions, hidden_states, residual, sumsq)
        hidden_states, residual, sumsq = self.self_attn(positions, qkv, residual, rotated)
        act, residual = self.mlp_input(hidden_states, residual, sumsq)
        return self.mlp(act, residual)


class LlamaModel(nn.Module):
    def __init__(self, config: PretrainedConfig, max_position: int, flags: dict):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, max_position, flags) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual, sumsq = self.embed_tokens(input_ids), None, None
        for layer in self.layers:
            hidden_states, residual, sumsq = layer(positions, hidden_states, residual, sumsq)
        if residual is None:  # the last down projection added it
            return self.norm(hidden_states)
        return self.norm(hidden_states, residual)[0]


class LlamaForCausalLM(nn.Module):
    # Checkpoint names that load into a slice of a stacked parameter: name -> (our name, shard id).
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: PretrainedConfig, max_position: int):
        super().__init__()
        self.model = LlamaModel(config, max_position, self.flags(config))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def flags(config: PretrainedConfig) -> dict:
        bias = getattr(config, "attention_bias", False)
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": False, "mlp_bias": getattr(config, "mlp_bias", False)}

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def norm_linear_sites(self) -> list[tuple[RMSNorm, LinearBase, Epilogue]]:
        """Every RMSNorm with the projection it feeds and its epilogue. The final norm stays unfused: it is one norm
        in 2 x layers + 1, and folding it into the LM head would need a second copy of a tied vocabulary matrix
        (the fused lm_head site was 1.10x its baseline on an H200, about 6 us of a 4.9 ms llama-7b decode step)."""
        return [site for layer in self.model.layers for site in layer.norm_linear_sites()]

    def plain_linears(self) -> list[RowParallelLinear]:
        return [linear for layer in self.model.layers for linear in layer.plain_linears()]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Float32 logits on rank 0, None on the other tensor-parallel ranks."""
        return self.lm_head(hidden_states)


class MistralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def flags(config: PretrainedConfig) -> dict:
        return {"qkv_bias": False, "o_bias": False, "qk_norm": False, "mlp_bias": False}


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def flags(config: PretrainedConfig) -> dict:
        return {"qkv_bias": True, "o_bias": False, "qk_norm": False, "mlp_bias": False}


class Qwen3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def flags(config: PretrainedConfig) -> dict:
        bias = getattr(config, "attention_bias", False)
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": True, "mlp_bias": False}
