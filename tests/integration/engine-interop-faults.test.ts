// Files other tools write, met by `llmt-engine` (forward, merge, inspect, quantize) on tiny models: PEFT adapters whose
// initialisation rewrote the base weights (PiSSA, OLoRA) are refused with the conversion that fixes them, and the
// converted adapter computes PEFT's logits; PEFT variants the engine cannot compute (KaSA, block-diagonal LoRA) are
// refused by name, those it can (ensure_weight_tying on a tied model, container modules_to_save, VeLoRA, MonteCLoRA)
// give PEFT's logits, merged too; config.json sizes that the weights do not have fail at once, naming the tensor,
// before anything is allocated from them; a NaN weight is refused by name when it would be quantized to 4 bits; a
// gpt_neox config without rotary_pct rotates a quarter of each head, as transformers; an adapter folder given as the
// model is named as one. The reference is PEFT / transformers themselves (PY), run once in beforeAll.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ENGINE, maxAbsDiff, PY } from '../helpers/native';

let tmp: string;
const models: Record<string, string> = {};
type Entry = { model: string; adapter: string; logits?: number[][][]; base_diff?: number; peft_error?: string };
let manifest: Record<string, Entry>;
let neoxHf: number[][][];

function run(cmd: string, args: string[], ok = true) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000, env: { ...process.env, OMP_NUM_THREADS: '2' } });
  if (ok && r.status !== 0) throw new Error(`${path.basename(cmd)} ${args.join(' ')} failed (${r.status}):\n${r.stderr}\n${r.stdout}`);
  return r;
}
const engine = (args: string[], ok = true) => run(ENGINE, args, ok);
const tokens = () => path.join(tmp, 'tokens.json');
const readLogits = (f: string) => (JSON.parse(fs.readFileSync(f, 'utf8')) as { logits: number[][][] }).logits;

function forward(model: string, adapter?: string, extra: string[] = []): number[][][] {
  const out = path.join(tmp, `fwd-${Math.random().toString(36).slice(2)}.json`);
  engine(['forward', '--model', model, ...(adapter ? ['--adapter', adapter] : []), '--tokens', tokens(), '--out', out, ...extra]);
  return readLogits(out);
}

/** A copy of a model folder with config.json changed by `edit`. */
function variant(src: string, name: string, edit: (c: Record<string, unknown>) => void): string {
  const dir = path.join(tmp, name);
  fs.cpSync(src, dir, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  edit(cfg);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  return dir;
}

// PEFT's side: one adapter per case (get_peft_model, trainable tensors moved by N(0, 0.1) so every part of the adapter
// counts, save_pretrained), then the logits PeftModel.from_pretrained computes from the saved folder; a gpt_neox
// folder's transformers logits. A case this PEFT release does not know is recorded as peft_error.
const REFERENCE = String.raw`
import json, os, sys, warnings
warnings.filterwarnings("ignore")
os.environ["HF_HUB_OFFLINE"] = "1"
import torch, transformers, peft
transformers.logging.set_verbosity_error()
torch.set_num_threads(2)
models, tokens, out, neox = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ids = torch.tensor(json.load(open(tokens))["input_ids"])
base = lambda name: transformers.AutoModelForCausalLM.from_pretrained(models[name], torch_dtype=torch.float32).eval()
def logits(m):
    with torch.no_grad():
        return m(input_ids=ids).logits
qv = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
CASES = {
    "pissa": ("llama", dict(qv, init_lora_weights="pissa")),
    "olora": ("llama", dict(qv, init_lora_weights="olora")),
    "pissa_converted": ("llama", dict(qv, init_lora_weights="pissa")),
    "kasa": ("llama", dict(qv, kasa_config={})),
    "bdlora": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"],
                             use_bdlora={"target_modules_bd_a": ["o_proj"], "target_modules_bd_b": ["q_proj"], "nblocks": 2})),
    "tied_ensure": ("qwen2", dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["embed_tokens"], ensure_weight_tying=True)),
    "container": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["norm", "layers.1.mlp"])),
    "container_over_target": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["layers.1.self_attn"])),
    "velora": ("llama", dict(qv, velora_config={})),
    "monteclora": ("llama", dict(qv, monteclora_config={})),
}
manifest = {}
for case, (name, kw) in CASES.items():
    adapter = os.path.join(out, case)
    try:
        torch.manual_seed(0)
        pm = peft.get_peft_model(base(name), peft.LoraConfig(task_type="CAUSAL_LM", **kw))
        if case == "pissa_converted":
            pm.save_pretrained(adapter + "-init")
        with torch.no_grad():
            for _, p in pm.named_parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
        if case == "pissa_converted":
            pm.save_pretrained(adapter, path_initial_model_for_weight_conversion=adapter + "-init")
        else:
            pm.save_pretrained(adapter)
        b = base(name)
        lb = logits(b)
        lp = logits(peft.PeftModel.from_pretrained(b, adapter).eval())
        manifest[case] = {"model": models[name], "adapter": adapter, "logits": lp.tolist(), "base_diff": float((lp - lb).abs().max())}
    except Exception as e:
        manifest[case] = {"model": models[name], "adapter": adapter, "peft_error": f"{type(e).__name__}: {e}"}
json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"))
m = transformers.AutoModelForCausalLM.from_pretrained(neox, torch_dtype=torch.float32).eval()
json.dump({"logits": logits(m).tolist()}, open(os.path.join(out, "neox-hf.json"), "w"))
`;

beforeAll(() => {
  if (!fs.existsSync(PY)) throw new Error(`the reference Python (${PY}) is missing: run \`bash tests/python/setup.sh\` (or set LLMT_PY)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmt-interop-'));
  fs.writeFileSync(tokens(), JSON.stringify({ input_ids: [[1, 5, 17, 33, 90, 200, 7, 64, 3, 150, 11, 42], [1, 300, 12, 8, 99, 250, 31, 2, 77, 5, 6, 19]] }));
  for (const f of ['llama', 'qwen2', 'gpt_neox']) {
    models[f] = path.join(tmp, f);
    engine(['create-tiny', '--family', f, '--out', models[f]!, '--seed', '7']);
  }
  // a gpt_neox config as old exports write it: no rotary_pct (nor partial_rotary_factor)
  variant(models.gpt_neox!, 'neox-no-rotary-pct', (c) => {
    expect(c.rotary_pct).toBe(0.25);
    delete c.rotary_pct;
    delete c.partial_rotary_factor;
  });
  const out = path.join(tmp, 'peft');
  fs.mkdirSync(out);
  run(PY, ['-c', REFERENCE, JSON.stringify(models), tokens(), out, path.join(tmp, 'neox-no-rotary-pct')]);
  manifest = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8'));
  neoxHf = readLogits(path.join(out, 'neox-hf.json'));
}, 600_000);
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** forward and merge of a refused adapter: both fail with `why`, the merge leaves no folder. */
function expectRefused(c: string, why: RegExp) {
  const e = manifest[c]!;
  expect(e.peft_error).toBeUndefined();
  expect(e.base_diff!).toBeGreaterThan(0.1); // PEFT computes something else than the base: loading it as plain LoRA was wrong
  const f = engine(['forward', '--model', e.model, '--adapter', e.adapter, '--tokens', tokens(), '--out', path.join(tmp, `${c}.json`)], false);
  expect(f.status).not.toBe(0);
  expect(f.stderr).toMatch(why);
  const merged = path.join(tmp, `${c}-merged`);
  const m = engine(['merge', '--model', e.model, '--adapter', e.adapter, '--out', merged], false);
  expect(m.status).not.toBe(0);
  expect(m.stderr).toMatch(why);
  expect(fs.existsSync(merged)).toBe(false);
}

describe('adapters whose initialisation rewrote the base weights', () => {
  it.each(['pissa', 'olora'])('%s: refused by forward and merge, naming PEFT\'s conversion', (c) => {
    expectRefused(c, new RegExp(`UNSUPPORTED: .*init_lora_weights "${c}" changed the base weights.*path_initial_model_for_weight_conversion`));
  });

  it('the adapter PEFT converts (init_lora_weights true, twice the rank) computes PEFT\'s logits, merged too', () => {
    const e = manifest.pissa_converted!;
    expect(e.peft_error).toBeUndefined();
    const cfg = JSON.parse(fs.readFileSync(path.join(e.adapter, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ init_lora_weights: true, r: 8 });
    expect(maxAbsDiff(forward(e.model, e.adapter), e.logits!)).toBeLessThan(1e-4);
    const merged = path.join(tmp, 'pissa-converted-merged');
    engine(['merge', '--model', e.model, '--adapter', e.adapter, '--out', merged]);
    expect(maxAbsDiff(forward(merged), e.logits!)).toBeLessThan(1e-4);
  });
});

describe('PEFT variants', () => {
  it.each([
    ['kasa', /UNSUPPORTED: .*KaSA \(kasa_config\) is not supported/],
    ['bdlora', /UNSUPPORTED: .*block-diagonal LoRA \(use_bdlora\) is not supported/],
  ] as [string, RegExp][])('%s: refused by name, by forward and by merge', (c, why) => expectRefused(c, why));

  it.each(['tied_ensure', 'container', 'container_over_target', 'velora', 'monteclora'])(
    '%s: the engine computes PEFT\'s logits, and its merge the same',
    (c) => {
      const e = manifest[c]!;
      expect(e.peft_error).toBeUndefined();
      expect(e.base_diff!).toBeGreaterThan(0.1);
      expect(maxAbsDiff(forward(e.model, e.adapter), e.logits!)).toBeLessThan(1e-4);
      const merged = path.join(tmp, `${c}-merged`);
      engine(['merge', '--model', e.model, '--adapter', e.adapter, '--out', merged]);
      expect(maxAbsDiff(forward(merged), e.logits!)).toBeLessThan(1e-4);
    },
  );
});

describe('config.json against the weights\' headers', () => {
  it('a layer count the weights do not have fails at once, forward and inspect alike', () => {
    const dir = variant(models.llama!, 'layers-1e12', (c) => (c.num_hidden_layers = 1e12));
    const t0 = Date.now();
    for (const args of [['forward', '--model', dir, '--tokens', tokens(), '--out', path.join(tmp, 'x.json')], ['inspect', '--model', dir]]) {
      const r = engine(args, false);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/BAD_INPUT: .*gives num_hidden_layers 1000000000000 but the weights hold 2 layer\(s\) \(no tensor 'model\.layers\.999999999999\.input_layernorm\.weight'\)/);
    }
    expect(Date.now() - t0).toBeLessThan(20_000); // no layer built from the count (it took minutes and all memory)
  });

  it('an intermediate_size the weights do not have is a shape mismatch, not out of memory', () => {
    const dir = variant(models.llama!, 'inter-1e8', (c) => (c.intermediate_size = 1e8));
    for (const args of [['forward', '--model', dir, '--tokens', tokens(), '--out', path.join(tmp, 'x.json')], ['inspect', '--model', dir]]) {
      const r = engine(args, false);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/BAD_INPUT: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' in .* has shape \[128, 64\] but config\.json implies \[100000000, 64\]/);
      expect(r.stderr).not.toMatch(/OOM|out of memory/);
    }
  });

  it('a 4-bit folder: the packed sizes against config.json\'s', () => {
    const q = path.join(tmp, 'q4');
    engine(['quantize', '--model', models.llama!, '--out', q, '--type', 'nf4']);
    const dir = variant(q, 'q4-inter', (c) => (c.intermediate_size = 256));
    const r = engine(['forward', '--model', dir, '--tokens', tokens(), '--out', path.join(tmp, 'x.json')], false);
    expect(r.stderr).toMatch(/BAD_INPUT: 4-bit weight 'model\.layers\.0\.mlp\.gate_proj\.weight' .* packs 8192 values but config\.json implies \[256, 64\]/);
    expect(forward(q)).toHaveLength(2); // the folder as written loads
  });
});

describe('a NaN weight and 4-bit quantization', () => {
  const tensor = 'model.layers.1.self_attn.q_proj.weight';
  let dir: string;
  beforeAll(() => {
    dir = path.join(tmp, 'nan-weight');
    fs.cpSync(models.llama!, dir, { recursive: true });
    const file = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; data_offsets: [number, number] }>;
    expect(header[tensor]!.dtype).toBe('F32');
    buf.writeFloatLE(NaN, 8 + n + header[tensor]!.data_offsets[0] + 4 * (64 * 2 + 9)); // element [2, 9]
    fs.writeFileSync(file, buf);
  });
  const named = new RegExp(`BAD_INPUT: tensor '${tensor.replace(/\./g, '\\.')}' in .*model\\.safetensors holds NaN \\(element \\[2, 9\\]\\): the model file is damaged`);

  it.each(['nf4', 'fp4'])('quantized on load (%s): refused by name, not erased', (q) => {
    const r = engine(['forward', '--model', dir, '--tokens', tokens(), '--out', path.join(tmp, 'x.json'), '--quantization', q], false);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(named);
  });

  it('`llmt-engine quantize --model` refuses it too; full precision reports NAN at the forward', () => {
    const r = engine(['quantize', '--model', dir, '--out', path.join(tmp, 'nan-q4')], false);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(named);
    expect(fs.existsSync(path.join(tmp, 'nan-q4')), 'a failed quantization leaves no folder of its own').toBe(false);
    const f = engine(['forward', '--model', dir, '--tokens', tokens(), '--out', path.join(tmp, 'x.json')], false);
    expect(f.stderr).toMatch(/NAN: .*not finite/);
  });
});

describe('gpt_neox config defaults', () => {
  it('without rotary_pct a quarter of each head rotates (GPTNeoXConfig\'s 0.25), as transformers computes', () => {
    const mine = forward(path.join(tmp, 'neox-no-rotary-pct'));
    expect(maxAbsDiff(mine, neoxHf)).toBeLessThan(1e-4);
    expect(maxAbsDiff(mine, forward(models.gpt_neox!))).toBe(0); // = the tiny model's own rotary_pct 0.25
  });
});

describe('an adapter folder given as the model', () => {
  it('inspect, forward and merge name it as a PEFT adapter and its base model', () => {
    const e = manifest.pissa_converted!;
    const adapter = e.adapter;
    for (const args of [
      ['inspect', '--model', adapter],
      ['forward', '--model', adapter, '--tokens', tokens(), '--out', path.join(tmp, 'x.json')],
      ['merge', '--model', adapter, '--adapter', adapter, '--out', path.join(tmp, 'adapter-as-model-merged')],
    ]) {
      const r = engine(args, false);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain(`BAD_INPUT: ${adapter} is a PEFT adapter`);
      expect(r.stderr).toContain(`give it as the adapter (--adapter ${adapter}) and its base model (${models.llama}, from its adapter_config.json) as the model`);
      expect(r.stderr).not.toContain('must contain config.json');
    }
  });
});
