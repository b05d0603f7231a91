"""Port of THUDM/chatglm-6b's (v1, final revision) modeling_chatglm.py: [seq, batch, hidden] layout, fused
query_key_value viewed [heads, 3·d], 2-D rotary (fp16-valued inv_freq; first half by position id, second half by
block position id), masks and positions derived from [gMASK]/[MASK] and <sop> (bos) in input_ids (get_masks,
get_position_ids), attention_fn's layer scaling (q / (sqrt(d)·(layer_id+1)), masked_fill -10000, ×(layer_id+1),
fp32 softmax), GLMBlock residuals α·LN(x) with α = sqrt(2·28) (num_layers default never overridden), GLU with
gelu_impl, final_layernorm, lm_head tied to word_embeddings (tie_weights in from_pretrained). No KV cache."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Config, causal_lm_loss, load_weights

DEFAULTS = dict(vocab_size=150528, hidden_size=4096, num_layers=28, num_attention_heads=32, layernorm_epsilon=1e-5,
                use_cache=False, bos_token_id=150004, eos_token_id=150005, mask_token_id=150000,
                gmask_token_id=150001, pad_token_id=0, max_sequence_length=2048, inner_hidden_size=16384,
                position_encoding_2d=True, quantization_bit=0, pre_seq_len=None, prefix_projection=False)


@torch.jit.script
def gelu_impl(x):
    """OpenAI's gelu implementation."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def gelu(x):
    return gelu_impl(x)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim, base=10000, precision=torch.half):
        super().__init__()
        inv_freq = 1. / (base ** (torch.arange(0, dim, 2).float() / dim))
        inv_freq = inv_freq.half()
        self.register_buffer('inv_freq', inv_freq)
        self.precision = precision

    def forward(self, x, seq_dim=1, seq_len=None):
        if seq_len is None:
            seq_len = x.shape[seq_dim]
        # the port runs in fp32: the buffer holds the fp16-rounded values as fp32 (model.float())
        t = torch.arange(seq_len, device=x.device, dtype=self.inv_freq.dtype)
        freqs = torch.einsum('i,j->ij', t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1).to(x.device)
        cos_cached = emb.cos()[:, None, :]
        sin_cached = emb.sin()[:, None, :]
        return cos_cached[:seq_len, ...], sin_cached[:seq_len, ...]


def rotate_half(x):
    x1, x2 = x[..., :x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=x1.ndim - 1)


def apply_rotary_pos_emb_index(q, k, cos, sin, position_id):
    # position_id: [sq, b], q, k: [sq, b, np, hn], cos: [sq, 1, hn] -> [sq, b, 1, hn]
    cos, sin = F.embedding(position_id, cos.squeeze(1)).unsqueeze(2), \
        F.embedding(position_id, sin.squeeze(1)).unsqueeze(2)
    q, k = (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)
    return q, k


def attention_fn(self, query_layer, key_layer, value_layer, attention_mask, hidden_size_per_partition, layer_id,
                 scaling_attention_score=True):
    seq_len, b, nh, hidden_size = key_layer.shape
    query_key_layer_scaling_coeff = float(layer_id + 1)
    if scaling_attention_score:
        query_layer = query_layer / (math.sqrt(hidden_size) * query_key_layer_scaling_coeff)
    output_size = (query_layer.size(1), query_layer.size(2), query_layer.size(0), key_layer.size(0))
    query_layer = query_layer.view(output_size[2], output_size[0] * output_size[1], -1)
    key_layer = key_layer.view(output_size[3], output_size[0] * output_size[1], -1)
    matmul_result = torch.zeros(1, 1, 1, dtype=query_layer.dtype, device=query_layer.device)
    matmul_result = torch.baddbmm(matmul_result, query_layer.transpose(0, 1),
                                  key_layer.transpose(0, 1).transpose(1, 2), beta=0.0, alpha=1.0)
    attention_scores = matmul_result.view(*output_size)
    if not (attention_mask == 0).all():
        attention_scores.masked_fill_(attention_mask, -10000.0)
    dtype = attention_scores.dtype
    attention_scores = attention_scores.float()
    attention_scores = attention_scores * query_key_layer_scaling_coeff
    attention_probs = F.softmax(attention_scores, dim=-1).type(dtype)
    output_size = (value_layer.size(1), value_layer.size(2), query_layer.size(0), value_layer.size(3))
    value_layer = value_layer.view(value_layer.size(0), output_size[0] * output_size[1], -1)
    attention_probs = attention_probs.view(output_size[0] * output_size[1], output_size[2], -1)
    context_layer = torch.bmm(attention_probs, value_layer.transpose(0, 1))
    context_layer = context_layer.view(*output_size).permute(2, 0, 1, 3).contiguous()
    return context_layer.view(*context_layer.size()[:-2] + (hidden_size_per_partition,))


class SelfAttention(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, layer_id, bias=True, position_encoding_2d=True):
        super().__init__()
        self.layer_id = layer_id
        self.hidden_size = hidden_size
        self.hidden_size_per_partition = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_attention_heads_per_partition = num_attention_heads
        self.position_encoding_2d = position_encoding_2d
        self.rotary_emb = RotaryEmbedding(
            self.hidden_size // (self.num_attention_heads * 2) if position_encoding_2d
            else self.hidden_size // self.num_attention_heads, base=10000, precision=torch.half)
        self.hidden_size_per_attention_head = hidden_size // num_attention_heads
        self.inner_hidden_size = num_attention_heads * self.hidden_size_per_attention_head
        self.query_key_value = nn.Linear(hidden_size, 3 * self.inner_hidden_size, bias=bias)
        self.dense = nn.Linear(self.inner_hidden_size, hidden_size, bias=bias)

    @staticmethod
    def split_tensor_along_last_dim(tensor, num_partitions):
        last_dim = tensor.dim() - 1
        last_dim_size = tensor.size()[last_dim] // num_partitions
        return torch.split(tensor, last_dim_size, dim=last_dim)

    def forward(self, hidden_states, position_ids, attention_mask, layer_id):
        mixed_raw_layer = self.query_key_value(hidden_states)
        new_tensor_shape = mixed_raw_layer.size()[:-1] + (
            self.num_attention_heads_per_partition, 3 * self.hidden_size_per_attention_head)
        mixed_raw_layer = mixed_raw_layer.view(*new_tensor_shape)
        (query_layer, key_layer, value_layer) = self.split_tensor_along_last_dim(mixed_raw_layer, 3)
        q1, q2 = query_layer.chunk(2, dim=(query_layer.ndim - 1))
        k1, k2 = key_layer.chunk(2, dim=(key_layer.ndim - 1))
        cos, sin = self.rotary_emb(q1, seq_len=position_ids.max() + 1)
        position_ids, block_position_ids = position_ids[:, 0, :].transpose(0, 1).contiguous(), \
            position_ids[:, 1, :].transpose(0, 1).contiguous()
        q1, k1 = apply_rotary_pos_emb_index(q1, k1, cos, sin, position_ids)
        q2, k2 = apply_rotary_pos_emb_index(q2, k2, cos, sin, block_position_ids)
        query_layer = torch.concat([q1, q2], dim=(q1.ndim - 1))
        key_layer = torch.concat([k1, k2], dim=(k1.ndim - 1))
        context_layer = attention_fn(self, query_layer, key_layer, value_layer, attention_mask,
                                     self.hidden_size_per_partition, layer_id)
        return self.dense(context_layer)


class GLU(nn.Module):
    def __init__(self, hidden_size, inner_hidden_size=None, bias=True):
        super().__init__()
        self.activation_func = gelu
        self.inner_hidden_size = inner_hidden_size or 4 * hidden_size
        self.dense_h_to_4h = nn.Linear(hidden_size, self.inner_hidden_size, bias=bias)
        self.dense_4h_to_h = nn.Linear(self.inner_hidden_size, hidden_size, bias=bias)

    def forward(self, hidden_states):
        return self.dense_4h_to_h(self.activation_func(self.dense_h_to_4h(hidden_states)))


class GLMBlock(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, layernorm_epsilon, layer_id, inner_hidden_size=None,
                 num_layers=28, position_encoding_2d=True):
        super().__init__()
        self.layer_id = layer_id
        self.input_layernorm = nn.LayerNorm(hidden_size, eps=layernorm_epsilon)
        self.attention = SelfAttention(hidden_size, num_attention_heads, layer_id, bias=True,
                                       position_encoding_2d=position_encoding_2d)
        self.post_attention_layernorm = nn.LayerNorm(hidden_size, eps=layernorm_epsilon)
        self.num_layers = num_layers
        self.mlp = GLU(hidden_size, inner_hidden_size=inner_hidden_size, bias=True)

    def forward(self, hidden_states, position_ids, attention_mask, layer_id):
        attention_input = self.input_layernorm(hidden_states)
        attention_output = self.attention(attention_input, position_ids, attention_mask, layer_id)
        alpha = (2 * self.num_layers) ** 0.5
        hidden_states = attention_input * alpha + attention_output
        mlp_input = self.post_attention_layernorm(hidden_states)
        mlp_output = self.mlp(mlp_input)
        return mlp_input * alpha + mlp_output


class ChatGLMModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)

        def get_layer(layer_id):  # as published: num_layers is not passed (GLMBlock's default 28 applies)
            return GLMBlock(config.hidden_size, config.num_attention_heads, config.layernorm_epsilon, layer_id,
                            inner_hidden_size=config.inner_hidden_size,
                            position_encoding_2d=config.position_encoding_2d)

        self.layers = nn.ModuleList([get_layer(i) for i in range(config.num_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def get_masks(self, input_ids, device):
        batch_size, seq_length = input_ids.shape
        context_lengths = [seq.tolist().index(self.config.bos_token_id) for seq in input_ids]
        attention_mask = torch.ones((batch_size, seq_length, seq_length), device=device)
        attention_mask.tril_()
        for i, context_length in enumerate(context_lengths):
            attention_mask[i, :, :context_length] = 1
        attention_mask.unsqueeze_(1)
        return (attention_mask < 0.5).bool()

    def get_position_ids(self, input_ids, mask_positions, device):
        batch_size, seq_length = input_ids.shape
        context_lengths = [seq.tolist().index(self.config.bos_token_id) for seq in input_ids]
        position_ids = torch.arange(seq_length, dtype=torch.long, device=device).unsqueeze(0).repeat(batch_size, 1)
        for i, context_length in enumerate(context_lengths):
            position_ids[i, context_length:] = mask_positions[i]
        block_position_ids = [torch.cat((
            torch.zeros(context_length, dtype=torch.long, device=device),
            torch.arange(seq_length - context_length, dtype=torch.long, device=device) + 1
        )) for context_length in context_lengths]
        block_position_ids = torch.stack(block_position_ids, dim=0)
        return torch.stack((position_ids, block_position_ids), dim=1)

    def forward(self, input_ids):
        attention_mask = self.get_masks(input_ids, device=input_ids.device)
        MASK, gMASK = self.config.mask_token_id, self.config.gmask_token_id
        mask_positions = []
        for seq in input_ids.tolist():
            mask_token = gMASK if gMASK in seq else MASK
            mask_positions.append(seq.index(mask_token))
        position_ids = self.get_position_ids(input_ids, mask_positions, input_ids.device)
        hidden_states = self.word_embeddings(input_ids).transpose(0, 1)
        for i, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, position_ids, attention_mask, torch.tensor(i))
        return self.final_layernorm(hidden_states)


class ChatGLMForConditionalGeneration(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = ChatGLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.word_embeddings.weight  # tie_weights()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        hidden_states = self.transformer(input_ids)
        lm_logits = self.lm_head(hidden_states).permute(1, 0, 2).contiguous()
        loss = None
        if labels is not None:
            lm_logits = lm_logits.to(torch.float32)
            loss = causal_lm_loss(lm_logits, labels)
        return lm_logits, loss


def load(model_dir):
    cfg = Config.from_dir(model_dir, DEFAULTS)
    if not cfg.position_encoding_2d or cfg.pre_seq_len is not None or cfg.quantization_bit:
        raise ValueError("port: only 2-D positions, no prefix, no quantization are ported")
    torch.manual_seed(0)
    m = ChatGLMForConditionalGeneration(cfg)
    m = load_weights(m, model_dir, tied=("lm_head.weight",))
    return m.float()
