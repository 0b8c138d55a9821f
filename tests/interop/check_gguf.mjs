// Runs a GGUF file through real llama.cpp (node-llama-cpp's prebuilt CPU binary; never builds or downloads) and
// prints JSON for test_interop_gguf to compare against its own reference.
//
//   node check_gguf.mjs REQUEST.json
// REQUEST: {"model": "m.gguf", "lora": [{"filePath": "a.gguf", "scale": 1}] | [],
//           "prompts": [[token ids incl. BOS], ...], "n_predict": 8, "text": "string to tokenize"}
// OUTPUT:  {"greedy": [[ids], ...], "probs": [[p(token 0), ..., p(token V-1)] per prompt], "tokenize": [ids],
//           "n_vocab": V}
import fs from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const req = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({build: "never", gpu: false, logLevel: LlamaLogLevel.error, maxThreads: 2});
const model = await llama.loadModel({modelPath: req.model});
// F32 KV cache and no flash attention, so an F32 model is computed in F32 end to end.
const contextOptions = {contextSize: 256, sequences: 1, threads: 2, flashAttention: false,
  experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"};
if (req.lora && req.lora.length > 0) contextOptions.lora = {adapters: req.lora};
const context = await model.createContext(contextOptions);
const sequence = context.getSequence();
const nVocab = model.tokens.vocabSize ?? model.fileInfo?.metadata?.llama?.vocab_size;

const out = {greedy: [], probs: [], tokenize: [], n_vocab: nVocab};
for (const prompt of req.prompts) {
  // Full next-token distribution after the prompt (plain softmax: temperature 1, no truncation).
  await sequence.clearHistory();
  const items = prompt.map((t, i) => i === prompt.length - 1
    ? [t, {generateNext: {probabilities: true, options: {temperature: 1, topK: 0, topP: 1, minP: 0}}}]
    : t);
  const res = await sequence.controlledEvaluate(items);
  const probs = new Array(nVocab).fill(0);
  for (const [tok, p] of res[prompt.length - 1].next.probabilities) probs[tok] = p;
  out.probs.push(probs);

  // Greedy continuation.
  await sequence.clearHistory();
  const greedy = [];
  for await (const tok of sequence.evaluate(prompt, {temperature: 0})) {
    greedy.push(tok);
    if (greedy.length >= req.n_predict) break;
  }
  out.greedy.push(greedy);
}
if (req.text !== undefined) out.tokenize = Array.from(model.tokenize(req.text));
process.stdout.write(JSON.stringify(out) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
