// Web Crypto (SHA-256 and random numbers): the browser's, or Node's where it is not global (Node 18).
export const webcrypto = globalThis.crypto ?? (await import("node:crypto")).webcrypto;
