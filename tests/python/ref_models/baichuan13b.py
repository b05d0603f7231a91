"""Port of Baichuan-13B-Base's original modeling_baichuan.py: W_pack [Q|K|V], ALiBi (slopes from _get_interleave,
added unscaled to q·kᵀ/sqrt(d)), max with finfo.min, softmax in the model dtype, RMSNorm, SwiGLU, untied lm_head.
Eval-mode mask path (future_mask from _gen_alibi_mask), no KV cache."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Config, causal_lm_loss, load_weights

DEFAULTS = dict(vocab_size=64000, hidden_size=5120, intermediate_size=13696, num_hidden_layers=40,
                num_attention_heads=40, hidden_act="silu", model_max_length=4096, rms_norm_eps=1e-6,
                pad_token_id=0, tie_word_embeddings=False)


def _get_interleave(n):
    def _get_interleave_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio ** i for i in range(n)]

    if math.log2(n).is_integer():
        return _get_interleave_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (_get_interleave_power_of_2(closest_power_of_2)
            + _get_interleave(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


def _fill_with_neg_inf(t):
    return t.float().fill_(float("-inf")).type_as(t)


def _gen_alibi_mask(n_head, max_pos):
    slopes = torch.Tensor(_get_interleave(n_head))
    alibi = slopes.unsqueeze(1).unsqueeze(1) * torch.arange(max_pos).unsqueeze(0).unsqueeze(0).expand(n_head, -1, -1)
    alibi = alibi.view(n_head, 1, max_pos)
    alibi_mask = torch.triu(_fill_with_neg_inf(torch.zeros([max_pos, max_pos])), 1)
    return alibi_mask.unsqueeze(0) + alibi


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, epsilon=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size))
        self.epsilon = epsilon

    def forward(self, hidden_states):
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.epsilon)
        if self.weight.dtype in [torch.float16, torch.bfloat16]:
            hidden_states = hidden_states.to(self.weight.dtype)
        return self.weight * hidden_states


class MLP(nn.Module):
    def __init__(self, hidden_size, intermediate_size):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class BaichuanAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.W_pack = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask):
        bsz, q_len, _ = hidden_states.size()
        proj = self.W_pack(hidden_states)
        proj = proj.unflatten(-1, (3, self.hidden_size)).unsqueeze(0).transpose(0, -2).squeeze(-2)
        q = proj[0].view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = proj[1].view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        v = proj[2].view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        attn_weights = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        attention_mask = attention_mask[:, :q_len, :q_len]
        attn_weights = attn_weights + attention_mask
        attn_weights = torch.max(attn_weights, torch.tensor(torch.finfo(attn_weights.dtype).min))
        attn_weights = F.softmax(attn_weights, dim=-1)
        out = torch.matmul(attn_weights, v).transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
        return self.o_proj(out)


class BaichuanLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = BaichuanAttention(config)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask):
        residual = hidden_states
        hidden_states = self.self_attn(self.input_layernorm(hidden_states), attention_mask)
        hidden_states = residual + hidden_states
        residual = hidden_states
        return residual + self.mlp(self.post_attention_layernorm(hidden_states))


class BaichuanModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.num_attention_heads
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([BaichuanLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, epsilon=config.rms_norm_eps)
        self.max_cache_pos = config.model_max_length

    def forward(self, input_ids, attention_mask=None):
        L = input_ids.shape[1]
        h = self.embed_tokens(input_ids)
        # eval path of get_alibi_mask: the buffered future mask (attention_mask of ones is folded in by the
        # original to the same values: allowed entries get 0 added)
        alibi_mask = _gen_alibi_mask(self.n_head, max(self.max_cache_pos, L)).to(h)[: self.n_head, :L, :L]
        for layer in self.layers:
            h = layer(h, alibi_mask)
        return self.norm(h)


class BaichuanForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.model = BaichuanModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        logits = self.lm_head(self.model(input_ids, attention_mask))
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return logits, loss


def load(model_dir):
    cfg = Config.from_dir(model_dir, DEFAULTS)
    torch.manual_seed(0)
    return load_weights(BaichuanForCausalLM(cfg), model_dir)
