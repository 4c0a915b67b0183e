#!/usr/bin/env node
// A write/read loop through several proxies (all hosts in one URI, or one
// load balancer with loadBalanced=true), with the Node `mongodb` driver.
//
// usage: node failover.js URI --ca CA_FILE --token JWT --seconds N [--db DB]
//
// Inserts documents {_id: i, run: RUN} one at a time (retryWrites=true,
// retryReads=true) and reads each back, for N seconds, then counts what is
// found. Every error that reaches the loop is recorded. Prints one JSON line,
// as failover.py does:
// {"acknowledged": n, "found": n, "missing": [ids], "errors": [text], "reads": n}
'use strict';
const { loadDriver, readOptions } = require('./common');
const crypto = require('crypto');

function parseArgs(argv) {
  const [uri, ...rest] = argv;
  const a = { uri, db: 'app' };
  readOptions(rest, a);
  if (!uri || !a.ca || !a.token || !a.seconds) {
    throw new Error('usage: failover.js URI --ca CA_FILE --token JWT --seconds N [--db DB]');
  }
  return a;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const { MongoClient } = loadDriver();
  const loadBalanced = /[?&]loadBalanced=true/i.test(a.uri);
  const opts = {
    tls: true,
    tlsCAFile: a.ca,
    authMechanism: 'MONGODB-OIDC',
    authMechanismProperties: {
      OIDC_CALLBACK: async () => ({ accessToken: a.token, expiresInSeconds: 3600 }),
    },
    retryWrites: true,
    retryReads: true,
    serverSelectionTimeoutMS: 10000,
  };
  // Load-balanced clients do not monitor servers.
  if (!loadBalanced) opts.heartbeatFrequencyMS = 500;
  const client = new MongoClient(a.uri, opts);
  const run = crypto.randomBytes(16).toString('hex');
  const coll = client.db(a.db).collection('failover_node_' + run.slice(0, 8));
  const acknowledged = [];
  const errors = [];
  let reads = 0;
  const deadline = Date.now() + Number(a.seconds) * 1000;
  for (let i = 0; Date.now() < deadline; i += 1) {
    try {
      await coll.insertOne({ _id: i, run });
      acknowledged.push(i);
      if ((await coll.findOne({ _id: i })) !== null) reads += 1;
    } catch (e) {
      errors.push(`${e.name}: ${e.message} (code ${e.code})`);
    }
    await sleep(10);
  }
  let found = new Set();
  try {
    const docs = await coll.find({ run }, { projection: { _id: 1 } }).toArray();
    found = new Set(docs.map((d) => d._id));
  } catch (e) {
    errors.push(`final read: ${e.name}: ${e.message}`);
  }
  const missing = acknowledged.filter((x) => !found.has(x));
  console.log(JSON.stringify({
    acknowledged: acknowledged.length,
    found: found.size,
    missing: missing.slice(0, 20),
    errors: errors.slice(0, 20),
    reads,
  }));
  await client.close();
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e && e.message || e), code: e && e.code, type: e && e.name }));
  process.exit(1);
});
