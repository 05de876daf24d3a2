// Chat templates (HF tokenizer_config.json / GGUF tokenizer.chat_template) rendered with @huggingface/jinja.
import { DuoArgumentError } from '@duoattn/core';
import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
}

/** Renders `messages` with `template`; `addGenerationPrompt` (default true) opens the assistant turn. */
export function applyChatTemplate(
  template: string,
  messages: readonly ChatMessage[],
  options: { addGenerationPrompt?: boolean; bosToken?: string; eosToken?: string } = {},
): string {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new DuoArgumentError('messages', 'Expected at least one chat message');
  }
  return new Template(template).render({
    messages,
    add_generation_prompt: options.addGenerationPrompt ?? true,
    bos_token: options.bosToken ?? '',
    eos_token: options.eosToken ?? '',
  });
}
