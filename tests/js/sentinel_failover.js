// Writes through ioredis's Sentinel support (its defaults) to a DKV cluster
// across a failover, with a second ioredis connection to the Sentinel port
// subscribed to +switch-master. Phase 1: 100 acknowledged writes, then
// prints "killing" and waits for a line on stdin (the test kills the
// coordinator). Phase 2: keeps writing until 100 more writes are
// acknowledged and a +switch-master message arrived. Then every
// acknowledged write must read back. Prints "ok N <switch-master payload>".
//
// ioredis's own `failoverDetector: true` is not used: in ioredis 5.9.3 a
// +switch-master that arrives while the client is still reconnecting (the
// old master refuses, it asks the Sentinel again) ends the client for good
// ("connecting -> end"), which is what a kill -9 produces every time.
'use strict';

const Redis = require('ioredis');
const readline = require('readline');

const sentinel = process.argv[2];
const cut = sentinel.lastIndexOf(':');
const host = sentinel.slice(0, cut);
const port = Number(sentinel.slice(cut + 1));
const PATIENCE_MS = 30000;

function fail(why) {
  console.log(`fail ${why}`);
  process.exit(1);
}

/** Resolves when `register(resolve)` calls it; fails the script after PATIENCE_MS. */
function awaitEvent(what, register) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => fail(`timed out waiting for ${what}`), PATIENCE_MS);
    register(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// Our own subscriber, to see what the Sentinel port publishes.
const switches = [];
const switchWaiters = [];
const listener = new Redis({ host, port, retryStrategy: () => 50 });
listener.on('error', () => {});
listener.on('message', (channel, message) => {
  if (channel === '+switch-master') {
    switches.push(message);
    switchWaiters.splice(0).forEach((w) => w());
  }
});

const master = new Redis({
  sentinels: [{ host, port }],
  name: 'dkv',
  sentinelRetryStrategy: () => 50,
  retryStrategy: () => 50,
  connectTimeout: 2000,
  commandTimeout: 3000,
});
master.on('error', () => {});

const acked = new Map();
let i = 0;

async function writeUntil(n) {
  const deadline = Date.now() + PATIENCE_MS;
  while (acked.size < n) {
    if (Date.now() > deadline) fail(`only ${acked.size} writes acknowledged`);
    i += 1;
    const key = `js-${i}`;
    const value = `v${i}`;
    try {
      if ((await master.set(key, value)) === 'OK') acked.set(key, value);
    } catch (e) {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function main() {
  await listener.subscribe('+switch-master');
  await writeUntil(100);
  console.log('killing');
  const lines = readline.createInterface({ input: process.stdin });
  await awaitEvent('the go-ahead on stdin', (done) => lines.once('line', done));
  lines.close();
  await writeUntil(200);
  if (switches.length === 0) {
    await awaitEvent('+switch-master', (done) => switchWaiters.push(done));
  }
  for (const [key, value] of acked) {
    let got;
    const deadline = Date.now() + PATIENCE_MS;
    for (;;) {
      try {
        got = await master.get(key);
        break;
      } catch (e) {
        if (Date.now() > deadline) fail(`cannot read ${key}: ${e.message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    if (got !== value) fail(`acknowledged write ${key}=${value} reads back as ${got}`);
  }
  console.log(`ok ${acked.size} ${switches[0]}`);
  master.disconnect();
  listener.disconnect();
  process.exit(0);
}

main().catch((e) => fail(e.stack || String(e)));
