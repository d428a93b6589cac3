'use strict';
/*
 * Drives a safefs gateway through the public API of the npm package safe-js 0.3.3, the way the
 * 2016 SAFE apps did, and prints one JSON object of observations on stdout for
 * tests/test_safejs.py to check.
 *
 * Usage: node drive.js [BASE_URL]
 *
 * safe-js hard-codes http://localhost:8100/0.5/. When BASE_URL is given (e.g.
 * http://127.0.0.1:40123/0.5/) the exported SERVER constant of safe-js/dist/utils.js is replaced
 * before the other safe-js modules read it; nothing under node_modules is modified.
 *
 * Each section (auth, immutable, symmetric, structured, appendable, privateInbox) runs on its
 * own: a failure is recorded as {"error", "trace"} in that section and the others still run.
 * The trace lists every HTTP request the section made with its status, so a failure names the
 * exact call.
 */

const crypto = require('crypto');
const path = require('path');

// -- request trace: wrap node-fetch before isomorphic-fetch (and so safe-js) loads it --------
const nodeFetchPath = require.resolve('node-fetch',
  { paths: [path.dirname(require.resolve('isomorphic-fetch'))] });
const realFetch = require(nodeFetchPath);
let trace = [];
let lastStatus = null;
function tracedFetch(url, options) {
  const method = (options && options.method) || 'GET';
  return realFetch(url, options).then((response) => {
    lastStatus = response.status;
    trace.push(`${method} ${url} -> ${response.status}`);
    return response;
  }, (error) => {
    trace.push(`${method} ${url} -> ${error.message}`);
    throw error;
  });
}
Object.assign(tracedFetch, realFetch);
require.cache[nodeFetchPath].exports = tracedFetch;

if (process.argv[2]) {
  require('safe-js/dist/utils').SERVER = process.argv[2];
}
const safe = require('safe-js');
const { SERVER } = require('safe-js/dist/utils');

const APPROVED_APP = {
  name: 'safe-js client', id: 'tests.safejs', version: '0.3.3', vendor: 'safefs tests',
  permissions: ['LOW_LEVEL_API'],
};
// tests/test_safejs.py rejects authorisation requests from this app.
const REJECTED_APP = { ...APPROVED_APP, name: 'safe-js rejected client' };

const sha256 = (buffer) => crypto.createHash('sha256').update(buffer).digest('hex');
const b64 = (buffer) => Buffer.from(buffer).toString('base64');

/** The HTTP status of a call that is expected to fail (safe-js hides it in its errors). */
async function failureStatus(promise) {
  try {
    await promise;
    return 200;
  } catch (rejection) {
    // parseResponse rejects with the Response itself for 401/404, an Error otherwise.
    return typeof rejection.status === 'number' ? rejection.status : lastStatus;
  }
}

/** The outcome of a call that the launcher accepted: {ok, value} or {ok: false, status}. */
async function attempt(promise, convert) {
  try {
    return { ok: true, value: convert(await promise) };
  } catch (rejection) {
    return { ok: false, status: typeof rejection.status === 'number' ? rejection.status : lastStatus };
  }
}

async function auth() {
  const granted = await safe.auth.authorise(APPROVED_APP);
  const token = granted.token;
  let rejectedBody = null;
  const rejectedStatus = await failureStatus(safe.auth.authorise(REJECTED_APP).catch(
    async (response) => { rejectedBody = await response.text(); throw response; }));
  return {
    token,
    result: {
      permissions: granted.permissions,
      tokenValid: await safe.auth.isTokenValid(token),
      forgedTokenValid: await safe.auth.isTokenValid(token.slice(0, -4) + 'AAAA'),
      rejected: { status: rejectedStatus, body: rejectedBody },
    },
  };
}

async function writeImmutable(token, parts, encType, encryptKey) {
  const writer = (await safe.immutableData.getWriterHandle(token)).handleId;
  for (const part of parts) {
    await safe.immutableData.write(token, writer, part);
  }
  const cipher = (await safe.cipherOpts.getHandle(token, encType, encryptKey)).handleId;
  const dataId = (await safe.immutableData.closeWriter(token, writer, cipher)).handleId;
  await safe.immutableData.dropWriter(token, writer);
  await safe.cipherOpts.dropHandle(token, cipher);
  return dataId;
}

async function readImmutable(token, dataId) {
  const reader = await safe.immutableData.getReaderHandle(token, dataId);
  const content = await safe.immutableData.read(token, reader.handleId);
  await safe.immutableData.dropReader(token, reader.handleId);
  return { size: reader.size, content };
}

async function immutable(token) {
  // Several self-encryption chunks, written in two appends.
  const parts = [crypto.randomBytes(200 * 1024), crypto.randomBytes(100 * 1024 + 7)];
  const content = Buffer.concat(parts);
  const dataId = await writeImmutable(token, parts, 'PLAIN');
  const read = await readImmutable(token, dataId);
  const serialised = await safe.dataId.serialise(token, dataId);
  // PLAIN data is public: a serialised data id is all an anonymous reader needs.
  const anonymousId = (await safe.dataId.deserialise(null, serialised)).handleId;
  const anonymous = await readImmutable(null, anonymousId);
  await safe.dataId.dropHandle(null, anonymousId);
  await safe.dataId.dropHandle(token, dataId);
  return {
    size: content.length,
    sha256: sha256(content),
    readerSize: read.size,
    readSha256: sha256(read.content),
    anonymousReadSha256: sha256(anonymous.content),
    dataId: b64(serialised),
  };
}

async function symmetric(token) {
  const content = Buffer.from('only the app that wrote this can read it');
  const dataId = await writeImmutable(token, [content], 'SYMMETRIC');
  const read = await readImmutable(token, dataId);
  const serialised = await safe.dataId.serialise(token, dataId);
  const anonymousId = (await safe.dataId.deserialise(null, serialised)).handleId;
  return {
    matches: read.content.equals(content),
    anonymousReaderStatus: await failureStatus(
      safe.immutableData.getReaderHandle(null, anonymousId)),
  };
}

async function structured(token) {
  const name = 'safe-js structured ' + crypto.randomBytes(8).toString('hex');
  const versions = ['{"comment":"first"}', '{"comment":"second, edited"}'];
  const plain = (await safe.cipherOpts.getHandle(token, 'PLAIN')).handleId;
  const handle = (await safe.structuredData.create(
    token, name, 501, b64(versions[0]), plain)).handleId;
  await safe.structuredData.put(token, handle);
  const afterPut = await safe.structuredData.getMetadata(token, handle);
  await safe.structuredData.updateData(token, handle, b64(versions[1]), plain);
  await safe.structuredData.post(token, handle);
  const afterPost = await safe.structuredData.getMetadata(token, handle);
  const sizeValid = await safe.structuredData.isSizeValid(token, handle);
  const dataId = (await safe.structuredData.getDataIdHandle(token, handle)).handleId;
  await safe.structuredData.dropHandle(token, handle);

  // A fresh handle from the data id sees what was stored.
  const fetched = await safe.structuredData.getHandle(token, dataId);
  const readVersions = [];
  for (let version = 0; version < fetched.dataVersionLength; version++) {
    readVersions.push((await safe.structuredData.readData(token, fetched.handleId, version))
      .toString());
  }
  // How the apps read "the latest": no version (…/undefined) or an empty one (…/:h/).
  const text = (buffer) => buffer.toString();
  const latestWithoutVersion = await attempt(
    safe.structuredData.readData(token, fetched.handleId), text);
  const latestWithEmptyVersion = await attempt(
    safe.structuredData.readData(token, fetched.handleId, ''), text);
  const serialised = await safe.structuredData.serialise(token, fetched.handleId);
  const deserialised = await safe.structuredData.deserialise(token, serialised);
  await safe.structuredData.dropHandle(token, deserialised.handleId);
  await safe.structuredData.dropHandle(token, fetched.handleId);
  const serialisedId = await safe.dataId.serialise(token, dataId);
  await safe.dataId.dropHandle(token, dataId);
  await safe.cipherOpts.dropHandle(token, plain);
  return {
    nameSha256: sha256(name),
    written: versions,
    afterPut,
    afterPost,
    sizeValid,
    fetched: { isOwner: fetched.isOwner, version: fetched.version,
               dataVersionLength: fetched.dataVersionLength },
    readVersions,
    latestWithoutVersion,
    latestWithEmptyVersion,
    deserialised: { isOwner: deserialised.isOwner, version: deserialised.version },
    dataId: b64(serialisedId),
  };
}

async function appendable(token) {
  const name = 'safe-js inbox ' + crypto.randomBytes(8).toString('hex');
  const handle = (await safe.appendableData.create(token, name, false)).handleId;
  await safe.appendableData.put(token, handle);
  const appended = [];
  for (const message of ['hello', 'world']) {
    const dataId = await writeImmutable(token, [Buffer.from(message)], 'PLAIN');
    await safe.appendableData.append(token, handle, dataId);
    appended.push(b64(await safe.dataId.serialise(token, dataId)));
    await safe.dataId.dropHandle(token, dataId);
  }
  const adDataId = (await safe.appendableData.getDataIdHandle(token, handle)).handleId;
  await safe.appendableData.dropHandle(token, handle);

  // Handles are snapshots: fetch again to see the appended entries.
  const fetched = await safe.appendableData.getHandle(token, adDataId);
  const metadata = await safe.appendableData.getMetadata(token, fetched.handleId);
  const entries = [];
  for (let index = 0; index < fetched.dataLength; index++) {
    const dataId = (await safe.appendableData.getDataIdAt(token, fetched.handleId, index))
      .handleId;
    const serialised = await safe.dataId.serialise(token, dataId);
    const content = await readImmutable(token, dataId);
    entries.push({ dataId: b64(serialised), content: content.content.toString() });
    await safe.dataId.dropHandle(token, dataId);
  }
  const signKey = (await safe.appendableData.getSignKeyAt(token, fetched.handleId, 0)).handleId;
  const appenderKey = b64(await safe.signKey.serialise(token, signKey));
  await safe.signKey.dropHandle(token, signKey);

  // The owner removes the first entry and publishes the change.
  await safe.appendableData.removeAt(token, fetched.handleId, 0);
  await safe.appendableData.post(token, fetched.handleId);
  await safe.appendableData.dropHandle(token, fetched.handleId);
  const afterRemove = await safe.appendableData.getHandle(token, adDataId);
  await safe.appendableData.dropHandle(token, afterRemove.handleId);
  await safe.dataId.dropHandle(token, adDataId);
  return {
    appended,
    fetched: { isOwner: fetched.isOwner, version: fetched.version,
               filterType: fetched.filterType, dataLength: fetched.dataLength,
               deletedDataLength: fetched.deletedDataLength },
    metadata,
    entries,
    appenderKey,
    afterRemove: { version: afterRemove.version, dataLength: afterRemove.dataLength,
                   deletedDataLength: afterRemove.deletedDataLength },
  };
}

/** The SAFE Mail flow: a message sealed to a private inbox's key, appended, read by the owner. */
async function privateInbox(token) {
  const name = 'safe-js private inbox ' + crypto.randomBytes(8).toString('hex');
  const message = 'sealed to the inbox owner ' + crypto.randomBytes(4).toString('hex');
  const handle = (await safe.appendableData.create(token, name, true)).handleId;
  await safe.appendableData.put(token, handle);
  const encryptKey = (await safe.appendableData.getEncryptKey(token, handle)).handleId;
  const dataId = await writeImmutable(token, [Buffer.from(message)], 'ASYMMETRIC', encryptKey);
  await safe.appendableData.dropEncryptKeyHandle(token, encryptKey);
  await safe.appendableData.append(token, handle, dataId);
  await safe.dataId.dropHandle(token, dataId);
  const inboxId = (await safe.appendableData.getDataIdHandle(token, handle)).handleId;
  await safe.appendableData.dropHandle(token, handle);

  const fetched = await safe.appendableData.getHandle(token, inboxId);
  const entryId = (await safe.appendableData.getDataIdAt(token, fetched.handleId, 0)).handleId;
  const read = await readImmutable(token, entryId);
  await safe.dataId.dropHandle(token, entryId);
  await safe.appendableData.dropHandle(token, fetched.handleId);
  await safe.dataId.dropHandle(token, inboxId);
  return { dataLength: fetched.dataLength, written: message, read: read.content.toString() };
}

async function section(run) {
  trace = [];
  try {
    return await run();
  } catch (error) {
    const message = error instanceof Error ? error.message : `HTTP ${error.status}`;
    return { error: message, trace };
  }
}

async function main() {
  const results = { server: SERVER };
  const granted = await section(auth);
  results.auth = granted.result || granted;
  const token = granted.token;
  if (token) {
    results.immutable = await section(() => immutable(token));
    results.symmetric = await section(() => symmetric(token));
    results.structured = await section(() => structured(token));
    results.appendable = await section(() => appendable(token));
    results.privateInbox = await section(() => privateInbox(token));
  }
  process.stdout.write(JSON.stringify(results) + '\n');
}

main();
