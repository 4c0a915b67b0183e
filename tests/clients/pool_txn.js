#!/usr/bin/env node
// The Node driver's withTransaction through a small backend pool while
// other clients keep it busy (tests/pool.rs); pool_txn.py's twin.
//
// usage: node pool_txn.js URI --ca CA_FILE --token JWT --coll NAME [--busy N] [--txns N] [--db DB]
//
// N busy MongoClients (each a connection of its own to the proxy) run finds
// in a loop while --txns transactions each insert two documents, increment a
// counter and read their own write; one more transaction throws inside its
// callback and must leave nothing behind. Prints one JSON line:
// {committed, docs, counter, read_own_writes, aborted_visible, busy_finds, busy_errors};
// on an error {error, code, type} and exit code 1.
'use strict';
const { loadDriver, readOptions } = require('./common');

function parseArgs(argv) {
  const [uri, ...rest] = argv;
  const a = { uri, db: 'app', busy: '4', txns: '5' };
  readOptions(rest, a);
  if (!uri || !a.ca || !a.token || !a.coll) {
    throw new Error('usage: pool_txn.js URI --ca CA_FILE --token JWT --coll NAME [--busy N] [--txns N]');
  }
  return a;
}

class Abort extends Error {}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const { MongoClient } = loadDriver();
  const client = () => new MongoClient(a.uri, {
    tls: true,
    tlsCAFile: a.ca,
    authMechanism: 'MONGODB-OIDC',
    authMechanismProperties: {
      OIDC_CALLBACK: async () => ({ accessToken: a.token, expiresInSeconds: 3600 }),
    },
    serverSelectionTimeoutMS: 20000,
    maxPoolSize: 1,
  });
  const main = client();
  const coll = main.db(a.db).collection(a.coll);
  const busyClients = [];
  const finds = [];
  const busyErrors = [];
  let stop = false;
  try {
    await coll.insertOne({ _id: 'node-counter', n: 0 });
    for (let n = 0; n < Number(a.busy); n += 1) {
      const c = client();
      busyClients.push(c);
      // Signed in before the transactions start.
      await c.db(a.db).collection(a.coll).findOne({});
      finds.push(0);
    }
    const loops = busyClients.map(async (c, n) => {
      const bc = c.db(a.db).collection(a.coll);
      try {
        while (!stop) {
          await bc.find({}).limit(5).toArray();
          finds[n] += 1;
        }
      } catch (e) {
        busyErrors.push(`${e.name}: ${e.message} (code ${e.code})`);
      }
    });

    let readOwnWrites = 0;
    for (let t = 0; t < Number(a.txns); t += 1) {
      const session = main.startSession();
      try {
        const seen = await session.withTransaction(async () => {
          await coll.insertOne({ _id: `node-${t}-a`, t }, { session });
          await coll.insertOne({ _id: `node-${t}-b`, t }, { session });
          await coll.updateOne({ _id: 'node-counter' }, { $inc: { n: 1 } }, { session });
          return (await coll.findOne({ _id: `node-${t}-a` }, { session })) !== null;
        });
        if (seen) readOwnWrites += 1;
      } finally {
        await session.endSession();
      }
    }
    const session = main.startSession();
    try {
      await session.withTransaction(async () => {
        await coll.insertOne({ _id: 'node-aborted' }, { session });
        throw new Abort('abort on purpose');
      });
    } catch (e) {
      if (!(e instanceof Abort)) throw e;
    } finally {
      await session.endSession();
    }

    stop = true;
    await Promise.all(loops);
    const out = {
      committed: Number(a.txns),
      docs: await coll.countDocuments({ _id: { $regex: '^node-[0-9]' } }),
      counter: (await coll.findOne({ _id: 'node-counter' })).n,
      read_own_writes: readOwnWrites,
      aborted_visible: (await coll.findOne({ _id: 'node-aborted' })) !== null,
      busy_finds: finds,
      busy_errors: busyErrors.slice(0, 10),
    };
    console.log(JSON.stringify(out));
  } finally {
    stop = true;
    await Promise.all(busyClients.map((c) => c.close()));
    await main.close();
  }
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e && e.message || e), code: e && e.code !== undefined ? e.code : null,
    type: e && e.constructor ? e.constructor.name : typeof e }));
  process.exit(1);
});
