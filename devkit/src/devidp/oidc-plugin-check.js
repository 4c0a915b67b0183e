// Manual check: @mongodb-js/oidc-plugin (what mongosh and Compass use) against the dev IdP.
// Verified 2026-11-24 with oidc-plugin 2.2.0 / openid-client 6.9.0: device-auth, auth-code
// (headless curl "browser") and auth-code with passIdTokenAsAccessToken, each followed by a
// forced refresh (refresh_token grant). Run:
//   npm install --prefix /tmp/oidcp @mongodb-js/oidc-plugin@2.2.0
//   DEVIDP_SERVE_SECS=300 DEVIDP_ISSUER_FILE=/tmp/issuer cargo test --lib \
//     devidp::tests::serve_for_manual_checks -- --ignored --nocapture &
//   NODE_PATH=/tmp/oidcp/node_modules node src/devidp/oidc-plugin-check.js "$(cat /tmp/issuer)" device-auth|auth-code [idtoken]
// Drives @mongodb-js/oidc-plugin (the code mongosh uses) against the dev IdP
// exactly as the Node driver would call OIDC_HUMAN_CALLBACK after the
// server's step-1 reply {issuer, clientId, requestScopes}.
const { createMongoDBOIDCPlugin } = require('@mongodb-js/oidc-plugin');
const { EventEmitter } = require('events');
const { execFile } = require('child_process');
const [issuer, flow, extra] = process.argv.slice(2);
const logger = new EventEmitter();
const seen = [];
const origEmit = logger.emit.bind(logger);
logger.emit = (name, ev) => {
  seen.push(name.replace('mongodb-oidc-plugin:', ''));
  if (/failed|error|skipped|missing/.test(name)) console.log('EVENT', name, JSON.stringify(ev));
  if (/outbound-http-request$/.test(name)) console.log('HTTP', ev.url);
  return origEmit(name, ev);
};
const plugin = createMongoDBOIDCPlugin({
  allowedFlows: [flow],
  redirectURI: 'http://localhost:27197/redirect',
  passIdTokenAsAccessToken: extra === 'idtoken',
  openBrowser: async ({ url }) => {
    // Headless "browser": follow the redirects like tests/clients/browser.sh.
    await new Promise((res, rej) => execFile('curl', ['-sS', '-L', '-o', '/dev/null', '-w', '%{url_effective} %{http_code}', url],
      (e, out) => { console.log('BROWSER', out); e ? rej(e) : res(); }));
  },
  notifyDeviceFlow: (i) => console.log('DEVICE', JSON.stringify(i)),
  logger,
});
const cb = plugin.mongoClientOptions.authMechanismProperties.OIDC_HUMAN_CALLBACK;
const decode = (t) => JSON.parse(Buffer.from(t.split('.')[1], 'base64url'));
(async () => {
  const idpInfo = { issuer, clientId: 'mongo-oidc-proxy-demo', requestScopes: ['offline_access'] };
  const r1 = await cb({ version: 1, idpInfo, username: 'frank', timeoutContext: AbortSignal.timeout(30000) });
  const c1 = decode(r1.accessToken);
  console.log('TOKEN1', JSON.stringify({ sub: c1.sub, aud: c1.aud, scope: c1.scope, nonce: c1.nonce, exp_in: c1.exp - Math.floor(Date.now() / 1000) }));
  // As the driver does after ReauthenticationRequired (391): pass the previous
  // "refresh token" (the plugin's token-set id) to force a refresh.
  const r2 = await cb({ version: 1, idpInfo, username: 'frank', refreshToken: r1.refreshToken, timeoutContext: AbortSignal.timeout(30000) });
  const c2 = decode(r2.accessToken);
  console.log('TOKEN2', JSON.stringify({ sub: c2.sub, same: r2.accessToken === r1.accessToken, jti_changed: c1.jti !== c2.jti }));
  console.log('EVENTS', [...new Set(seen)].join(','));
  await plugin.destroy();
  process.exit(0);
})().catch((e) => { console.log('FAILED', e && e.stack || e); console.log('EVENTS', [...new Set(seen)].join(',')); process.exit(1); });
