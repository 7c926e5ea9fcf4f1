// Test identity provider: node-oidc-provider (OpenID Certified) on 127.0.0.1, with dev login/consent pages.
// usage: node provider.mjs PORT LOOKOUT_REDIRECT_URI CLIENT_SECRET
import Provider from 'oidc-provider';

const [port, redirectUri, clientSecret] = process.argv.slice(2);
const ACCOUNTS = {
  alice: { sub: 'alice', preferred_username: 'alice', groups: ['family'] },
  olga: { sub: 'olga', preferred_username: 'olga', groups: ['lookout-admins'] },
  mallory: { sub: 'mallory', preferred_username: 'mallory', groups: ['strangers'] },
};

const configuration = {
  clients: [
    { client_id: 'lookout', client_secret: clientSecret, redirect_uris: [redirectUri],
      grant_types: ['authorization_code'], response_types: ['code'] },
    { client_id: 'nvr', client_secret: clientSecret, redirect_uris: [], response_types: [],
      grant_types: ['client_credentials'] },
  ],
  claims: { openid: ['sub'], profile: ['preferred_username', 'groups'] },
  scopes: ['openid', 'profile'],
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:lookout:api',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({ scope: 'openid profile', audience: 'lookout', accessTokenFormat: 'jwt',
                                      jwt: { sign: { alg: 'RS256' } } }),
    },
  },
  extraTokenClaims: async (ctx, token) => {
    if (token.accountId && ACCOUNTS[token.accountId]) {
      const { groups, preferred_username } = ACCOUNTS[token.accountId];
      return { groups, preferred_username };
    }
    if (token.clientId === 'nvr') return { groups: ['nvr'] };
    return undefined;
  },
  findAccount: async (ctx, id) => ACCOUNTS[id] && { accountId: id, claims: async () => ACCOUNTS[id] },
  pkce: { required: () => true },
};

const provider = new Provider(`http://127.0.0.1:${port}`, configuration);
provider.listen(Number(port), '127.0.0.1', () => console.log(`oidc-provider listening on ${port}`));
