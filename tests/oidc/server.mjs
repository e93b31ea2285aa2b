// An independent OAuth2 server for the tests: npm oidc-provider@9 with a client-credentials
// client (client_secret_post) and one resource. Started by tests/oidc_provider.rs, which installs
// the package under target/oidc-provider and runs this file from there.
import Provider from 'oidc-provider';
const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const RESOURCE = 'https://api.security.microsoft.com';
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'cc-client', client_secret: 'cc-secret', grant_types: ['client_credentials'],
    redirect_uris: [], response_types: [], token_endpoint_auth_method: 'client_secret_post',
  }],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== RESOURCE) throw new Error('unknown resource');
        return { scope: `${RESOURCE}/.default`, accessTokenFormat: 'opaque', accessTokenTTL: 3600 };
      },
    },
  },
  scopes: [],
  routes: { token: '/token', device_authorization: '/devicecode' },
});
provider.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
