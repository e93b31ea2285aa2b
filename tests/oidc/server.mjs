// An independent OAuth2 server for the tests: npm oidc-provider@9 with a client-credentials
// client (client_secret_post) and a device-flow client with refresh tokens, one resource, and a
// test-only /test/approve?user_code=... that completes a device sign-in as a user would.
// Started by tests/oidc_provider.rs, which installs the package under target/oidc-provider and
// runs this file from there.
import Provider from 'oidc-provider';
import http from 'node:http';
const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const RESOURCE = 'https://api.security.microsoft.com';
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'cc-client', client_secret: 'cc-secret', grant_types: ['client_credentials'],
    redirect_uris: [], response_types: [], token_endpoint_auth_method: 'client_secret_post',
  }, {
    client_id: 'device-client', grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    redirect_uris: [], response_types: [], token_endpoint_auth_method: 'none', application_type: 'native',
  }],
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({ scope: `${RESOURCE}/.default`, accessTokenFormat: 'opaque', accessTokenTTL: 3600 }),
    },
  },
  scopes: ['openid', 'offline_access'],
  issueRefreshToken: async () => true,
  rotateRefreshToken: true,
  routes: { token: '/token', device_authorization: '/devicecode' },
});
const callback = provider.callback();
http.createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname === '/test/approve') {
    try {
      const code = await provider.DeviceCode.findByUserCode(url.searchParams.get('user_code').replace(/[^A-Za-z]/g, '').toUpperCase());
      const grant = new provider.Grant({ accountId: 'analyst', clientId: code.clientId });
      grant.addOIDCScope('openid offline_access');
      grant.addResourceScope(RESOURCE, `${RESOURCE}/.default`);
      code.grantId = await grant.save();
      code.accountId = 'analyst';
      // As Entra does, the sign-in covers the API's .default scope, so a refresh-token grant
      // may ask for `<resource>/.default offline_access` again.
      code.scope = `openid offline_access ${RESOURCE}/.default`;
      code.resource = RESOURCE;
      code.authTime = Math.floor(Date.now() / 1000);
      await code.save();
      res.writeHead(204); res.end();
    } catch (e) { res.writeHead(500); res.end(String(e)); }
    return;
  }
  callback(req, res);
}).listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
