// A NewFuse signer in plain Node.js (>= 18, standard library only): the reference for clients
// written in JavaScript, and proof that the documented canonical form is enough to sign a task
// an agent accepts (README, "Signing from other languages").
//
//   node sign.mjs vectors [tests/vectors/signing.json]   canonical bytes + signature per vector
//   node sign.mjs task --namespace NS --fleet F --key HEX [--key-type hmac|ed25519]
//                      --task-id ID --handler NAME [--input JSON] [--sender NAME]
//
// `task` prints one signed task envelope, ready to XADD as the `envelope` field of an entry on
// the fleet's task stream.
import { createHash, createHmac, createPrivateKey, createPublicKey, randomBytes, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const DOMAIN = "newfuse-sig-v1\n";
const DEFAULT_VECTORS = "../../../tests/vectors/signing.json";
// PKCS#8 wrapping of a raw 32-byte Ed25519 seed (RFC 8410): Node imports keys only in a container.
const ED25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

// RFC 8785 (JCS). JSON.stringify already formats numbers and escapes strings exactly as JCS
// requires (JCS borrowed both from ECMAScript); only the key order is left to do. Keys sort by
// UTF-16 code units, which is what JavaScript's default string comparison compares.
function jcs(value) {
  if (value === null || typeof value !== "object") {
    if (typeof value === "number" && !Number.isFinite(value)) throw new Error("JCS has no NaN/Infinity");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return "[" + value.map(jcs).join(",") + "]";
  const keys = Object.keys(value).sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + jcs(value[k])).join(",") + "}";
}

// In the envelope as sent, an integral number from 2^53 to 1e21 is written as digits, which a
// Python receiver parses as an integer and refuses (RFC 8785 allows integers within
// ±(2^53 - 1)): refuse it here, with a clear error, rather than as a dead letter.
function checkNumbers(value) {
  if (Number.isInteger(value) && !Number.isSafeInteger(value) && Math.abs(value) < 1e21) {
    throw new Error(`${value} is beyond ±(2^53 - 1): send it as a string`);
  }
  if (value !== null && typeof value === "object") Object.values(value).forEach(checkNumbers);
}

const b64url = (buf) => Buffer.from(buf).toString("base64url"); // unpadded
const sha256 = (data) => createHash("sha256").update(data).digest();

// The key's type decides the algorithm: a seed is an Ed25519 key, other bytes an HMAC key.
function makeKey(type, hex) {
  const raw = Buffer.from(hex, "hex");
  if (type === "hmac") {
    const kid = "hs-" + b64url(sha256(Buffer.concat([Buffer.from("newfuse-kid\n"), raw])).subarray(0, 12));
    return { kid, sign: (data) => b64url(createHmac("sha256", raw).update(data).digest()) };
  }
  if (type === "ed25519") {
    if (raw.length !== 32) throw new Error("an Ed25519 seed is 32 bytes");
    const der = Buffer.concat([ED25519_PKCS8_PREFIX, raw]);
    const privateKey = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
    // The raw public key is the last 32 bytes of its SPKI DER encoding.
    const spki = createPublicKey(privateKey).export({ format: "der", type: "spki" });
    const kid = "ed-" + b64url(sha256(spki.subarray(-32)).subarray(0, 12));
    return { kid, sign: (data) => b64url(sign(null, data, privateKey)) };
  }
  throw new Error(`unknown key type ${type} (hmac or ed25519)`);
}

// The signed bytes: every metadata field but the signature, null-valued fields left out.
function canonical(type, payload, metadata) {
  const unsigned = Object.fromEntries(
    Object.entries(metadata).filter(([k, v]) => k !== "signature" && v !== null && v !== undefined),
  );
  return Buffer.from(DOMAIN + jcs({ type, payload, metadata: unsigned }), "utf8");
}

function signed(type, payload, metadata, key) {
  const withKid = { ...metadata, kid: key.kid };
  const bytes = canonical(type, payload, withKid);
  return { bytes, envelope: { type, payload, metadata: { ...withKid, signature: key.sign(bytes) } } };
}

function vectors(path) {
  const file = JSON.parse(readFileSync(path, "utf8"));
  const keys = {
    hmac: makeKey("hmac", file.keys.hmac.key_hex),
    ed25519: makeKey("ed25519", file.keys.ed25519.seed_hex),
  };
  for (const v of file.vectors) {
    for (const [name, key] of Object.entries(keys)) {
      const { bytes, envelope } = signed(v.type, v.payload, v.metadata, key);
      const { signature } = envelope.metadata;
      const line = { name: v.name, key: name, kid: key.kid, canonical_hex: bytes.toString("hex"), signature };
      process.stdout.write(JSON.stringify(line) + "\n");
    }
  }
}

function task(argv) {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      namespace: { type: "string" }, fleet: { type: "string" }, key: { type: "string" },
      "key-type": { type: "string", default: "hmac" }, "task-id": { type: "string" },
      handler: { type: "string" }, input: { type: "string", default: "null" },
      sender: { type: "string", default: "node-signer" },
    },
  });
  for (const required of ["namespace", "fleet", "key", "task-id", "handler"]) {
    if (!o[required]) throw new Error(`--${required} is required`);
  }
  const payload = { task_id: o["task-id"], handler: o.handler, input: JSON.parse(o.input) };
  checkNumbers(payload);
  const metadata = {
    timestamp: new Date().toISOString(),
    sender: o.sender,
    protocol_version: "1.0",
    message_id: randomBytes(16).toString("hex"),
    namespace: o.namespace,
    fleet: o.fleet,
    channel: "tasks",
  };
  const { envelope } = signed("task", payload, metadata, makeKey(o["key-type"], o.key));
  process.stdout.write(JSON.stringify(envelope) + "\n");
}

const [mode, ...rest] = process.argv.slice(2);
try {
  if (mode === "vectors") vectors(rest[0] ?? new URL(DEFAULT_VECTORS, import.meta.url));
  else if (mode === "task") task(rest);
  else throw new Error("usage: sign.mjs vectors [FILE] | sign.mjs task --namespace NS --fleet F --key HEX ...");
} catch (error) {
  process.stderr.write(`${error.message}\n`);
  process.exit(2);
}
