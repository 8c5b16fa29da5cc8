// List models (charsdk/items.py): the record of the training items that an export of a one-item-per-line
// corpus writes beside the model, the sorted 64-bit BLAKE2b hashes of their lines, so that a generated item
// is told new or copied without the corpus (a new item is taken for a training one at most count / 2^64 of
// the time). BLAKE2b comes from @noble/hashes, imported when a record is first read.

import { CharsdkError } from "./vocab.js";

const HASH_BYTES = 8;

export class ItemRecord {
  constructor(hashes, blake2b) {
    this.hashes = hashes; // BigUint64Array, sorted
    this.blake2b = blake2b;
  }

  /** The record from its file's bytes, checked against the sha256 vocab.json records. */
  static async of(bytes, sha256, sha256Hex) {
    if ((await sha256Hex(bytes)) !== sha256) {
      throw new CharsdkError("the items record does not match the sha256 recorded in vocab.json: re-export the model");
    }
    const { blake2b } = await import("@noble/hashes/blake2.js");
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const hashes = BigUint64Array.from({ length: bytes.byteLength / 8 }, (_, i) => view.getBigUint64(8 * i, true));
    return new ItemRecord(hashes, blake2b);
  }

  /** Whether `item` is one of the training items. */
  has(item) {
    const digest = this.blake2b(new TextEncoder().encode(item), { dkLen: HASH_BYTES });
    const hash = new DataView(digest.buffer, digest.byteOffset, HASH_BYTES).getBigUint64(0, true);
    let low = 0, high = this.hashes.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (this.hashes[middle] < hash) low = middle + 1;
      else high = middle;
    }
    return low < this.hashes.length && this.hashes[low] === hash;
  }

  get falsePositiveRate() {
    return this.hashes.length / 2 ** 64;
  }
}
