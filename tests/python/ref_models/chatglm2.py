"""Port of THUDM/chatglm2-6b's modeling_chatglm.py: [seq, batch, hidden] layout, fused query_key_value split
[Q | K | V] with multi-query groups, RoPE on the first half of each head with interleaved pairs (2i, 2i+1),
torch < 2 CoreAttention path (baddbmm alpha 1/(sqrt(c)·layer_number), ×layer_number, -inf causal mask, fp32
softmax), RMSNorm, SwiGLU on the fused dense_h_to_4h, final_layernorm, transformer.output_layer head.
No KV cache, no P-tuning prefix."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Config, causal_lm_loss, load_weights

DEFAULTS = dict(num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696, kv_channels=128,
                num_attention_heads=32, seq_length=2048, hidden_dropout=0.0, attention_dropout=0.0,
                layernorm_epsilon=1e-5, rmsnorm=True, apply_residual_connection_post_layernorm=False,
                post_layer_norm=True, add_bias_linear=False, add_qkv_bias=False, bias_dropout_fusion=True,
                multi_query_attention=False, multi_query_group_num=1, apply_query_key_layer_scaling=True,
                attention_softmax_in_fp32=True, fp32_residual_connection=False, original_rope=True,
                pre_seq_len=None)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim, original_impl=False, dtype=None):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).to(dtype=dtype) / dim))
        self.register_buffer("inv_freq", inv_freq)
        self.dim = dim
        self.original_impl = original_impl

    def forward_impl(self, seq_len, n_elem, dtype, device, base=10000):
        theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float, device=device) / n_elem))
        seq_idx = torch.arange(seq_len, dtype=torch.float, device=device)
        idx_theta = torch.outer(seq_idx, theta).float()
        cache = torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)
        if dtype in (torch.float16, torch.bfloat16, torch.int8):
            cache = cache.bfloat16() if dtype == torch.bfloat16 else cache.half()
        return cache

    def forward(self, max_seq_len, offset=0):
        return self.forward_impl(max_seq_len, self.dim, dtype=self.inv_freq.dtype, device=self.inv_freq.device)


def apply_rotary_pos_emb(x, rope_cache):
    # x: [sq, b, np, hn]
    sq, b, np_, hn = x.size(0), x.size(1), x.size(2), x.size(3)
    rot_dim = rope_cache.shape[-2] * 2
    x, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    rope_cache = rope_cache[:sq]
    xshaped = x.reshape(sq, -1, np_, rot_dim // 2, 2)
    rope_cache = rope_cache.view(sq, -1, 1, xshaped.size(3), 2)
    x_out2 = torch.stack([
        xshaped[..., 0] * rope_cache[..., 0] - xshaped[..., 1] * rope_cache[..., 1],
        xshaped[..., 1] * rope_cache[..., 0] + xshaped[..., 0] * rope_cache[..., 1],
    ], -1)
    x_out2 = x_out2.flatten(3)
    return torch.cat((x_out2, x_pass), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(normalized_shape))
        self.eps = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.eps)
        return (self.weight * hidden_states).to(input_dtype)


class CoreAttention(nn.Module):
    def __init__(self, config, layer_number):
        super().__init__()
        self.apply_query_key_layer_scaling = config.apply_query_key_layer_scaling
        self.attention_softmax_in_fp32 = config.attention_softmax_in_fp32
        if self.apply_query_key_layer_scaling:
            self.attention_softmax_in_fp32 = True
        self.layer_number = max(1, layer_number)
        projection_size = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_partition = projection_size
        self.hidden_size_per_attention_head = projection_size // config.num_attention_heads
        coeff = None
        self.norm_factor = math.sqrt(self.hidden_size_per_attention_head)
        if self.apply_query_key_layer_scaling:
            coeff = self.layer_number
            self.norm_factor *= coeff
        self.coeff = coeff

    def forward(self, query_layer, key_layer, value_layer, attention_mask):
        # torch < 2 path of the published code
        output_size = (query_layer.size(1), query_layer.size(2), query_layer.size(0), key_layer.size(0))
        query_layer = query_layer.view(output_size[2], output_size[0] * output_size[1], -1)
        key_layer = key_layer.view(output_size[3], output_size[0] * output_size[1], -1)
        matmul_input_buffer = torch.empty(output_size[0] * output_size[1], output_size[2], output_size[3],
                                          dtype=query_layer.dtype, device=query_layer.device)
        matmul_result = torch.baddbmm(matmul_input_buffer, query_layer.transpose(0, 1),
                                      key_layer.transpose(0, 1).transpose(1, 2), beta=0.0,
                                      alpha=(1.0 / self.norm_factor))
        attention_scores = matmul_result.view(*output_size)
        if self.attention_softmax_in_fp32:
            attention_scores = attention_scores.float()
        if self.coeff is not None:
            attention_scores = attention_scores * self.coeff
        if attention_mask is None and attention_scores.shape[2] == attention_scores.shape[3]:
            attention_mask = torch.ones(output_size[0], 1, output_size[2], output_size[3],
                                        device=attention_scores.device, dtype=torch.bool)
            attention_mask.tril_()
            attention_mask = ~attention_mask
        if attention_mask is not None:
            attention_scores = attention_scores.masked_fill(attention_mask, float("-inf"))
        attention_probs = F.softmax(attention_scores, dim=-1).type_as(value_layer)
        output_size = (value_layer.size(1), value_layer.size(2), query_layer.size(0), value_layer.size(3))
        value_layer = value_layer.view(value_layer.size(0), output_size[0] * output_size[1], -1)
        attention_probs = attention_probs.view(output_size[0] * output_size[1], output_size[2], -1)
        context_layer = torch.bmm(attention_probs, value_layer.transpose(0, 1))
        context_layer = context_layer.view(*output_size).permute(2, 0, 1, 3).contiguous()
        return context_layer.view(*context_layer.size()[:-2] + (self.hidden_size_per_partition,))


class SelfAttention(nn.Module):
    def __init__(self, config, layer_number):
        super().__init__()
        self.projection_size = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_attention_head = self.projection_size // config.num_attention_heads
        self.num_attention_heads_per_partition = config.num_attention_heads
        self.multi_query_attention = config.multi_query_attention
        self.qkv_hidden_size = 3 * self.projection_size
        if self.multi_query_attention:
            self.num_multi_query_groups_per_partition = config.multi_query_group_num
            self.qkv_hidden_size = (self.projection_size +
                                    2 * self.hidden_size_per_attention_head * config.multi_query_group_num)
        self.query_key_value = nn.Linear(config.hidden_size, self.qkv_hidden_size,
                                         bias=config.add_bias_linear or config.add_qkv_bias)
        self.core_attention = CoreAttention(config, layer_number)
        self.dense = nn.Linear(self.projection_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, hidden_states, attention_mask, rotary_pos_emb):
        mixed_x_layer = self.query_key_value(hidden_states)
        hn, np_ = self.hidden_size_per_attention_head, self.num_attention_heads_per_partition
        if self.multi_query_attention:
            g = self.num_multi_query_groups_per_partition
            (q, k, v) = mixed_x_layer.split([np_ * hn, g * hn, g * hn], dim=-1)
            q = q.view(q.size()[:-1] + (np_, hn))
            k = k.view(k.size()[:-1] + (g, hn))
            v = v.view(v.size()[:-1] + (g, hn))
        else:
            new_shape = mixed_x_layer.size()[:-1] + (np_, 3 * hn)
            mixed_x_layer = mixed_x_layer.view(*new_shape)
            (q, k, v) = torch.split(mixed_x_layer, hn, dim=-1)
        if rotary_pos_emb is not None:
            q = apply_rotary_pos_emb(q, rotary_pos_emb)
            k = apply_rotary_pos_emb(k, rotary_pos_emb)
        if self.multi_query_attention:
            g = self.num_multi_query_groups_per_partition
            k = k.unsqueeze(-2).expand(-1, -1, -1, np_ // g, -1)
            k = k.contiguous().view(k.size()[:2] + (np_, hn))
            v = v.unsqueeze(-2).expand(-1, -1, -1, np_ // g, -1)
            v = v.contiguous().view(v.size()[:2] + (np_, hn))
        context_layer = self.core_attention(q, k, v, attention_mask)
        return self.dense(context_layer)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.ffn_hidden_size * 2, bias=config.add_bias_linear)

        def swiglu(x):
            x = torch.chunk(x, 2, dim=-1)
            return F.silu(x[0]) * x[1]

        self.activation_func = swiglu
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, hidden_states):
        return self.dense_4h_to_h(self.activation_func(self.dense_h_to_4h(hidden_states)))


class GLMBlock(nn.Module):
    def __init__(self, config, layer_number):
        super().__init__()
        self.apply_residual_connection_post_layernorm = config.apply_residual_connection_post_layernorm
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.self_attention = SelfAttention(config, layer_number)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(self, hidden_states, attention_mask, rotary_pos_emb):
        layernorm_output = self.input_layernorm(hidden_states)
        attention_output = self.self_attention(layernorm_output, attention_mask, rotary_pos_emb)
        residual = layernorm_output if self.apply_residual_connection_post_layernorm else hidden_states
        layernorm_input = residual + attention_output
        layernorm_output = self.post_attention_layernorm(layernorm_input)
        mlp_output = self.mlp(layernorm_output)
        residual = layernorm_output if self.apply_residual_connection_post_layernorm else layernorm_input
        return residual + mlp_output


class GLMTransformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([GLMBlock(config, i + 1) for i in range(config.num_layers)])
        self.final_layernorm = RMSNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def forward(self, hidden_states, attention_mask, rotary_pos_emb):
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, rotary_pos_emb)
        return self.final_layernorm(hidden_states)


class Embedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids).transpose(0, 1).contiguous()


class ChatGLMModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embedding = Embedding(config)
        self.seq_length = config.seq_length
        rotary_dim = (config.hidden_size // config.num_attention_heads
                      if config.kv_channels is None else config.kv_channels)
        self.rotary_pos_emb = RotaryEmbedding(rotary_dim // 2, original_impl=config.original_rope,
                                              dtype=torch.float32)
        self.encoder = GLMTransformer(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)

    def forward(self, input_ids, position_ids=None, attention_mask=None):
        batch_size, seq_length = input_ids.shape
        inputs_embeds = self.embedding(input_ids)
        full_attention_mask = None  # all-ones attention_mask: the causal mask is built in CoreAttention
        rotary_pos_emb = self.rotary_pos_emb(self.seq_length)
        if position_ids is not None:
            rotary_pos_emb = rotary_pos_emb[position_ids]
        else:
            rotary_pos_emb = rotary_pos_emb[None, :seq_length]
        rotary_pos_emb = rotary_pos_emb.transpose(0, 1).contiguous()
        return self.encoder(inputs_embeds, full_attention_mask, rotary_pos_emb)


class ChatGLMForConditionalGeneration(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transformer = ChatGLMModel(config)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("port: padding masks are not ported")
        hidden_states = self.transformer(input_ids)
        lm_logits = self.transformer.output_layer(hidden_states).transpose(0, 1).contiguous()
        loss = None
        if labels is not None:
            lm_logits = lm_logits.to(torch.float32)
            loss = causal_lm_loss(lm_logits, labels)
        return lm_logits, loss


def load(model_dir):
    cfg = Config.from_dir(model_dir, DEFAULTS)
    if not cfg.rmsnorm or not cfg.post_layer_norm or cfg.pre_seq_len is not None:
        raise ValueError("port: only rmsnorm, post_layer_norm and no prefix are ported")
    torch.manual_seed(0)
    return load_weights(ChatGLMForConditionalGeneration(cfg), model_dir)
