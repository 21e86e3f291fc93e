/**
 * The two tokenizer schemes bunmind trains, as data: special tokens (id order is the vocabulary order), the named
 * bos/eos/pad/unk tokens, a chat template, and the `tokenizer_config.json` written next to a trained
 * `tokenizer.json` so that `transformers.AutoTokenizer.from_pretrained(dir)` loads it.
 *
 * - "minimind": MiniMind's current ChatML scheme. MINIMIND_CHAT_TEMPLATE is our own template; it renders exactly
 *   what MiniMind's published template renders (tests/chat-template.test.ts checks every fixture case).
 * - "v1": the seed's scheme, `<s>role\n...</s>\n` turns with `<unk>`, `<s>`, `</s>`.
 */

export type TokenizerScheme = "minimind" | "v1"

export interface SpecialToken {
  readonly id: number
  readonly content: string
  /** transformers' `special` flag: special tokens are dropped by `decode(..., skip_special_tokens=True)`. */
  readonly special: boolean
}

const tokens = (contents: ReadonlyArray<string>, special: (id: number) => boolean): ReadonlyArray<SpecialToken> =>
  contents.map((content, id) => ({ id, content, special: special(id) }))

/** MiniMind's added tokens 0–35. 0–20 are special (control + reserved multimodal), 21–35 plain added tokens. */
export const MINIMIND_SPECIAL_TOKENS: ReadonlyArray<SpecialToken> = tokens(
  [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    // 3–20: reserved for multimodal and speech models
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<tts_pad>",
    "<tts_text_bos>",
    "<tts_text_eod>",
    "<tts_text_bos_single>",
    // 21–26: tool use and reasoning markers
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    // 27–35: spare slots for later use
    ...Array.from({ length: 9 }, (_, i) => `<|buffer${i + 1}|>`)
  ],
  (id) => id <= 20
)

export const V1_SPECIAL_TOKENS: ReadonlyArray<SpecialToken> = tokens(["<unk>", "<s>", "</s>"], () => true)

/**
 * ChatML with a think block in every assistant turn. Variables: messages, tools, add_generation_prompt and
 * open_thinking (MiniMind's name for "start the reply inside an open <think>").
 * Written for both Jinja2 (transformers) and @huggingface/jinja; strip('\n') needs chat-template.ts' renderer in JS.
 */
export const MINIMIND_CHAT_TEMPLATE = String.raw`{#- bunmind ChatML template; output matches MiniMind's published template. -#}
{%- set first_is_system = messages[0].role == 'system' %}
{%- if tools or first_is_system %}
    {{- '<|im_start|>system\n' }}
    {%- if first_is_system %}
        {{- messages[0].content }}
        {%- if tools %}
            {{- '\n\n' }}
        {%- endif %}
    {%- endif %}
    {%- if tools %}
        {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
        {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
        {%- for tool in tools %}
            {{- '\n' }}
            {{- tool | tojson }}
        {%- endfor %}
        {{- '\n</tools>\n\n' }}
        {{- 'For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n' }}
        {{- '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' }}
    {%- endif %}
    {{- '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- set text = message.content if message.content is string else '' %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + text + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- if message.reasoning_content is string %}
            {%- set thought = message.reasoning_content %}
        {%- elif '</think>' in text %}
            {#- reasoning written inline as <think>...</think> before the answer -#}
            {%- set thought = text.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set text = text.split('</think>')[-1].lstrip('\n') %}
        {%- else %}
            {%- set thought = '' %}
        {%- endif %}
        {{- '<|im_start|>assistant\n<think>\n' + thought.strip('\n') + '\n</think>\n\n' + text.lstrip('\n') }}
        {%- if message.tool_calls %}
            {%- for call in message.tool_calls %}
                {%- if text or not loop.first %}
                    {{- '\n' }}
                {%- endif %}
                {%- set fn = call.function if call.function else call %}
                {{- '<tool_call>\n{"name": "' }}
                {{- fn.name }}
                {{- '", "arguments": ' }}
                {%- if fn.arguments is string %}
                    {{- fn.arguments }}
                {%- else %}
                    {{- fn.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {#- a run of tool results shares one user turn -#}
        {%- if loop.first or loop.previtem.role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + text + '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n<think>\n' }}
    {%- if not (open_thinking is defined and open_thinking is true) %}
        {{- '\n</think>\n\n' }}
    {%- endif %}
{%- endif %}`

/**
 * The seed's v1 scheme: every turn is `<s>{role}\n{content}</s>\n`; the generation prompt is `<s>assistant\n`.
 * v1 has no tool or think tokens, so tools, tool calls and tool turns are refused; reasoning_content is not rendered.
 */
export const V1_CHAT_TEMPLATE = String.raw`{#- bunmind v1 template: <s>role\ncontent</s>\n turns. -#}
{%- if tools %}
    {{- raise_exception('the v1 chat template has no tool tokens; use the minimind scheme for tools') }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('the v1 chat template knows the roles system, user and assistant, not ' + message.role) }}
    {%- endif %}
    {%- if message.tool_calls %}
        {{- raise_exception('the v1 chat template has no tool tokens; use the minimind scheme for tool calls') }}
    {%- endif %}
    {{- '<s>' + message.role + '\n' }}
    {%- if message.content is string %}
        {{- message.content }}
    {%- endif %}
    {{- '</s>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<s>assistant\n' }}
{%- endif %}`

export interface SchemeSpec {
  readonly name: TokenizerScheme
  readonly specialTokens: ReadonlyArray<SpecialToken>
  readonly bosToken: string
  readonly eosToken: string
  readonly padToken: string
  readonly unkToken: string
  readonly chatTemplate: string
}

export const SCHEMES: Readonly<Record<TokenizerScheme, SchemeSpec>> = {
  minimind: {
    name: "minimind",
    specialTokens: MINIMIND_SPECIAL_TOKENS,
    bosToken: "<|im_start|>",
    eosToken: "<|im_end|>",
    padToken: "<|endoftext|>",
    unkToken: "<|endoftext|>",
    chatTemplate: MINIMIND_CHAT_TEMPLATE
  },
  v1: {
    name: "v1",
    specialTokens: V1_SPECIAL_TOKENS,
    bosToken: "<s>",
    eosToken: "</s>",
    // Pretraining pads with id 0, which is <unk> in v1 (the seed left pad_token unset and padded with 0).
    padToken: "<unk>",
    unkToken: "<unk>",
    chatTemplate: V1_CHAT_TEMPLATE
  }
}

export interface TokenizerConfigOptions {
  /** transformers' `model_max_length` (truncation limit); MiniMind publishes 131072. */
  readonly modelMaxLength?: number
}

/**
 * The `tokenizer_config.json` bunmind writes beside a trained `tokenizer.json`. For "minimind" it has the same
 * fields and values as MiniMind's published file, with our chat template.
 */
export function tokenizerConfigFor(scheme: TokenizerScheme, opts: TokenizerConfigOptions = {}): Record<string, unknown> {
  const spec = SCHEMES[scheme]
  if (spec === undefined) throw new Error(`unknown tokenizer scheme "${String(scheme)}"; expected "minimind" or "v1"`)
  const addedTokensDecoder = Object.fromEntries(
    spec.specialTokens.map((t) => [
      String(t.id),
      { content: t.content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: t.special }
    ])
  )
  // MiniMind lists every special token but pad/unk (the ChatML markers and reserved multimodal tokens); the seed's
  // v1 config listed none, its three tokens all being named ones.
  const additional =
    scheme === "minimind"
      ? spec.specialTokens.filter((t) => t.special && t.content !== spec.padToken && t.content !== spec.unkToken).map((t) => t.content)
      : []
  const multimodal =
    scheme === "minimind"
      ? {
          image_token: "<|image_pad|>",
          audio_token: "<|audio_pad|>",
          video_token: "<|video_pad|>",
          vision_bos_token: "<|vision_start|>",
          vision_eos_token: "<|vision_end|>",
          audio_bos_token: "<|audio_start|>",
          audio_eos_token: "<|audio_end|>"
        }
      : {}
  return {
    add_bos_token: false,
    add_eos_token: false,
    add_prefix_space: false,
    added_tokens_decoder: addedTokensDecoder,
    additional_special_tokens: additional,
    bos_token: spec.bosToken,
    clean_up_tokenization_spaces: false,
    eos_token: spec.eosToken,
    legacy: true,
    model_max_length: opts.modelMaxLength ?? 131072,
    pad_token: spec.padToken,
    sp_model_kwargs: {},
    spaces_between_special_tokens: false,
    unk_token: spec.unkToken,
    ...multimodal,
    chat_template: spec.chatTemplate,
    tokenizer_class: "PreTrainedTokenizerFast"
  }
}
