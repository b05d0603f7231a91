// chat-template.ts — a model's own `chat_template` (tokenizer_config.json) rendered with @huggingface/jinja,
// the same Jinja dialect transformers uses. Only the template text is read from the folder; nothing in it
// runs outside the sandboxed Jinja interpreter.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { Environment, Interpreter, parse, tokenize } from '@huggingface/jinja';

import type { Turn } from './formats.js';

export interface ChatRenderer {
  /** A digest of the template text (part of the .tok cache key). */
  readonly id: string;
  render(messages: Turn[], addGenerationPrompt: boolean): string;
}

function tokenString(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return '';
}

// ---- Python/Jinja2 semantics on top of @huggingface/jinja --------------------------------------------------
// transformers renders with jinja2 (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks) where printing
// goes through Python's str(): None → "None", True → "True", lists/dicts → their repr. The JS interpreter
// prints those as "", "true" and JSON, ignores str.strip(chars), lowers nothing in capitalize, ignores
// join(attribute=…) and reads attributes of undefined values as undefined. The interpreter below keeps the
// library's parser and evaluator and replaces exactly those pieces; anything it cannot do stays an error.

/* eslint-disable @typescript-eslint/no-explicit-any */
type RV = { type: string; value: any; toString(): string };
type Node = { type: string; [k: string]: any };
const VALUE_NODE = 'PyValue';
const OUTPUT_NODE = 'PyOutput';

const probe = new Environment();
const RT = {
  Str: probe.set('s', '').constructor as new (v: string) => RV,
  Bool: probe.set('b', true).constructor as new (v: boolean) => RV,
  Func: probe.set('f', () => 0).constructor as new (v: (args: RV[], env: Environment) => RV) => RV,
  Null: probe.set('n', null).constructor as new (v: null) => RV,
  Int: probe.set('i', 1).constructor as new (v: number) => RV,
};

/** Python's str.isspace() characters (what strip()/trim remove when no chars are given). */
const PY_SPACE = new Set([...'\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000']);

function pyStrip(s: string, chars: RV | undefined, left: boolean, right: boolean): string {
  let set: Set<string>;
  if (!chars || chars.type === 'NullValue' || chars.type === 'UndefinedValue') set = PY_SPACE;
  else if (chars.type === 'StringValue') set = new Set([...(chars.value as string)]);
  else throw new Error(`strip arg must be None or str, not ${chars.type}`);
  const cs = [...s];
  let a = 0;
  let b = cs.length;
  if (left) while (a < b && set.has(cs[a]!)) a++;
  if (right) while (b > a && set.has(cs[b - 1]!)) b--;
  return cs.slice(a, b).join('');
}

function pyCapitalize(s: string): string {
  const cs = [...s];
  return cs.length ? cs[0]!.toUpperCase() + cs.slice(1).join('').toLowerCase() : '';
}

function pyQuote(s: string): string {
  const q = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = q;
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '\\') out += '\\\\';
    else if (ch === q) out += '\\' + q;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || (c >= 0x7f && c < 0xa0)) out += '\\x' + c.toString(16).padStart(2, '0');
    else out += ch;
  }
  return out + q;
}

/** Python's repr() of a runtime value (how jinja2 prints a value inside a list or dict). */
function pyRepr(v: RV): string {
  switch (v.type) {
    case 'StringValue':
      return pyQuote(v.value as string);
    case 'ArrayValue':
      return '[' + (v.value as RV[]).map(pyRepr).join(', ') + ']';
    case 'TupleValue': {
      const items = (v.value as RV[]).map(pyRepr);
      return '(' + items.join(', ') + (items.length === 1 ? ',' : '') + ')';
    }
    case 'ObjectValue':
    case 'KeywordArgumentsValue':
      return '{' + [...(v.value as Map<string, RV>)].map(([k, x]) => `${pyQuote(k)}: ${pyRepr(x)}`).join(', ') + '}';
    default:
      return pyStr(v);
  }
}

/** Python's str() of a runtime value (what `{{ … }}`, `~`, `|string` and `|join` print). */
function pyStr(v: RV): string {
  switch (v.type) {
    case 'UndefinedValue':
      return '';
    case 'NullValue':
      return 'None';
    case 'BooleanValue':
      return v.value ? 'True' : 'False';
    case 'StringValue':
      return v.value as string;
    case 'ArrayValue':
    case 'TupleValue':
    case 'ObjectValue':
    case 'KeywordArgumentsValue':
      return pyRepr(v);
    default:
      return v.toString();
  }
}

function describe(n: Node): string {
  switch (n.type) {
    case 'Identifier':
      return n.value as string;
    case 'MemberExpression':
      return `${describe(n.object)}${n.computed ? `[${n.property.type === 'StringLiteral' ? pyQuote(n.property.value) : n.property.type === 'IntegerLiteral' ? n.property.value : '…'}]` : `.${n.property.value}`}`;
    case 'CallExpression':
      return `${describe(n.callee)}(…)`;
    case 'StringLiteral':
      return pyQuote(n.value as string);
    default:
      return 'the value';
  }
}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/** Python's datetime.now().strftime(fmt) in the C locale (what transformers' strftime_now gives). */
export function strftimeNow(fmt: string, d = new Date()): string {
  const p2 = (n: number) => String(n).padStart(2, '0');
  const doy = Math.floor((Date.UTC(d.getFullYear(), d.getMonth(), d.getDate()) - Date.UTC(d.getFullYear(), 0, 1)) / 86400000) + 1;
  return fmt.replace(/%(-?)(.)/g, (tok, dash: string, c: string) => {
    const pad = dash ? (n: number) => String(n) : p2;
    switch (c) {
      case 'Y': return String(d.getFullYear());
      case 'y': return p2(d.getFullYear() % 100);
      case 'm': return pad(d.getMonth() + 1);
      case 'd': return pad(d.getDate());
      case 'e': return String(d.getDate()).padStart(2, ' ');
      case 'b': return MONTHS[d.getMonth()]!.slice(0, 3);
      case 'B': return MONTHS[d.getMonth()]!;
      case 'a': return DAYS[d.getDay()]!.slice(0, 3);
      case 'A': return DAYS[d.getDay()]!;
      case 'H': return pad(d.getHours());
      case 'I': return pad(d.getHours() % 12 || 12);
      case 'p': return d.getHours() < 12 ? 'AM' : 'PM';
      case 'M': return pad(d.getMinutes());
      case 'S': return pad(d.getSeconds());
      case 'j': return dash ? String(doy) : String(doy).padStart(3, '0');
      case '%': return '%';
      default: throw new Error(`strftime_now: the directive ${tok} is not supported`);
    }
  });
}

function pyRange(...a: number[]): number[] {
  if (!a.length || a.some((x) => !Number.isInteger(x))) throw new Error('range() takes integer arguments');
  const [start, stop, step] = a.length === 1 ? [0, a[0]!, 1] : [a[0]!, a[1]!, a[2] ?? 1];
  if (step === 0) throw new Error('range() arg 3 must not be zero');
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}

/** Marks each `{{ expression }}` at output level so it prints with Python's str(). */
function markOutputs(body: Node[]): void {
  for (let i = 0; i < body.length; i++) {
    const n = body[i]!;
    for (const key of ['body', 'alternate', 'defaultBlock']) if (Array.isArray(n[key])) markOutputs(n[key] as Node[]);
    const statement = ['Set', 'If', 'For', 'Macro', 'CallStatement', 'FilterStatement', 'Comment', 'Break', 'Continue', 'Program'].includes(n.type);
    if (!statement) body[i] = { type: OUTPUT_NODE, expr: n };
  }
}

const OWN_FILTERS = new Set(['capitalize', 'trim', 'string', 'join']);

// the package's .d.ts re-exports its runtime classes through a path TypeScript does not resolve here
const BaseInterpreter = Interpreter as unknown as new (env: Environment) => { evaluate(statement: unknown, env: Environment): unknown; run(program: unknown): unknown };

class PyInterpreter extends BaseInterpreter {
  private value(v: RV): Node {
    return { type: VALUE_NODE, value: v };
  }

  private args(nodes: Node[], env: Environment): [RV[], Map<string, RV>] {
    const pos: RV[] = [];
    const kw = new Map<string, RV>();
    for (const a of nodes) {
      if (a.type === 'KeywordArgumentExpression') kw.set(a.key.value as string, this.ev(a.value, env));
      else pos.push(this.ev(a, env));
    }
    return [pos, kw];
  }

  private ev(n: Node, env: Environment): RV {
    return this.evaluate(n, env);
  }

  private filter(name: string, x: RV, pos: RV[], kw: Map<string, RV>): RV {
    switch (name) {
      case 'string':
        return new RT.Str(pyStr(x));
      case 'capitalize':
        if (x.type !== 'StringValue') throw new Error(`capitalize needs a string, got ${x.type}`);
        return new RT.Str(pyCapitalize(x.value as string));
      case 'trim':
        if (x.type !== 'StringValue') throw new Error(`trim needs a string, got ${x.type}`);
        return new RT.Str(pyStrip(x.value as string, pos[0] ?? kw.get('chars'), true, true));
      default: {
        // join(d='', attribute=None)
        const sep = pos[0] ?? kw.get('d');
        const attr = pos[1] ?? kw.get('attribute');
        let items: RV[];
        if (x.type === 'StringValue') items = [...(x.value as string)].map((c) => new RT.Str(c));
        else if (x.type === 'ArrayValue' || x.type === 'TupleValue') items = x.value as RV[];
        else throw new Error(`join needs a list, got ${x.type}`);
        if (attr && attr.type !== 'NullValue' && attr.type !== 'UndefinedValue') {
          const path = String(attr.value).split('.');
          items = items.map((it) => {
            let v: RV | undefined = it;
            for (const p of path) {
              if (v && (v.type === 'ObjectValue' || v.type === 'NamespaceValue')) v = (v.value as Map<string, RV>).get(p);
              else if (v && v.type === 'ArrayValue' && /^\d+$/.test(p)) v = (v.value as RV[])[Number(p)];
              else v = undefined;
            }
            return v ?? new RT.Str('');
          });
        }
        return new RT.Str(items.map(pyStr).join(sep ? pyStr(sep) : ''));
      }
    }
  }

  override evaluate(statement: Node | undefined, environment: Environment): RV {
    const n = statement;
    const out = (v: RV) => v;
    const sup = (m: Node): RV => super.evaluate(m, environment) as RV;
    if (!n) return super.evaluate(statement, environment) as RV;
    switch (n.type) {
      case VALUE_NODE:
        return out(n.value as RV);
      case OUTPUT_NODE:
        return out(new RT.Str(pyStr(this.ev(n.expr, environment))));
      case 'MemberExpression': {
        const obj = this.ev(n.object, environment);
        if (obj.type === 'UndefinedValue') {
          const prop = n.computed ? '[…]' : `.${n.property.value}`;
          throw new Error(`${describe(n.object)} is undefined (the template reads ${prop} from it)`);
        }
        if (obj.type === 'StringValue' && !n.computed && n.property.type === 'Identifier') {
          const s = obj.value as string;
          const name = n.property.value as string;
          const strip = { strip: [true, true], lstrip: [true, false], rstrip: [false, true] }[name];
          if (strip) return out(new RT.Func((a) => new RT.Str(pyStrip(s, a[0], strip[0]!, strip[1]!))));
          if (name === 'capitalize') return out(new RT.Func(() => new RT.Str(pyCapitalize(s))));
        }
        return sup({ ...n, object: this.value(obj) });
      }
      case 'CallExpression': {
        const fn = this.ev(n.callee, environment);
        if (fn.type !== 'FunctionValue') {
          if (n.callee.type === 'MemberExpression' && !n.callee.computed) {
            throw new Error(`${describe(n.callee)}(…) is not supported: this Jinja implementation has no method "${n.callee.property.value}" on ${this.ev(n.callee.object, environment).type.replace(/Value$/, '').toLowerCase()} values`);
          }
          throw new Error(`${describe(n.callee)} is not a function (${fn.type === 'UndefinedValue' ? 'it is undefined' : fn.type})`);
        }
        return sup({ ...n, callee: this.value(fn) });
      }
      case 'FilterExpression': {
        const f = n.filter as Node;
        const name = f.type === 'Identifier' ? (f.value as string) : f.type === 'CallExpression' && f.callee.type === 'Identifier' ? (f.callee.value as string) : '';
        if (!OWN_FILTERS.has(name)) return sup(n);
        const [pos, kw] = f.type === 'CallExpression' ? this.args(f.args as Node[], environment) : [[], new Map<string, RV>()];
        return out(this.filter(name, this.ev(n.operand, environment), pos, kw));
      }
      case 'BinaryExpression':
        if (n.operator.value === '~') return out(new RT.Str(pyStr(this.ev(n.left, environment)) + pyStr(this.ev(n.right, environment))));
        return sup(n);
      default:
        return super.evaluate(statement, environment) as RV;
    }
  }
}

/** A compiled chat template rendered with jinja2's semantics as transformers' apply_chat_template uses them. */
export class ChatJinja {
  private readonly program: ReturnType<typeof parse>;
  constructor(source: string) {
    this.program = parse(tokenize(source, { lstrip_blocks: true, trim_blocks: true }));
    markOutputs(this.program.body as unknown as Node[]);
  }

  render(vars: Record<string, unknown>): string {
    const env = new Environment();
    env.set('false', false);
    env.set('true', true);
    env.set('none', null);
    env.set('False', false);
    env.set('True', true);
    env.set('None', null);
    env.set('raise_exception', (message: unknown) => {
      throw new Error(String(message));
    });
    env.set('range', pyRange);
    env.set('strftime_now', (fmt: unknown) => strftimeNow(String(fmt)));
    for (const [k, v] of Object.entries(vars)) env.set(k, v);
    const r = new PyInterpreter(env).run(this.program) as RV;
    return r.value as string;
  }
}
/* eslint-enable @typescript-eslint/no-explicit-any */

/** Reads tokenizer_config.json's chat_template (a string, or a list of {name, template}: "default" wins). */
export function loadChatTemplate(modelDir: string): ChatRenderer {
  const file = path.join(modelDir, 'tokenizer_config.json');
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: the "chat_template" template needs the model's tokenizer_config.json`);
  let cfg: Record<string, unknown>;
  try {
    cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${file} is not valid JSON: ${(err as Error).message}`);
  }
  let source: unknown = cfg.chat_template;
  if (Array.isArray(source)) {
    const list = source as { name?: string; template?: string }[];
    source = (list.find((t) => t.name === 'default') ?? list[0])?.template;
  }
  if (typeof source !== 'string' || !source.trim()) {
    throw new Error(`${file} has no chat_template; choose one of the built-in templates (raw, chatglm2, alpaca, …) instead`);
  }
  let tpl: ChatJinja;
  try {
    tpl = new ChatJinja(source);
  } catch (err) {
    throw new Error(`the chat_template in ${file} does not parse: ${(err as Error).message}`);
  }
  // transformers passes the tokenizer's special_tokens_map: only the tokens that are set
  const specials: Record<string, string | string[]> = {};
  for (const k of ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token']) {
    const t = tokenString(cfg[k]);
    if (t) specials[k] = t;
  }
  if (Array.isArray(cfg.additional_special_tokens) && cfg.additional_special_tokens.length) specials.additional_special_tokens = cfg.additional_special_tokens.map(tokenString);
  return {
    id: crypto.createHash('sha256').update(source).update(JSON.stringify(specials)).digest('hex').slice(0, 16),
    render(messages, addGenerationPrompt) {
      try {
        return tpl.render({ messages: messages.map((m) => ({ role: m.role, content: m.content })), add_generation_prompt: addGenerationPrompt, ...specials });
      } catch (err) {
        throw new Error(`the model's chat_template failed on this conversation: ${(err as Error).message}`);
      }
    },
  };
}
