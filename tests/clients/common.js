// What the Node client scripts share: the driver from $MOP_TOOLS (or
// NODE_PATH), and `--name value` options read into an object.
'use strict';
const path = require('path');

function loadDriver() {
  const tools = process.env.MOP_TOOLS;
  if (tools) {
    try {
      return require(path.join(tools, 'npm', 'node_modules', 'mongodb'));
    } catch (_) { /* fall back to NODE_PATH */ }
  }
  return require('mongodb');
}

// Adds each `--some-name value` pair of `rest` to `a` as `someName`.
function readOptions(rest, a) {
  for (let i = 0; i < rest.length; i += 2) {
    const k = rest[i].replace(/^--/, '').replace(/-(.)/g, (_, c) => c.toUpperCase());
    a[k] = rest[i + 1];
  }
  return a;
}

module.exports = { loadDriver, readOptions };
