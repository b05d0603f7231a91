// llama3-qwen-mistral.test.ts — what a Llama-3.x / Qwen2.5 / Mistral-v0.3 folder gets without the Python reference
// (that parity is tests/integration/llama3-qwen-mistral.test.ts): the catalog family, template and LoRA preset the
// wizard picks for it, the memory estimate's attention widths (heads · head_dim) and biases, a SentencePiece folder
// with `legacy: false` (Mistral v0.3) tokenized as transformers does, and the real chat templates' fixtures.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadChatTemplate } from '../../src-main/core/data/chat-template';
import { loadTokenizer, type LoadedTokenizer } from '../../src-main/core/data/tokenizer/index';
import { parseSpModel, withoutDummyPrefix } from '../../src-main/core/data/tokenizer/sp-model';
import { CATALOG, familyOf, isLlama3Config, loraPresets } from '../../src-main/core/models/catalog';
import { estimateRun } from '../../src-main/core/runs/estimate';
import { parseRunSpec } from '../../src-main/core/runs/runspec';
import { llamaSpModel, writeFolder } from '../fixtures/tokenizers/fixtures';
import { CHAT_TEMPLATE_FILES, chatTemplateText } from '../fixtures/tokenizers/modern';

const ROOT = path.resolve(__dirname, '..', '..');
let tmp: string;
const opened: LoadedTokenizer[] = [];
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-modern-unit-'));
});
afterAll(() => {
  for (const t of opened) t.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

// config.json of the real models (the fields that matter here)
const LLAMA31 = { model_type: 'llama', vocab_size: 128256, bos_token_id: 128000, eos_token_id: [128001, 128008, 128009], rope_scaling: { factor: 8.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' } };
const LLAMA30 = { model_type: 'llama', vocab_size: 128256, bos_token_id: 128000, eos_token_id: 128009, rope_scaling: null };
const LLAMA2 = { model_type: 'llama', vocab_size: 32000, bos_token_id: 1, eos_token_id: 2, rope_scaling: null };

describe('the catalog: Llama 3.x, Qwen2.5 and Mistral', () => {
  it('lists the instruct models with their family\'s chat_template and LoRA preset', () => {
    const ids = CATALOG.flatMap((f) => f.models.map((m) => m.hfId));
    for (const id of ['meta-llama/Llama-3.2-1B-Instruct', 'Qwen/Qwen2.5-0.5B-Instruct', 'Qwen/Qwen2.5-1.5B-Instruct', 'mistralai/Mistral-7B-Instruct-v0.3']) expect(ids).toContain(id);
    const presets = loraPresets(path.join(ROOT, 'configs'));
    for (const [id, modelType, preset] of [['llama3', 'llama', 'lora_config_llama3.json'], ['qwen2', 'qwen2', 'lora_config_qwen2.json'], ['mistral', 'mistral', 'lora_config_mistral.json']] as const) {
      const f = CATALOG.find((x) => x.id === id)!;
      expect([f.modelType, f.template, f.loraConfig]).toEqual([modelType, 'chat_template', preset]);
      const p = presets.find((x) => path.basename(x.file) === preset)!;
      expect(p.targetModules).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
    }
  });

  it('tells a Llama 3.x folder from a LLaMA-1/2 one (both model_type "llama") by its config.json or its name', () => {
    const folder = (name: string, config: object, tokCfg?: object) =>
      writeFolder(path.join(tmp, name), { 'config.json': config, ...(tokCfg ? { 'tokenizer_config.json': tokCfg } : {}) });
    const instruct = { chat_template: chatTemplateText('llama-3.1'), bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' };
    // before: every "llama" folder was Open-LLaMA, trained with the alpaca template
    expect(familyOf('llama', folder('my-model', LLAMA31, instruct))).toMatchObject({ id: 'llama3', template: 'chat_template', loraConfig: 'lora_config_llama3.json' });
    expect(familyOf('llama', folder('llama3-8b-instruct', LLAMA30, instruct))!.id).toBe('llama3');
    expect(familyOf('llama', '/models/meta-llama/Llama-3.2-1B-Instruct')!.id).toBe('llama3');
    expect(familyOf('llama', '/models/Meta-Llama-3-8B')!.id).toBe('llama3');
    expect(isLlama3Config(LLAMA2)).toBe(false);
    expect(familyOf('llama', folder('llama-2-7b', LLAMA2))!.id).toBe('open-llama');
    expect(familyOf('llama', '/models/huggyllama/llama-30b')!.id).toBe('open-llama');
    expect(familyOf('llama', '/models/open_llama_3b')!.id).toBe('open-llama');
    expect(familyOf('llama', '/m/chinese-alpaca-plus-7b')!.id).toBe('chinese-llama-alpaca');
    expect(familyOf('qwen2', '/models/Qwen2.5-0.5B-Instruct')).toMatchObject({ id: 'qwen2', template: 'chat_template' });
    expect(familyOf('mistral', '/models/Mistral-7B-Instruct-v0.3')).toMatchObject({ id: 'mistral', template: 'chat_template' });
  });

  it('a base model without a chat_template gets the alpaca template (the family\'s chat_template needs one)', () => {
    const base = writeFolder(path.join(tmp, 'Mistral-7B-v0.3'), { 'config.json': { model_type: 'mistral' }, 'tokenizer_config.json': { bos_token: '<s>', eos_token: '</s>' } });
    expect(familyOf('mistral', base)).toMatchObject({ id: 'mistral', template: 'alpaca', loraConfig: 'lora_config_mistral.json' });
    expect(CATALOG.find((f) => f.id === 'mistral')!.template).toBe('chat_template');
  });
});

describe('the memory estimate: heads · head_dim and the biases', () => {
  const spec = (lora: Record<string, unknown>) => parseRunSpec({ model: { path: '/m' }, data: { train: '/t.json' }, output: { dir: '/o' }, lora: { r: 16, dropout: 0, ...lora } });
  const all = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

  it('Mistral-Nemo (hidden 5120, 32 heads of head_dim 128): q_proj 5120 → 4096, o_proj 4096 → 5120', () => {
    const info = { path: '/nonexistent', supported: true, model_type: 'mistral', hidden: 5120, intermediate: 14336, layers: 40, vocab: 131072, heads: 32, kv_heads: 8, head_dim: 128, parameters: 12_247_782_400 } as Parameters<typeof estimateRun>[0];
    const per = 16 * ((5120 + 4096) + (5120 + 1024) * 2 + (4096 + 5120) + (5120 + 14336) * 2 + (14336 + 5120));
    // before: q 5120 → 5120, k/v 5120 → 8·5120/32 = 1280, o 5120 → 5120
    expect(estimateRun(info, spec({ target_modules: all }), 1).trainableParams).toBe(40 * per);
    const qv = estimateRun(info, spec({ target_modules: ['q_proj', 'v_proj'] }), 1);
    expect(qv.trainableParams).toBe(40 * 16 * (5120 + 4096 + 5120 + 1024));
    // the activations kept per token hold q and the attention output at 4096 wide, not 5120
    const wide = estimateRun({ ...info, head_dim: 160 }, spec({ target_modules: ['q_proj', 'v_proj'] }), 1);
    expect(wide.bytes.activations).toBeGreaterThan(qv.bytes.activations);
    expect(wide.bytes.temporaries).toBeGreaterThan(qv.bytes.temporaries);
  });

  it('without head_dim in the inspection: hidden / heads, as before', () => {
    const info = { supported: true, model_type: 'llama', hidden: 4096, intermediate: 11008, layers: 32, vocab: 32000, heads: 32, kv_heads: 8, parameters: 6_738_415_616 } as Parameters<typeof estimateRun>[0];
    expect(estimateRun(info, spec({ target_modules: ['q_proj', 'k_proj'] }), 1).trainableParams).toBe(32 * 16 * (8192 + 4096 + 1024));
  });

  it('LoRA bias "all" / "lora_only" trains the biases: Qwen2\'s q/k/v, LLaMA\'s with attention_bias / mlp_bias', () => {
    // Qwen2.5-0.5B: hidden 896, 14 heads of 64, 2 KV heads, 24 layers
    const qwen = writeFolder(path.join(tmp, 'qwen-est'), { 'config.json': { model_type: 'qwen2', hidden_size: 896, num_attention_heads: 14, num_key_value_heads: 2 } });
    const info = { path: qwen, supported: true, model_type: 'qwen2', hidden: 896, intermediate: 4864, layers: 24, vocab: 151936, heads: 14, kv_heads: 2, head_dim: 64, parameters: 494_032_768 } as Parameters<typeof estimateRun>[0];
    const lora = 24 * 16 * ((896 + 896) + (896 + 128));
    const t = (bias: string) => estimateRun(info, spec({ target_modules: ['q_proj', 'v_proj'], bias }), 1).trainableParams;
    expect(t('none')).toBe(lora);
    expect(t('lora_only')).toBe(lora + 24 * (896 + 128)); // the biases of q_proj and v_proj
    expect(t('all')).toBe(lora + 24 * (896 + 128 + 128)); // q, k and v's
    const llama = (cfg: object) => ({ ...info, path: writeFolder(path.join(tmp, `llama-est-${JSON.stringify(cfg).length}`), { 'config.json': cfg }), model_type: 'llama' });
    expect(estimateRun(llama({ model_type: 'llama' }), spec({ target_modules: ['q_proj'], bias: 'all' }), 1).trainableParams).toBe(24 * 16 * (896 + 896));
    expect(estimateRun(llama({ model_type: 'llama', attention_bias: true, mlp_bias: true }), spec({ target_modules: ['q_proj'], bias: 'all' }), 1).trainableParams).toBe(24 * (16 * (896 + 896) + 896 + 128 * 2 + 896 + 4864 * 2 + 896));
  });
});

describe('Mistral v0.3 / recent LLaMA folders: a tokenizer.model with `legacy: false`', () => {
  const folder = async (name: string, legacy: boolean) => {
    const dir = writeFolder(path.join(tmp, name), {
      'tokenizer.model': await llamaSpModel(),
      'tokenizer_config.json': { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', legacy, add_bos_token: true, tokenizer_class: 'LlamaTokenizer' },
    });
    const t = await loadTokenizer(dir);
    opened.push(t);
    return t;
  };

  it('puts no "▁" before the text after a special token (transformers\' LlamaTokenizer docstring example)', async () => {
    // tokenization_llama.py: encode("Hello <s>.") is [1, 15043, 29871, 1, 869] with legacy=True (869 is "▁.") and
    // [1, 15043, 29871, 1, 29889] with legacy=False (29889 is "."); the leading 1 is add_special_tokens' bos
    const legacy = await folder('llama-legacy', true);
    const modern = await folder('llama-nonlegacy', false);
    expect(legacy.encode('Hello <s>.')).toEqual([15043, 29871, 1, 869]);
    expect(modern.encode('Hello <s>.')).toEqual([15043, 29871, 1, 29889]); // before: as legacy
    expect(modern.encode('Hello world')).toEqual([15043, 3186]);
    expect(modern.encode('<s> Hello')).toEqual([1, 15043]);
    expect(legacy.encode('<s> Hello')).toEqual([1, 29871, 15043]);
    // decoding the ids of plain text is unchanged
    expect(modern.decode(modern.encode('Hello world, 你好'))).toBe('Hello world, 你好');
  });

  it('the model without its dummy prefix keeps every piece', async () => {
    const bytes = await llamaSpModel();
    const a = parseSpModel(bytes);
    const b = parseSpModel(withoutDummyPrefix(bytes));
    expect(b.pieces).toEqual(a.pieces);
    expect(b.types).toEqual(a.types);
    expect([b.unkId, b.bosId, b.eosId, b.byteFallback]).toEqual([a.unkId, a.bosId, a.eosId, a.byteFallback]);
  });
});

describe('the real chat templates (fixtures)', () => {
  it('render a conversation the way the models were trained', () => {
    const r = (name: keyof typeof CHAT_TEMPLATE_FILES, specials: object) =>
      loadChatTemplate(writeFolder(path.join(tmp, `ct-${name}`), { 'tokenizer_config.json': { chat_template: chatTemplateText(name), ...specials } }));
    const msgs = [{ role: 'system' as const, content: 'Be brief.' }, { role: 'user' as const, content: 'Hi' }];
    expect(r('llama-3.1', { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' }).render(msgs, true)).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    expect(r('qwen2.5', { eos_token: '<|im_end|>' }).render(msgs.slice(1), true)).toBe('<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    expect(r('mistral-v0.3', { bos_token: '<s>', eos_token: '</s>' }).render([...msgs, { role: 'assistant', content: ' Hello! ' }, { role: 'user', content: 'Bye' }], true)).toBe('<s>[INST] Hi[/INST] Hello!</s>[INST] Be brief.\n\nBye[/INST]');
  });
});
