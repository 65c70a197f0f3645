// verinfer status page, the receipt check: a pasted receipt (v2, or v1) checked in the browser
// as verifier/ checks it (WebCrypto Ed25519 and SHA-256; EIP-712 with the vendored @noble
// libraries, loaded only then; docs/formats.md "Receipt v2"), never asking the server for a
// verdict. An ES module with no build step: status.js imports checkReceiptText, Invalid and CannotCheck.

// ---------------------------------------------------------------- bytes and hashes
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

function b64decode(s, what) {
  if (typeof s !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) {
    throw new Invalid(`${what} is not standard base64`);
  }
  const bin = atob(s);
  // one spelling, as the Python verifier: "QR==" decodes to the byte of "QQ==" (unused bits set)
  if (btoa(bin) !== s) throw new Invalid(`${what} is not base64 in its one spelling`);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const sha256 = async (...parts) => new Uint8Array(await crypto.subtle.digest("SHA-256", concat(...parts)));

// ---------------------------------------------------------------- the receipt check
export class Invalid extends Error {}
export class CannotCheck extends Error {}  // this browser or the key fetch, not the receipt

function parseNoteKey(vkey) {
  const a = vkey.indexOf("+"), b = vkey.indexOf("+", a + 1);  // base64 may hold "+" too
  if (a < 0 || b < 0) throw new Invalid(`not a note verifier key: ${vkey}`);
  const [origin, keyHex, keyB64] = [vkey.slice(0, a), vkey.slice(a + 1, b), vkey.slice(b + 1)];
  return { origin, keyHex, raw: b64decode(keyB64, "note key") };
}

// Ed25519 points of small order, x sign bit cleared (verifier/keys.py): under one, anyone can
// make signatures that verify (R = identity, S = 0 under the identity), and WebCrypto may not
// refuse them
const SMALL_ORDER = new Set([
  "0100000000000000000000000000000000000000000000000000000000000000",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "0000000000000000000000000000000000000000000000000000000000000000",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
]);

function checkEd25519Key(raw, what) {
  if (raw.length !== 32) throw new Invalid(`${what} is not a 32-byte Ed25519 key`);
  const y = raw.slice();
  y[31] &= 0x7f;
  if (y[31] === 0x7f && y.subarray(1, 31).every((b) => b === 0xff) && y[0] >= 0xed) {
    throw new Invalid(`${what} is not canonically encoded (y >= p)`);
  }
  if (SMALL_ORDER.has(hex(y))) throw new Invalid(`${what} is a point of small order (anyone can sign for it)`);
}

async function checkNoteKey(k) {
  const id = (await sha256(enc.encode(k.origin + "\n"), k.raw)).slice(0, 4);
  if (k.raw.length !== 33 || k.raw[0] !== 1 || hex(id) !== k.keyHex) {
    throw new Invalid("not an Ed25519 note verifier key");
  }
  checkEd25519Key(k.raw.slice(1), `note key ${k.origin}+${k.keyHex}`);
  k.id = id;
  return k;
}

// what Python's str.isspace() takes (JavaScript's \s lacks U+0085 and adds U+FEFF)
const PY_SPACE = /[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;

// The checkpoint: "<origin>\n<size>\n<base64 root>\n" + "\n" + "— <name> <base64(key id || sig)>\n" lines.
// C2SP signed-note, read as verifier/tlog.py reads it (its signature lines are anyone's to add:
// a note another verifier refuses must not be VALID here).
async function checkCheckpoint(note, keys, steps) {
  if (typeof note !== "string") throw new Invalid("the receipt has no checkpoint");
  if (/[\x00-\x09\x0b-\x1f]|\p{Cs}/u.test(note)) throw new Invalid("the checkpoint holds control characters or is not UTF-8");
  const cut = note.lastIndexOf("\n\n");
  if (cut < 0 || !note.endsWith("\n")) throw new Invalid("the checkpoint is not a signed note");
  const body = note.slice(0, cut) + "\n";
  const lines = body.split("\n");  // origin, size, root, extension lines (none empty), ""
  if (lines.length < 4 || !lines[0] || !/^[1-9][0-9]*$/.test(lines[1]) || lines.slice(3, -1).includes("")) {
    throw new Invalid("the checkpoint body is malformed");
  }
  const origin = lines[0];
  const usable = keys.filter((k) => k.origin === origin);
  if (!usable.length) throw new Invalid(`checkpoint of another log: "${origin}"`);
  const signers = [];
  const sigLines = note.slice(cut + 2, -1).split("\n");
  if (sigLines.length > 100) throw new Invalid("the checkpoint has more than 100 signatures");
  for (const line of sigLines) {
    if (!line.startsWith("\u2014 ")) throw new Invalid("malformed signature line in the checkpoint");
    const at = line.indexOf(" ", 2);
    const name = at < 0 ? line.slice(2) : line.slice(2, at);
    const sig = b64decode(at < 0 ? "" : line.slice(at + 1), "checkpoint signature");
    if (!name || name.includes("+") || PY_SPACE.test(name) || sig.length < 5) {
      throw new Invalid("malformed signature line in the checkpoint");
    }
    for (const k of usable) {
      if (name !== k.origin || !equal(sig.slice(0, 4), k.id)) continue;
      if (signers.includes(k)) throw new Invalid("the checkpoint holds two signatures by one key");
      if (sig.length !== 68) throw new Invalid("the checkpoint's Ed25519 signature does not verify");
      const pub = await crypto.subtle.importKey("raw", k.raw.slice(1), { name: "Ed25519" }, false, ["verify"]);
      if (!(await crypto.subtle.verify({ name: "Ed25519" }, pub, sig.slice(4), enc.encode(body)))) {
        throw new Invalid("the checkpoint's Ed25519 signature does not verify");
      }
      signers.push(k);
    }
  }
  if (!signers.length) throw new Invalid("the checkpoint is not signed by a published note key");
  const root = b64decode(lines[2], "checkpoint root");
  if (root.length !== 32) throw new Invalid("the checkpoint root is not a SHA-256 hash");
  steps.push(`checkpoint signed (Ed25519) by ${signers.map((k) => `${origin}+${k.keyHex}`).join(", ")}: tree of ${lines[1]} leaves`);
  return { origin, size: Number(lines[1]), root, signers };
}

// RFC 9162 2.1.3.2: the root that `proof` leads to from leaf `index` of a tree of `size`.
async function walkInclusion(index, size, leaf, proof) {
  if (!Number.isSafeInteger(index) || index < 0) throw new Invalid("the receipt's index is not a leaf index");
  if (!Array.isArray(proof)) throw new Invalid("the receipt's proof is not a list");
  let fn = index, sn = size - 1, h = leaf;
  if (fn > sn) throw new Invalid("the index is outside the signed tree");
  for (const [i, p64] of proof.entries()) {
    const p = b64decode(p64, `proof hash ${i}`);
    if (p.length !== 32) throw new Invalid(`proof hash ${i} is not 32 bytes`);
    if (sn === 0) throw new Invalid("the inclusion proof is too long");
    if (fn % 2 === 1 || fn === sn) {
      h = await sha256(Uint8Array.of(1), p, h);
      while (fn !== 0 && fn % 2 === 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      h = await sha256(Uint8Array.of(1), h, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new Invalid("the inclusion proof is too short");
  return h;
}

const WIDTH = { BOOL: 1, UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, UINT32: 4, INT32: 4, FP32: 4, UINT64: 8, INT64: 8, FP64: 8 };
// the range of each integer datatype: a double past it has no one cast (numpy's is the C one, UB)
const INT_RANGE = {
  UINT8: [0, 2 ** 8], INT8: [-(2 ** 7), 2 ** 7], UINT16: [0, 2 ** 16], INT16: [-(2 ** 15), 2 ** 15],
  UINT32: [0, 2 ** 32], INT32: [-(2 ** 31), 2 ** 31], UINT64: [0, 2 ** 64], INT64: [-(2 ** 63), 2 ** 63],
};

// numpy.asarray(data)'s elements, row-major, and its shape; null where numpy refuses (ragged)
function ndarray(v) {
  if (!Array.isArray(v)) return { shape: [], flat: [v] };
  const parts = v.map(ndarray);
  if (parts.some((p) => p === null || p.shape.join() !== parts[0].shape.join())) return null;
  return { shape: [v.length, ...(parts.length ? parts[0].shape : [])], flat: parts.flatMap((p) => p.flat) };
}

// An output's elements and shape (`o` has passed checkSchema) as verifier/tensors.py's
// list_digest hashes them (struct.pack, else numpy's cast of np.asarray(data)): nested lists as
// numpy reads them, true as 1, null as NaN (false in BOOL), an integer datatype wrapping integers
// and truncating doubles; null where the Python verifier refuses the data (a datatype it has no
// digest for: FP16, BYTES, ...). A JSON number is a Python int when integral and under 2^53
// (canonical_value makes the others doubles). `numpyOnly`: a v1 statement's outputs, which
// verifier/receipts.py hashes through numpy alone.
function castElements(o, numpyOnly) {
  const arr = ndarray(o.data);
  if (!WIDTH[o.datatype] || !arr || arr.flat.length !== o.shape.reduce((a, b) => a * b, 1)) return null;
  const kinds = new Set(arr.flat.map((x) => (typeof x === "boolean" ? "bool" : x === null ? "null"
    : typeof x !== "number" ? "other" : Number.isSafeInteger(x) ? "int" : "float")));
  if (kinds.has("other")) throw new Invalid(`output ${o.name}: data holds an element that is not a number, a boolean or null (not checked here: use verinfer verify)`);
  // A v1 statement is not RFC 8785: its JSON may spell an integer past 2^53 exactly, which the
  // Python verifier reads as that integer and JSON.parse rounds to a double (2^53 + 1 as 2^53),
  // so the two digests differ: here it cannot be decided, so never VALID.
  const inexact = numpyOnly ? arr.flat.find((x) => Number.isInteger(x) && !Number.isSafeInteger(x)) : undefined;
  if (inexact !== undefined) {
    throw new Invalid(`output ${o.name}: ${inexact} is an integer past 2^53, which this page does not read exactly (check it with verinfer verify)`);
  }
  const range = INT_RANGE[o.datatype];
  if (range && kinds.has("null")) return null;  // int(None)
  const viaNumpy = numpyOnly || o.datatype === "BOOL" || arr.shape.length !== 1 || kinds.has("bool") || kinds.has("null")
    || (range && (kinds.has("float") || !arr.flat.length || arr.flat.some((x) => x < range[0] || x >= range[1])));
  // numpy's path (not struct's) allows 64 dimensions at most
  if (viaNumpy && o.shape.length > 64) return null;
  const shape = o.shape;
  const asNumber = (x) => (x === null ? NaN : Number(x));
  if (o.datatype === "BOOL") return { shape, data: arr.flat.map((x) => (x ? 1 : 0)) };
  if (!range || !kinds.has("float")) return { shape, data: arr.flat.map(asNumber) };  // (DataView wraps as numpy does)
  return { shape, data: arr.flat.map((x) => {
    const t = Math.trunc(Number(x));
    if (t < range[0] || t >= range[1]) {
      throw new Invalid(`output ${o.name}: ${x} has no one cast to ${o.datatype} (the Python verifier's is numpy's, the platform's)`);
    }
    return t;
  }) };
}

// docs/formats.md "Tensor digest": SHA-256 of the domain, datatype, shape and little-endian data.
async function tensorDigest(datatype, shape, data) {
  const w = WIDTH[datatype];
  const head = new DataView(new ArrayBuffer(4 + 8 * shape.length));
  head.setUint32(0, shape.length, true);
  shape.forEach((d, i) => head.setBigUint64(4 + 8 * i, BigInt(d), true));
  const body = new DataView(new ArrayBuffer(w * data.length));
  data.forEach((x, i) => {
    const at = i * w;
    switch (datatype) {
      case "FP32": body.setFloat32(at, x, true); break;
      case "FP64": body.setFloat64(at, x, true); break;
      case "INT64": body.setBigInt64(at, BigInt(x), true); break;  // (modulo 2^64, as numpy's wrap)
      case "UINT64": body.setBigUint64(at, BigInt(x), true); break;
      case "INT32": body.setInt32(at, x, true); break;
      case "UINT32": body.setUint32(at, x, true); break;
      case "INT16": body.setInt16(at, x, true); break;
      case "UINT16": body.setUint16(at, x, true); break;
      case "INT8": body.setInt8(at, x); break;
      default: body.setUint8(at, x);  // BOOL (0 or 1), UINT8
    }
  });
  return hex(await sha256(enc.encode("verinfer.tensor.v1\0" + datatype + "\0"),
    new Uint8Array(head.buffer), new Uint8Array(body.buffer)));
}

// ---------------------------------------------------------------- the statement's rules
// A logged (or signed) statement as verifier/receipts_v2.py's StatementV2 and verifier/receipts.py's
// Statement (pydantic: strict types where they are strict, extra fields forbidden) take it: the
// one place that lists them. The log's key can sign anything (a buggy or a malicious server, whom
// the page's user does not trust): a statement the Python verifier refuses must not be VALID here.
const fail = (at, why) => { throw new Invalid(`${at}: ${why}`); };
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

const str = (v, at) => { if (typeof v !== "string") fail(at, "not a string"); };
const pattern = (re, what) => (v, at) => { str(v, at); if (!re.test(v)) fail(at, `not ${what}`); };
// a strict int (not true, not 3.0): past 2^53 a number is a double to the Python verifier too
const int = (lo, hi) => (v, at) => {
  if (!Number.isSafeInteger(v) || v < lo || v > hi) fail(at, `not an integer from ${lo} to ${hi}`);
};
const literal = (x) => (v, at) => { if (v !== x) fail(at, `not ${JSON.stringify(x)}`); };
const nullable = (rule) => (v, at) => { if (v !== null) rule(v, at); };
const anything = () => {};
const list = (rule) => (v, at) => {
  if (!Array.isArray(v)) fail(at, "not a list");
  v.forEach((x, i) => rule(x, `${at}.${i}`));
};
const either = (a, b) => (v, at) => { try { a(v, at); } catch { b(v, at); } };
const dictOf = (rule) => (v, at) => {
  if (!isObject(v)) fail(at, "not an object");
  for (const [k, x] of Object.entries(v)) rule(x, `${at}.${k}`);
};
// a field that may be absent (pydantic's default); `alsoAs`: its Python name, taken instead
const optional = (rule, alsoAs) => ({ rule, optional: true, alsoAs });
// an object with these fields and no other (a field spelt both ways is one too many)
const object = (fields) => (v, at) => {
  if (!isObject(v)) fail(at, "not an object");
  const seen = new Set();
  for (const [name, spec] of Object.entries(fields)) {
    const { rule, optional: mayLack, alsoAs } = typeof spec === "function" ? { rule: spec } : spec;
    const key = [name, alsoAs].find((k) => k !== undefined && Object.hasOwn(v, k));
    if (key === undefined) {
      if (!mayLack) fail(`${at}.${name}`, "missing");
      continue;
    }
    seen.add(key);
    rule(v[key], `${at}.${key}`);
  }
  const extra = Object.keys(v).find((k) => !seen.has(k));
  if (extra !== undefined) fail(`${at}.${extra}`, "not a field of a verinfer statement");
};

const COUNT = int(0, Number.MAX_SAFE_INTEGER);  // verifier/base.py's Count
const MAX_SCALE = 1000;  // verifier/manifest.py
const HEX32 = pattern(/^0x[0-9a-f]{64}$/, "0x and 64 lower-case hex digits");
const SHA256 = pattern(/^[0-9a-f]{64}$/, "64 lower-case hex digits");
const ADDRESS = pattern(/^0x[0-9a-fA-F]{40}$/, "an address (0x and 40 hex digits)");
// verifier/base.py's Rfc3339; \d there is any Unicode decimal digit, as \p{Nd} here
const RFC3339 = pattern(/^\p{Nd}{4}-\p{Nd}{2}-\p{Nd}{2}T\p{Nd}{2}:\p{Nd}{2}:\p{Nd}{2}(\.\p{Nd}{1,9})?(Z|[+-]\p{Nd}{2}:\p{Nd}{2})$/u,
  "an RFC 3339 time");
const TENSOR = { name: str, datatype: str, shape: list(COUNT), digest: SHA256 };

const statementRules = (version) => object({
  _type: optional(literal("https://in-toto.io/Statement/v1"), "type_"),
  subject: list(object({ name: str, digest: dictOf(SHA256) })),
  predicateType: optional(literal(`https://verinfer.dev/receipt/${version}`)),
  predicate: object({
    requestId: HEX32,
    clientRequestId: optional(nullable(str)),
    model: object({ name: str, version: str, sha256: SHA256 }),
    input: object({ ...TENSOR, scale: int(-MAX_SCALE, MAX_SCALE), commitment: HEX32 }),
    outputs: list(object({ ...TENSOR, data: list(anything) })),
    label: either(COUNT, list(COUNT)),
    time: RFC3339,
    device: str,
    ...(version === "v1" ? { keyId: str } : {
      eip712: optional(nullable(object({
        signer: ADDRESS,
        domain: object({ name: optional(str), version: optional(str), chainId: COUNT, verifyingContract: ADDRESS }),
      }))),
    }),
  }),
});
const STATEMENT_RULES = { v1: statementRules("v1"), v2: statementRules("v2") };

function checkSchema(statement, version) {
  try {
    STATEMENT_RULES[version](statement, "statement");
  } catch (e) {
    throw new Invalid(`the ${version === "v2" ? "logged" : "signed"} statement is not a verinfer ${version} statement: ${e.message}`);
  }
}

// The statement's checks after its signature (verifier/receipts_v2.py's verify_receipt_v2, v1's
// verify_receipt): its rules above, the receipt id, the subjects (the predicate's digests, in
// order: model, input, outputs) and each output's digest recomputed from its data.
// (`statement` has passed checkSchema.)
async function checkStatement(receipt, statement, version, steps) {
  const p = statement.predicate;
  if (p.requestId !== receipt.id) throw new Invalid("the receipt id is not the signed request id");
  steps.push(`receipt id = the statement's requestId (${receipt.id.slice(0, 18)}…)`);
  const want = [[`model/${p.model.name}`, p.model.sha256], [`input/${p.input.name}`, p.input.digest],
    ...p.outputs.map((o) => [`output/${o.name}`, o.digest])];
  const subjects = statement.subject;
  if (subjects.length !== want.length || subjects.some((s, i) => s.name !== want[i][0]
      || Object.keys(s.digest).length !== 1 || s.digest.sha256 !== want[i][1])) {
    throw new Invalid("the statement's subjects are not its model, input and output digests");
  }
  for (const o of p.outputs) {
    const cast = castElements(o, version === "v1");
    if (cast === null) throw new Invalid(`output ${o.name}: data does not fit its shape/datatype`);
    if (await tensorDigest(o.datatype, cast.shape, cast.data) !== o.digest) {
      throw new Invalid(`output ${o.name}: its data does not hash to its digest`);
    }
  }
  steps.push(`subjects match the model, input and output digests; ${p.outputs.length} output digest(s) recomputed from the data`);
  steps.push(`model ${p.model.name} v${p.model.version} (sha256 ${p.model.sha256.slice(0, 16)}…), answered ${p.time}, label ${JSON.stringify(p.label)}`);
}

// When an RFC 3339 time is, in microseconds since 1970 (a BigInt), as Python's
// datetime.fromisoformat reads it (verifier/keys.py: no offset is UTC); null where it is no
// time (a month 13, an hour 24, digits not ASCII), which the Python verifier takes as revoked
const ISO_TIME = /^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(?:Z|([+-])([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?)?$/;

function instant(text) {
  const m = ISO_TIME.exec(String(text));
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number);
  const leap = y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1];
  if (y < 1 || !days || d < 1 || d > days || h > 23 || mi > 59 || s > 59) return null;
  const off = m[8] ? (m[8] === "-" ? -1 : 1) * (Number(m[9]) * 3600 + Number(m[10]) * 60 + Number(m[11] || 0)) : 0;
  if (Math.abs(off) >= 86400) return null;
  const date = new Date(0);
  date.setUTCFullYear(y, mo - 1, d);  // (Date.UTC reads years 0-99 as 1900-1999)
  return (BigInt(date.getTime() / 1000) + BigInt(h * 3600 + mi * 60 + s - off)) * 1000000n
    + BigInt((m[7] || "").padEnd(6, "0").slice(0, 6));
}

// A key revoked at `at` vouches for nothing signed at or after it (verifier/keys.py's
// check_jwk_not_revoked, to the microsecond): unless both times read, it vouches for nothing
function checkNotRevoked(time, at, what) {
  const t = instant(time), r = instant(at);
  if (t === null || r === null || t >= r) throw new Invalid(`${what} at ${time}, when its key was revoked (${at})`);
}

const FORMATS = ["verinfer.receipt/v2", "verinfer.receipt/v1"];

// The source text of member `key` of a JSON object's text (the last, as JSON.parse keeps)
function memberText(text, key) {
  let depth = 0, name = null, start = -1, found;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      const from = i;
      for (i++; text[i] !== '"'; i++) if (text[i] === "\\") i++;
      if (depth === 1 && start < 0) name = JSON.parse(text.slice(from, i + 1));
    } else if (c === ":" && depth === 1) {
      start = i + 1;
    } else if ((c === "," || c === "}") && depth === 1) {
      if (name === key) found = text.slice(start, i).trim();
      start = -1;
    }
    if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") depth--;
  }
  return found;
}

// The pasted receipt, and the whole answer it came in (null when only the receipt was pasted).
function receiptFromText(text) {
  let obj, answer = null;
  try { obj = JSON.parse(text); } catch { throw new Invalid("not JSON"); }
  if (obj && typeof obj.parameters?.receipt === "string") {  // a whole answer
    if (Object.hasOwn(obj, "outputs")) answer = obj;
    text = obj.parameters.receipt;
    obj = JSON.parse(text);
  }
  if (!obj || typeof obj !== "object") throw new Invalid("not a receipt object");
  if (!FORMATS.includes(obj.format)) throw new Invalid(`format ${JSON.stringify(obj.format)}: not a verinfer receipt`);
  if (typeof obj.id !== "string" || !/^0x[0-9a-f]{64}$/.test(obj.id)) throw new Invalid("the receipt id is malformed");
  // JSON.parse reads 8.0 as 8; the Python verifier's index is a strict int
  if (obj.format === "verinfer.receipt/v2" && Object.hasOwn(obj, "index") && !/^-?(0|[1-9][0-9]*)$/.test(memberText(text, "index"))) {
    throw new Invalid("the receipt's index is not a JSON integer");
  }
  return { receipt: obj, answer };
}

// verifier/responses.py's check_response: the whole answer is the one the verified statement
// attests (its model, ids and label, and each output's datatype, shape and data digest), so an
// answer changed beside an intact receipt is invalid. (JSON.parse keeps the last of a key held
// twice, as Python does: the answer checked is the one this browser reads.)
async function checkAnswer(answer, statement, steps) {
  const p = statement.predicate, params = answer.parameters;
  const same = (field, got, want, what) => {
    if (typeof got !== typeof want || JSON.stringify(got) !== JSON.stringify(want)) {  // true is not 1
      throw new Invalid(`the answer's ${field} is ${JSON.stringify(got)}; the receipt attests ${what} ${JSON.stringify(want)}`);
    }
  };
  same("model_name", answer.model_name, p.model.name, "model");
  if (Object.hasOwn(answer, "model_version")) same("model_version", answer.model_version, p.model.version, "model version");
  if (Object.hasOwn(params, "receipt_id")) same("parameters.receipt_id", params.receipt_id, p.requestId, "request id");
  if (Object.hasOwn(answer, "id")) same("id", answer.id, p.clientRequestId, "client request id");
  if (Object.hasOwn(params, "label")) same("parameters.label", params.label, p.label, "label");
  const outputs = answer.outputs;
  if (!Array.isArray(outputs) || !outputs.length || outputs.some((o) => !o || typeof o !== "object" || Array.isArray(o))) {
    throw new CannotCheck("the answer's outputs are not a list of tensors");
  }
  const attested = new Map(p.outputs.map((o) => [o.name, o]));
  const seen = new Set();
  for (const o of outputs) {
    const want = attested.get(o.name);
    if (typeof o.name !== "string" || !want) throw new Invalid(`the answer holds output ${JSON.stringify(o.name)}, which the receipt does not attest`);
    if (seen.has(o.name)) throw new Invalid(`the answer holds output ${JSON.stringify(o.name)} twice`);
    seen.add(o.name);
    const shape = o.shape;
    if (o.datatype !== want.datatype || !Array.isArray(shape) || shape.some((d) => !Number.isSafeInteger(d))
        || JSON.stringify(shape) !== JSON.stringify(want.shape)) {
      throw new Invalid(`output ${JSON.stringify(o.name)} in the answer is ${o.datatype} ${JSON.stringify(shape)}; the receipt attests ${want.datatype} ${JSON.stringify(want.shape)}`);
    }
    if (!Object.hasOwn(o, "data")) throw new CannotCheck(`output ${JSON.stringify(o.name)} came as binary data, which the pasted answer does not hold`);
    // as the Python check hashes it: numpy's reading of the data, at the attested datatype
    const cast = castElements({ name: o.name, datatype: want.datatype, shape: want.shape, data: o.data }, true);
    if (cast === null || await tensorDigest(want.datatype, cast.shape, cast.data) !== want.digest) {
      throw new Invalid(`output ${JSON.stringify(o.name)} in the answer is not the output the receipt attests`);
    }
  }
  steps.push(`the answer is the attested one: model, ids, label and ${outputs.length} output(s) (datatype, shape, data digest)`);
}

// RFC 8785 (JCS): keys sorted by UTF-16 code units (sort()'s order), ECMAScript's number and
// string forms (JSON.stringify's), no whitespace. Its strings are I-JSON's: a lone surrogate
// ("\ud800", which JSON.stringify writes back as it came) has no form, as in the Python verifier
function jcs(v) {
  if (Array.isArray(v)) return `[${v.map(jcs).join(",")}]`;
  if (v !== null && typeof v === "object") {
    return `{${Object.keys(v).sort().map((k) => `${jcs(k)}:${jcs(v[k])}`).join(",")}}`;
  }
  if (typeof v === "string" && /\p{Cs}/u.test(v)) throw new Invalid("the logged statement is not canonical JSON (RFC 8785): a string holds a lone surrogate");
  return JSON.stringify(v);
}

const V2_FIELDS = ["format", "id", "statement", "index", "proof", "checkpoint", "eip712"];

// Throws Invalid (or another Error) unless `receipt` (v2) is logged under one of `noteKeys`.
// `revoked`: note key -> the time it was revoked (verinfer-log.json); a key revoked at or
// before the statement's time does not vouch for it, as v1's JWKS check below.
async function verifyReceiptV2(receipt, noteKeys, steps, revoked = {}) {
  const extra = Object.keys(receipt).filter((k) => !V2_FIELDS.includes(k));
  if (extra.length) throw new Invalid(`the receipt holds a field a v2 receipt has not: ${JSON.stringify(extra[0])}`);
  const keys = [];
  for (const vkey of noteKeys) keys.push({ ...(await checkNoteKey(parseNoteKey(vkey))), vkey });
  const cp = await checkCheckpoint(receipt.checkpoint, keys, steps);
  const data = b64decode(receipt.statement, "statement");
  const root = await walkInclusion(receipt.index, cp.size, await sha256(Uint8Array.of(0), data), receipt.proof);
  if (!equal(root, cp.root)) throw new Invalid("the statement is not in the signed tree (inclusion proof does not lead to the checkpoint root)");
  steps.push(`statement (${data.length} bytes) is leaf ${receipt.index}: inclusion proof of ${receipt.proof.length} hash(es) leads to the signed root`);
  let statement;
  try { statement = JSON.parse(dec.decode(data)); } catch { throw new Invalid("the logged statement is not JSON"); }
  // its own RFC 8785 form, as the Python verifier requires: no duplicate key (JSON.parse keeps
  // the last, other parsers the first), no whitespace, no other spelling of a number
  if (!equal(enc.encode(jcs(statement)), data)) {
    throw new Invalid("the logged statement is not canonical JSON (RFC 8785)");
  }
  checkSchema(statement, "v2");
  for (const k of cp.signers) {
    if (Object.hasOwn(revoked, k.vkey)) checkNotRevoked(statement.predicate.time, revoked[k.vkey], "logged");
  }
  await checkStatement(receipt, statement, "v2", steps);
  return statement;
}

// ---------------------------------------------------------------- EIP-712 (secp256k1)

// verifier/eip712.py's verify_eip712 and verifier/receipts_v2.py's checks around it: the
// signature recovers to the signer, that signer and domain are the ones the logged statement
// names (so the log vouches for them), and the message signs the statement's model, input,
// request and label. secp256k1 and keccak are @noble's, served by this server
// (/static/vendor/, VENDORED in server/http/status.py) and loaded only for such a receipt.
const SECP256K1_N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
const UINT = int(0, Number.MAX_SAFE_INTEGER);  // (a label or deadline past 2^53 is no answer of ours)
const ATTESTATION = object({
  domain: object({ name: optional(str), version: optional(str), chainId: UINT, verifyingContract: ADDRESS }),
  message: object({ modelId: HEX32, inputCommitment: HEX32, label: UINT, requestId: HEX32, deadline: UINT }),
  signer: ADDRESS,
  signature: pattern(/^0x[0-9a-f]{130}$/, "0x and 130 lower-case hex digits"),
});
const fromHex = (h) => Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
const word = (n) => fromHex(BigInt(n).toString(16).padStart(64, "0"));
const sameDomain = (a, b) => ["name", "version", "chainId", "verifyingContract"].every((k) => a[k] === b[k]);
const withDefaults = (d) => ({ name: "verinfer", version: "1", ...d });

// `version`: "v2" (the statement names the signer and domain: they must be these) or "v1" (a
// statement before the log names none: the signature is checked against the signer it gives,
// as verifier/receipts.py's verify_receipt does without trusted signers)
async function verifyEip712(att, p, version, steps) {
  try { ATTESTATION(att, "eip712"); } catch (e) { throw new Invalid(`the receipt's EIP-712 part: ${e.message}`); }
  const domain = withDefaults(att.domain);
  if (version === "v2") {
    if (!p.eip712) throw new Invalid("the receipt carries an EIP-712 signature its statement does not name");
    if (att.signer.toLowerCase() !== p.eip712.signer.toLowerCase() || !sameDomain(domain, withDefaults(p.eip712.domain))) {
      throw new Invalid("the EIP-712 signature is by another signer or domain than the statement names");
    }
  }
  const [{ recoverPublicKey }, { keccak_256: keccak }] = await Promise.all([
    import("/static/vendor/noble-secp256k1.js"), import("/static/vendor/noble-hashes/sha3.js")]);
  const typehash = (t) => keccak(enc.encode(t));
  const separator = keccak(concat(
    typehash("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
    keccak(enc.encode(domain.name)), keccak(enc.encode(domain.version)), word(domain.chainId),
    word(domain.verifyingContract)));
  const m = att.message;
  const struct = keccak(concat(
    typehash("Classification(bytes32 modelId,bytes32 inputCommitment,uint256 label,bytes32 requestId,uint256 deadline)"),
    fromHex(m.modelId.slice(2)), fromHex(m.inputCommitment.slice(2)), word(m.label), fromHex(m.requestId.slice(2)),
    word(m.deadline)));
  const digest = keccak(concat(Uint8Array.of(0x19, 0x01), separator, struct));
  const sig = fromHex(att.signature.slice(2));
  const r = BigInt(`0x${hex(sig.subarray(0, 32))}`), s = BigInt(`0x${hex(sig.subarray(32, 64))}`);
  if (sig[64] !== 27 && sig[64] !== 28) throw new Invalid("the EIP-712 signature's v is not 27 or 28");
  if (!(r > 0n && r < SECP256K1_N && s > 0n && s < SECP256K1_N)) throw new Invalid("the EIP-712 signature does not recover: r or s out of range");
  // (r, n - s) is the same signer's twin: the oracle refuses it (EIP-2)
  if (s > SECP256K1_N / 2n) throw new Invalid("the EIP-712 signature has a high s (not canonical: a contract refuses it)");
  let pub;
  try {
    pub = recoverPublicKey(concat(Uint8Array.of(sig[64] - 27), sig.subarray(0, 64)), digest,
      { prehash: false, isCompressed: false });
  } catch (e) {
    throw new Invalid(`the EIP-712 signature does not recover: ${e.message}`);
  }
  const got = `0x${hex(keccak(pub.subarray(1)).subarray(12))}`;
  if (got !== att.signer.toLowerCase()) throw new Invalid(`the EIP-712 signature recovers to ${got}, not ${att.signer}`);
  if (m.modelId.slice(2) !== p.model.sha256 || m.inputCommitment !== p.input.commitment) {
    throw new Invalid("the EIP-712 message signs another model or input than the statement");
  }
  if (m.requestId !== p.requestId || m.label !== p.label) {
    throw new Invalid("the EIP-712 message signs another request or label than the statement");
  }
  const whose = version === "v2" ? "the signer the logged statement names"
    : "the signer it gives (a v1 statement names none: compare it with /v1/keys)";
  steps.push(`EIP-712 signature (secp256k1) recovers to ${att.signer}, ${whose}, `
    + `over its model, input commitment, label ${m.label} and request (chain ${domain.chainId}, deadline ${m.deadline})`);
}

// a v1 receipt's wrapper, as verifier/receipts.py's models read it: no field they lack
const V1_FIELDS = { receipt: ["format", "id", "envelope", "eip712"], envelope: ["payloadType", "payload", "signatures"],
  signature: ["keyid", "sig"] };
const onlyFields = (v, what) => {
  const extra = isObject(v) ? Object.keys(v).find((k) => !V1_FIELDS[what].includes(k)) : "(not an object)";
  if (extra !== undefined) throw new Invalid(`the receipt's ${what} holds a field a v1 ${what} has not: ${JSON.stringify(extra)}`);
};

// v1 (before the log): a DSSE envelope signed with Ed25519 by a key of the JWK Set
// (docs/formats.md "Receipt"). Throws Invalid unless every signature verifies.
async function verifyReceiptV1(receipt, jwks, steps) {
  onlyFields(receipt, "receipt");
  const env = receipt.envelope;
  onlyFields(env, "envelope");
  if (Array.isArray(env.signatures)) env.signatures.forEach((sig) => onlyFields(sig, "signature"));
  const type = "application/vnd.in-toto+json";
  if (env.payloadType !== type) throw new Invalid("unexpected DSSE payloadType");
  if (!Array.isArray(env.signatures) || !env.signatures.length) throw new Invalid("the envelope has no signatures");
  const payload = b64decode(env.payload, "payload");
  const pae = concat(enc.encode(`DSSEv1 ${type.length} ${type} ${payload.length} `), payload);
  const signers = new Map();
  for (const s of env.signatures) {
    const jwk = (jwks.keys || []).find((k) => k.kid === s.keyid && k.kty === "OKP" && k.crv === "Ed25519");
    if (!jwk) throw new Invalid(`signed by ${s.keyid}, a key not in the server's JWKS`);
    const x = String(jwk.x).replace(/-/g, "+").replace(/_/g, "/");
    checkEd25519Key(b64decode(x + "=".repeat((4 - (x.length % 4)) % 4), `key ${s.keyid}`), `key ${s.keyid}`);
    const pub = await crypto.subtle.importKey("jwk", { kty: "OKP", crv: "Ed25519", x: jwk.x }, { name: "Ed25519" }, false, ["verify"]);
    if (!(await crypto.subtle.verify({ name: "Ed25519" }, pub, b64decode(s.sig, "signature"), pae))) {
      throw new Invalid(`the Ed25519 signature by ${s.keyid} does not verify`);
    }
    signers.set(s.keyid, jwk);
  }
  steps.push(`DSSE envelope signed (Ed25519) by ${[...signers.keys()].join(", ")}`);
  let statement;
  try { statement = JSON.parse(dec.decode(payload)); } catch { throw new Invalid("the signed payload is not JSON"); }
  checkSchema(statement, "v1");
  const p = statement.predicate;
  const jwk = signers.get(p.keyId);
  if (!jwk) throw new Invalid("the statement's keyId is not the key that signed it");
  if ("revoked_at" in jwk) checkNotRevoked(p.time, jwk.revoked_at, "signed");
  await checkStatement(receipt, statement, "v1", steps);
  return statement;
}

// ---------------------------------------------------------------- the whole check

// A pasted receipt (v2 or v1), or a whole infer response holding one, checked as the Python
// verifier checks it: its statement, else Invalid (the receipt) or CannotCheck (this browser,
// the keys). ``sources``: ``noteKeys`` (note verifier keys the user gave, or null), and
// ``jwks()`` and ``logKeys()``, which fetch the server's. Each check passed is pushed to ``steps``.
export async function checkReceiptText(text, sources, steps) {
  if (!globalThis.crypto?.subtle) {  // plain http to another host than localhost
    throw new CannotCheck("this browser offers no WebCrypto here: open the page over HTTPS or on localhost");
  }
  const { receipt, answer } = receiptFromText(text);
  let statement;
  if (receipt.format === "verinfer.receipt/v1") {
    if (sources.noteKeys) throw new CannotCheck("a v1 receipt is checked against the server's JWKS, not note keys");
    const jwks = await sources.jwks();
    steps.push(`v1 receipt; ${jwks.keys?.length || 0} key(s) from /.well-known/jwks.json`);
    statement = await verifyReceiptV1(receipt, jwks, steps);
  } else {
    const doc = sources.noteKeys ? { note_keys: sources.noteKeys } : await sources.logKeys();
    const noteKeys = doc.note_keys || [];
    steps.push(`${noteKeys.length} note key(s) ${sources.noteKeys ? "given" : "from /.well-known/verinfer-log.json"}`);
    statement = await verifyReceiptV2(receipt, noteKeys, steps, doc.revoked || {});
  }
  if (receipt.eip712 !== null && receipt.eip712 !== undefined) {
    await verifyEip712(receipt.eip712, statement.predicate, receipt.format === FORMATS[0] ? "v2" : "v1", steps);
  }
  if (answer) await checkAnswer(answer, statement, steps);
  if (answer && Object.hasOwn(answer.parameters, "proof_bundle")) {
    steps.push("its zero-knowledge proof (parameters.proof_bundle) is not checked here: use verinfer audit with the circuit package");
  }
  return statement;
}
