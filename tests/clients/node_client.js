#!/usr/bin/env node
// Node `mongodb` driver client for the integration tests.
//
// usage: node node_client.js SCENARIO URI [--ca CA_FILE] (--token JWT | --token-file FILE | --scram USER:PASS)
//                            [--db DB] [--coll NAME]
//
// `mongodb` is resolved from $MOP_TOOLS/npm/node_modules (or NODE_PATH).
// MONGODB-OIDC uses the machine flow: an OIDC_CALLBACK returning the token (a
// --token-file is re-read on every call). --scram USER:PASS uses SCRAM-SHA-256
// with authSource=admin, to check the scenarios against a backend directly.
// Prints one JSON line; on error {"error", "code", "type"} and exit code 1.
//
// scenarios:
//   ping  -> {ok, callbacks}
//   crud  insert 3 docs, find them, connectionStatus -> {inserted, found, users, roles, callbacks}
'use strict';
const { loadDriver, readOptions } = require('./common');

function parseArgs(argv) {
  const [scenario, uri, ...rest] = argv;
  const a = { scenario, uri, db: 'app' };
  readOptions(rest, a);
  if (!['ping', 'crud'].includes(scenario) || !uri) {
    throw new Error('usage: node_client.js ping|crud URI [--ca F] (--token T | --token-file F | --scram U:P)');
  }
  if (!a.token && !a.tokenFile && !a.scram) throw new Error('one of --token, --token-file, --scram is required');
  return a;
}

let callbacks = 0;

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const { MongoClient } = loadDriver();
  const fs = require('fs');
  const opts = { serverSelectionTimeoutMS: 10000, connectTimeoutMS: 10000 };
  if (a.ca) Object.assign(opts, { tls: true, tlsCAFile: a.ca });
  if (a.scram) {
    const i = a.scram.indexOf(':');
    Object.assign(opts, {
      auth: { username: a.scram.slice(0, i), password: a.scram.slice(i + 1) },
      authSource: 'admin',
      authMechanism: 'SCRAM-SHA-256',
    });
  } else {
    Object.assign(opts, {
      authMechanism: 'MONGODB-OIDC',
      authMechanismProperties: {
        OIDC_CALLBACK: async () => {
          callbacks += 1;
          const jwt = a.tokenFile ? fs.readFileSync(a.tokenFile, 'utf8').trim() : a.token;
          return { accessToken: jwt, expiresInSeconds: 3600 };
        },
      },
    });
  }
  const client = new MongoClient(a.uri, opts);
  const out = {};
  try {
    await client.connect();
    if (a.scenario === 'ping') {
      out.ok = (await client.db('admin').command({ ping: 1 })).ok;
    } else {
      const coll = client.db(a.db).collection(a.coll || 'node_' + Math.random().toString(16).slice(2, 10));
      await coll.deleteMany({});
      const res = await coll.insertMany([{ i: 0 }, { i: 1 }, { i: 2 }]);
      out.inserted = res.insertedCount;
      out.found = (await coll.find({}).sort({ i: 1 }).toArray()).length;
      const st = await client.db('admin').command({ connectionStatus: 1 });
      out.users = st.authInfo.authenticatedUsers;
      out.roles = st.authInfo.authenticatedUserRoles;
    }
    out.callbacks = callbacks;
    console.log(JSON.stringify(out));
  } finally {
    await client.close();
  }
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e && e.message || e), code: e && e.code !== undefined ? e.code : null,
    type: e && e.constructor ? e.constructor.name : typeof e, callbacks }));
  process.exit(1);
});
