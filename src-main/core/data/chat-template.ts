// chat-template.ts — a model's own `chat_template` (tokenizer_config.json) rendered with @huggingface/jinja,
// the same Jinja dialect transformers uses. Only the template text is read from the folder; nothing in it
// runs outside the sandboxed Jinja interpreter.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { Template } from '@huggingface/jinja';

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
  let tpl: Template;
  try {
    tpl = new Template(source);
  } catch (err) {
    throw new Error(`the chat_template in ${file} does not parse: ${(err as Error).message}`);
  }
  const specials = { bos_token: tokenString(cfg.bos_token), eos_token: tokenString(cfg.eos_token), pad_token: tokenString(cfg.pad_token), unk_token: tokenString(cfg.unk_token) };
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
