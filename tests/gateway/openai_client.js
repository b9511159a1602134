#!/usr/bin/env node
// The official OpenAI client (npm `openai` v4, installed by tools/install-deps.sh into
// .cache/npm; run with NODE_PATH=<source>/.cache/npm/node_modules) against a kvpr gateway:
// completions and chat completions, plain and streamed, n = 2, stop strings, max_tokens ending in
// finish_reason "length", usage counts, logprobs, and an error reply. The checks hold for any
// model under greedy decoding (the text a stop string is taken from is generated first), so the
// same script runs against the test-only fake server and against real workers.
//
//   node openai_client.js BASE_URL MODEL     (or OPENAI_BASE_URL / KVPR_MODEL; BASE_URL without /v1)
// Exits 0 when every check passed, else 1 with the failed check on stderr.
'use strict';

const assert = require('node:assert/strict');
const OpenAI = require('openai');

const base = process.argv[2] || process.env.OPENAI_BASE_URL;
const model = process.argv[3] || process.env.KVPR_MODEL;
if (!base || !model) {
  console.error('usage: node openai_client.js BASE_URL MODEL');
  process.exit(2);
}
const client = new OpenAI({
  baseURL: base.replace(/\/+$/, '') + '/v1',
  apiKey: process.env.OPENAI_API_KEY || 'none',
  maxRetries: 0,
  timeout: 60000,
});
const greedy = { model, temperature: 0 };
const prompt = 'The quick brown fox';
const messages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Name a colour.' },
];

function checkUsage(usage, maxCompletion) {
  assert.ok(usage, 'usage is present');
  assert.ok(usage.prompt_tokens > 0, 'prompt_tokens > 0');
  assert.ok(usage.completion_tokens > 0 && usage.completion_tokens <= maxCompletion,
            `completion_tokens ${usage.completion_tokens} in [1, ${maxCompletion}]`);
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens, 'total_tokens');
}

async function collect(stream, textOf) {
  const texts = {};
  const finish = {};
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      texts[choice.index] = (texts[choice.index] || '') + (textOf(choice) || '');
      if (choice.finish_reason) finish[choice.index] = choice.finish_reason;
    }
  }
  return { texts, finish, usage };
}

const checks = {
  async completion() {
    const r = await client.completions.create({ ...greedy, prompt, max_tokens: 16 });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.choices.length, 1);
    assert.equal(typeof r.choices[0].text, 'string');
    assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
    checkUsage(r.usage, 16);
    return r.choices[0].text;
  },
  async completionStream(plain) {
    const stream = await client.completions.create({
      ...greedy, prompt, max_tokens: 16, stream: true, stream_options: { include_usage: true },
    });
    const { texts, finish, usage } = await collect(stream, (c) => c.text);
    assert.equal(texts[0], plain, 'streamed text equals the plain reply (greedy)');
    assert.ok(finish[0], 'a finish_reason');
    checkUsage(usage, 16);
  },
  async chat() {
    const r = await client.chat.completions.create({ ...greedy, messages, max_tokens: 12 });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.choices[0].message.role, 'assistant');
    assert.equal(typeof r.choices[0].message.content, 'string');
    checkUsage(r.usage, 12);
    return r.choices[0].message.content;
  },
  async chatStream(plain) {
    const stream = await client.chat.completions.create({
      ...greedy, messages, max_tokens: 12, stream: true, stream_options: { include_usage: true },
    });
    const { texts, finish, usage } = await collect(stream, (c) => c.delta && c.delta.content);
    assert.equal(texts[0], plain, 'streamed chat equals the plain reply (greedy)');
    assert.ok(finish[0]);
    checkUsage(usage, 12);
  },
  async twoChoices() {
    const r = await client.completions.create({ ...greedy, prompt, max_tokens: 4, n: 2 });
    assert.deepEqual(r.choices.map((c) => c.index).sort(), [0, 1]);
    checkUsage(r.usage, 8);
    const c = await client.chat.completions.create({ ...greedy, messages, max_tokens: 4, n: 2 });
    assert.equal(c.choices.length, 2);
  },
  async stopString(plain) {
    if (plain.length < 4) return console.log('  (text too short for a stop string: skipped)');
    const at = Math.floor(plain.length / 2);
    const stop = plain.slice(at, at + 3);
    const r = await client.completions.create({ ...greedy, prompt, max_tokens: 16, stop: [stop] });
    assert.equal(r.choices[0].text, plain.slice(0, plain.indexOf(stop)), `cut before ${JSON.stringify(stop)}`);
    assert.equal(r.choices[0].finish_reason, 'stop');
    const s = await client.completions.create({
      ...greedy, prompt, max_tokens: 16, stop, stream: true,
    });
    const { texts, finish } = await collect(s, (c) => c.text);
    assert.equal(texts[0], plain.slice(0, plain.indexOf(stop)));
    assert.equal(finish[0], 'stop');
  },
  async lengthLimit() {
    const r = await client.completions.create({ ...greedy, prompt, max_tokens: 2 });
    if (r.usage.completion_tokens === 2) assert.equal(r.choices[0].finish_reason, 'length');
    checkUsage(r.usage, 2);
  },
  async logprobs() {
    const r = await client.completions.create({ ...greedy, prompt, max_tokens: 3, logprobs: 2 });
    const lp = r.choices[0].logprobs;
    assert.equal(lp.tokens.length, r.usage.completion_tokens);
    assert.equal(lp.token_logprobs.length, lp.tokens.length);
    assert.equal(lp.text_offset.length, lp.tokens.length);
    assert.ok(lp.token_logprobs.every((x) => typeof x === 'number' && x <= 0));
    assert.ok(lp.top_logprobs.every((t) => typeof t === 'object' && Object.keys(t).length <= 2));
    const c = await client.chat.completions.create({
      ...greedy, messages, max_tokens: 3, logprobs: true, top_logprobs: 2,
    });
    const content = c.choices[0].logprobs.content;
    assert.equal(content.length, c.usage.completion_tokens);
    for (const e of content) {
      assert.equal(typeof e.token, 'string');
      assert.ok(e.logprob <= 0);
      assert.ok(Array.isArray(e.bytes));
      assert.equal(e.top_logprobs.length, 2);
    }
  },
  // echo with logprobs scores the prompt (as lm-eval-harness asks for a loglikelihood): every
  // prompt token but the first has a log-probability, the generated ones follow, and offsets
  // point into the returned text; the stream repeats no entry.
  async echoScoresThePrompt() {
    const ask = { ...greedy, prompt, max_tokens: 2, logprobs: 1, echo: true };
    const r = await client.completions.create(ask);
    const text = r.choices[0].text;
    const lp = r.choices[0].logprobs;
    const p = r.usage.prompt_tokens;
    assert.ok(text.startsWith(prompt), `the text starts with the prompt: ${JSON.stringify(text)}`);
    assert.equal(lp.tokens.length, p + r.usage.completion_tokens);
    assert.equal(lp.token_logprobs[0], null, 'nothing predicts the first prompt token');
    assert.equal(lp.top_logprobs[0], null);
    for (let i = 1; i < lp.tokens.length; ++i) {
      assert.ok(typeof lp.token_logprobs[i] === 'number' && lp.token_logprobs[i] <= 0,
                `token ${i} has a log-probability: ${lp.token_logprobs[i]}`);
      assert.ok(typeof lp.top_logprobs[i] === 'object' && Object.keys(lp.top_logprobs[i]).length >= 1);
    }
    for (let i = 1; i < lp.text_offset.length; ++i) {
      assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1], `offsets never go back (${i})`);
    }
    assert.equal(lp.text_offset[p], prompt.length, 'the first generated token follows the prompt');
    const streamed = await client.completions.create({ ...ask, stream: true });
    let entries = 0;
    for await (const chunk of streamed) {
      for (const c of chunk.choices) entries += c.logprobs ? c.logprobs.token_logprobs.length : 0;
    }
    assert.equal(entries, lp.tokens.length, 'the stream lists each token once');
  },
  async badRequest() {
    await assert.rejects(
      client.completions.create({ ...greedy, prompt, temperature: 7 }),
      (e) => e.status === 400 && e.param === 'temperature' && /temperature/.test(e.message));
    await assert.rejects(client.completions.create({ model: 'no-such-model', prompt }),
                         (e) => e.status === 404 && e.code === 'model_not_found');
  },
  async models() {
    const list = await client.models.list();
    assert.ok(list.data.some((m) => m.id === model), 'the served model is listed');
  },
};

(async () => {
  let step = '';
  try {
    step = 'completion';
    const text = await checks.completion();
    for (step of ['completionStream', 'stopString']) await checks[step](text);
    step = 'chat';
    const reply = await checks.chat();
    step = 'chatStream';
    await checks.chatStream(reply);
    for (step of ['twoChoices', 'lengthLimit', 'logprobs', 'echoScoresThePrompt', 'badRequest',
                  'models']) {
      await checks[step]();
    }
  } catch (e) {
    console.error(`FAIL ${step}: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  }
  console.log('PASS: openai client checks');
})();
