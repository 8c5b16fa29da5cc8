// The contract in the README, from JavaScript: read a seed and draw K characters in one call, compare
// the ids and the last read logits with what charsdk (Python) wrote beside the model.
async function check(ort, load, name) {
  const data = await load(name + ".json");
  const session = await ort.InferenceSession.create(await load(name + ".onnx", true));
  const T = data.ids.length, V = data.V, K = data.uniforms.length / V;
  const results = {};
  for (const [mode, window] of [["stateful", 0], ["window", data.maxlen]]) {
    const rows = window ? data.maxlen : 1;
    const feed = {
      ids: new ort.Tensor("int64", BigInt64Array.from(data.ids.map(BigInt)), [1, T]),
      logits: new ort.Tensor("float32", new Float32Array(V), [1, V]),
      uniforms: new ort.Tensor("float32", Float32Array.from(data.uniforms), [1, K, V]),
      temperature: new ort.Tensor("float32", Float32Array.from([0.5]), [1]),
      top_k: new ort.Tensor("int64", BigInt64Array.from([0n]), [1]),
      top_p: new ort.Tensor("float32", Float32Array.from([1]), [1]),
      use_filter: new ort.Tensor("bool", [false], []),
      window: new ort.Tensor("int64", BigInt64Array.from([BigInt(window)]), []),
      start: new ort.Tensor("int64", BigInt64Array.from([0n]), []),
    };
    for (const [input, size] of data.states) feed[input] = new ort.Tensor("float32", new Float32Array(rows * size), [rows, size]);
    const out = await session.run(feed);
    const t0 = Date.now();  // timed: the same call again (the first one also sets the session up)
    await session.run(feed);
    const ms = Date.now() - t0;
    const ids = Array.from(out.ids_out.data, Number);
    const expected = data.expected[mode];
    const same = ids.filter((x, i) => x === expected.ids_out[i]).length;
    const read = out.read_logits.data.slice((T - 1) * V, T * V);
    let diff = 0; for (let i = 0; i < V; i++) diff = Math.max(diff, Math.abs(read[i] - expected.read_last[i]));
    results[mode] = {same_ids: same, of: ids.length, first_mismatch: ids.findIndex((x, i) => x !== expected.ids_out[i]),
                     read_logits_max_abs_diff: diff, ms, chars_per_s: Math.round((T + K) / ms * 1000)};
  }
  return results;
}
if (typeof module !== "undefined") module.exports = check;
