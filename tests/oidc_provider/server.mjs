// A real OpenID Connect provider (panva's `oidc-provider`) for KubeRDE's integration tests.
//
// Usage: node server.mjs CONFIG.json
//   CONFIG: {"port": 0, "accessTokenTtl": 300, "admins": ["root"],
//            "agents": {"CLIENT_ID": {"secret": "...", "agentId": "user-alice-dev",
//                                     "owner": "alice"}}}
// Prints one JSON line {"issuer": URL} on stdout once it accepts connections.
//
// Each start generates a new P-256 signing key, so restarting on the same port is a key
// rotation. Users sign in through the provider's own development interactions (any login
// name is accepted, as its devInteractions feature does); access tokens are JWTs for the
// audience `kuberde` carrying Keycloak-shaped claims (`preferred_username`,
// `realm_access.roles`). Client-credentials tokens of the configured agent clients carry
// `kuberde_agent_id` and `kuberde_owner` for the audience `kuberde-agent`, as hard-coded
// claim mappers would add them in Keycloak.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const admins = new Set(config.admins ?? []);
const agents = config.agents ?? {};
const accessTokenTtl = config.accessTokenTtl ?? 300;
const USERS = 'urn:kuberde:users';
const AGENTS = 'urn:kuberde:agents';

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'ES256' };

const server = createServer();
await new Promise((resolve) => server.listen(config.port ?? 0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const clients = [
  {
    client_id: 'kuberde-cli',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: [
      'urn:ietf:params:oauth:grant-type:device_code',
      'refresh_token',
      'authorization_code',
    ],
    response_types: ['code'],
    // The CLI's loopback sign-in, and the gateway's browser sign-in (any port: RFC 8252).
    redirect_uris: ['http://127.0.0.1/callback', 'http://127.0.0.1/auth/callback'],
  },
  ...Object.entries(agents).map(([clientId, agent]) => ({
    client_id: clientId,
    client_secret: agent.secret,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  })),
];

const provider = new Provider(issuer, {
  clients,
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, preferred_username: id }),
  }),
  scopes: ['openid', 'offline_access', 'profile'],
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
    DeviceCode: 600,
    Grant: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 3600,
  },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client) => (agents[client.clientId] ? AGENTS : USERS),
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => {
        if (resource !== USERS && resource !== AGENTS) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'openid profile offline_access',
          audience: resource === USERS ? 'kuberde' : 'kuberde-agent',
          accessTokenTTL: accessTokenTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  extraTokenClaims: async (ctx, token) => {
    if (token.kind === 'ClientCredentials') {
      const agent = agents[token.clientId];
      return agent ? { kuberde_agent_id: agent.agentId, kuberde_owner: agent.owner } : undefined;
    }
    if (token.accountId) {
      return {
        preferred_username: token.accountId,
        realm_access: { roles: admins.has(token.accountId) ? ['admin'] : [] },
      };
    }
    return undefined;
  },
});

server.on('request', provider.callback());
process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
